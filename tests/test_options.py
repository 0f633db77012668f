"""options.py: the one rule for an option's value, and the same words for it at every door."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields

import pytest

from kogpt2_chatbot import options
from kogpt2_chatbot.__main__ import main
from kogpt2_chatbot.decoding import Decoding, DecodingError
from kogpt2_chatbot.framing import check_history_turns
from kogpt2_chatbot.serve import ServeSettings
from kogpt2_chatbot.train_options import OptionError, TrainConfig


@pytest.mark.parametrize("bounds, words", [
    (dict(low=1, high=1024), "between 1 and 1024"),
    (dict(low=0), ">= 0"),
    (dict(low=0, low_open=True), "> 0"),
    (dict(low=0, high=1, low_open=True), "> 0 and <= 1"),
    (dict(low=0, high=1, high_open=True), ">= 0 and < 1"),
    (dict(high=5), "<= 5"),
])
def test_bounds_read_as_words(bounds, words):
    assert options.bounds(**bounds) == words


@pytest.mark.parametrize("value, kind, words", [
    (True, int, "n must be a whole number; got True"),      # a bool is not a count
    (2.0, int, "n must be a whole number; got 2.0"),
    ("3", int, "n must be a whole number; got '3'"),        # text is not silently read as a number
    ("0.5", float, "n must be a number; got '0.5'"),
    (math.nan, float, "n must be a finite number; got nan"),
    (-math.inf, float, "n must be a finite number; got -inf"),
    (0, int, "n must be between 1 and 10; got 0"),
    (11, int, "n must be between 1 and 10; got 11"),
])
def test_a_number_outside_its_rule_is_refused_with_its_name(value, kind, words):
    with pytest.raises(options.OptionError) as err:
        options.check_number("n", value, kind, low=1, high=10)
    assert str(err.value) == words


def test_a_number_inside_its_bounds_comes_back_as_it_is():
    assert options.check_number("n", 10, int, low=1, high=10) == 10
    assert options.check_number("x", 1, float, low=0, high=1, low_open=True) == 1


def test_a_declared_field_takes_none_only_when_its_default_is_none():
    @dataclass
    class Box:
        size: int = field(default=3, metadata=dict(low=1))
        name: str | None = field(default=None, metadata=dict(choices=("a", "b")))
        on: bool = False

    size, name, on = fields(Box)
    options.check(name, None)
    with pytest.raises(options.OptionError, match="size must be a whole number; got None"):
        options.check(size, None)
    with pytest.raises(options.OptionError, match="name must be one of a, b; got 'c'"):
        options.check(name, "c")
    with pytest.raises(options.OptionError, match="on must be true or false; got 1"):
        options.check(on, 1)


def test_the_command_line_shows_the_message_python_gives(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=options.argparse_type(lambda v: options.check_number("n", v, int, low=1),
                                                          int, "n"))
    parser.add_argument("--count", type=options.whole_number(1))
    for flags, words in ((["--n", "0"], "argument --n: n must be >= 1; got 0"),
                         (["--n", "x"], "argument --n: n must be a whole number; got 'x'"),
                         (["--count", "0"], "argument --count: must be >= 1; got 0")):  # the flag is its name
        with pytest.raises(SystemExit):
            parser.parse_args(flags)
        assert words in capsys.readouterr().err


# --- the same words at every door ---------------------------------------------------------------

def test_decoding_training_and_serving_options_word_a_bound_alike():
    with pytest.raises(DecodingError, match=r"^top_p must be > 0 and <= 1; got 0$"):
        Decoding(top_p=0)
    with pytest.raises(OptionError, match=r"^--lora-alpha must be > 0; got 0$"):
        TrainConfig(lora_alpha=0)
    with pytest.raises(options.OptionError, match=r"^timeout_s must be > 0 and <= 86400; got 0$"):
        ServeSettings(timeout_s=0)
    for make in (lambda: Decoding(top_k=1.5), lambda: TrainConfig(batch_size=1.5), lambda: ServeSettings(port=1.5)):
        with pytest.raises(ValueError, match="must be a whole number; got 1.5"):
            make()


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_history_turns_have_one_rule_in_python_and_in_serving(value):
    with pytest.raises(ValueError) as direct:
        check_history_turns(value)
    with pytest.raises(ValueError) as served:
        ServeSettings(history_turns=value)
    assert str(direct.value) == str(served.value) and str(direct.value).startswith("history_turns must be")


@pytest.mark.parametrize("command, flags, words", [
    ("chat", ["--history", "-1"], "argument --history: history_turns must be >= 0; got -1"),
    ("serve", ["--history", "two"], "argument --history: history_turns must be a whole number; got 'two'"),
    ("evaluate", ["--batch-size", "0"], "argument --batch-size: batch_size must be >= 1; got 0"),
    ("answer", ["--batch-size", "-4"], "argument --batch-size/--batch_size: batch_size must be >= 1; got -4"),
    ("ask", ["안녕", "--sentiment", "sad"], "argument --sentiment: sentiment must be 0|1|2"),
])
def test_a_bad_value_stops_the_command_before_any_model_loads(command, flags, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--model_params", "never-loaded.ckpt", *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err


def test_help_and_a_mistyped_flag_answer_without_loading_torch():
    """The parser imports nothing heavy, so `--help` and a typo answer at once (torch loads in seconds)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom kogpt2_chatbot.__main__ import build_parser\n"
             "build_parser().parse_known_args(['answer', '--input', 'x.txt'])\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
