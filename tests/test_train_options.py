"""The training options' one declaration (kogpt2_chatbot/train_options.py) and everything built from it."""
import argparse
import dataclasses
import inspect
import math

import pytest

from kogpt2_chatbot import __main__ as cli
from kogpt2_chatbot import backbone as bb
from kogpt2_chatbot import train_options as topts
from kogpt2_chatbot.module import KoGPT2Chat
from kogpt2_chatbot.train_options import OptionError, TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAINING_DESTS = {name for name, f in FIELDS.items() if f.metadata["cli"]}


def parser_actions(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("which", ["train", "train_torch.py"])
def test_every_flag_is_built_from_the_declaration_and_defaults_to_it(which):
    parser = cli._subparsers(cli.build_parser())["train"] if which == "train" else cli.legacy_parser()
    actions = parser_actions(parser)
    for name in TRAINING_DESTS | {"gpus"}:
        action, f = actions[name], FIELDS[name]
        assert topts.flag_of(f) in action.option_strings
        assert action.default is None, name  # unset flags leave the declaration's default in charge
        kind = f.metadata["kind"]
        if kind is bool:
            assert action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction), name
        else:
            assert action.type.__name__ == kind.__name__, name
    if which == "train":  # no training flag is declared anywhere else
        assert set(actions) == TRAINING_DESTS | {"gpus"}
    args = parser.parse_args(["--train"] if which != "train" else [])
    assert topts.from_args(args) == TrainConfig()


def test_typed_flags_reach_the_config_with_the_declared_types():
    parser = cli._subparsers(cli.build_parser())["train"]
    cfg = topts.from_args(parser.parse_args(["--lr", "3e-4", "--lora", "--lora-alpha", "32", "--lora-r", "4",
                                             "--devices", "2", "--max-len", "32", "--no-compile"]))
    assert (cfg.lr, cfg.lora, cfg.lora_alpha, cfg.lora_r, cfg.devices, cfg.max_len, cfg.compile) == \
        (3e-4, True, 32.0, 4, 2, 32, False)
    assert isinstance(cfg.lora_alpha, float) and isinstance(cfg.lora_r, int)


def test_module_hyperparameters_take_the_declared_names_defaults_and_types():
    params = inspect.signature(KoGPT2Chat.__init__).parameters
    for name in ("base_model", "max_len", "batch_size", "lr", "warmup_ratio", "weight_decay", "dropout"):
        assert params[name].default == FIELDS[name].default, name
        assert params[name].annotation == FIELDS[name].type, name


def test_lora_settings_take_the_declared_types():
    settings = {f.name: f for f in dataclasses.fields(bb.LoraSettings)}
    for name, option in (("r", "lora_r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout"),
                         ("targets", "lora_targets"), ("quantize", "quantize")):
        assert settings[name].type == FIELDS[option].type, name


def test_max_len_is_one_constant():
    from pathlib import Path

    package = Path(cli.__file__).parent
    offenders = [f"{path.name}: {line.strip()}" for path in package.rglob("*.py")
                 for line in path.read_text(encoding="utf-8").splitlines()
                 if "max_len" in line and ("64" in line.split("#")[0])]
    assert offenders == []


@pytest.mark.parametrize("name, value, words", [
    ("lr", math.inf, "--lr must be a finite number"),
    ("lr", math.nan, "--lr must be a finite number"),
    ("lr", 0.0, "--lr must be > 0"),
    ("max_epochs", 0, "--max_epochs must be >= 1"),
    ("max_steps", 0, "--max_steps must be -1 (no limit) or >= 1"),
    ("accumulate_grad_batches", 0, "--accumulate_grad_batches must be >= 1"),
    ("dropout", math.nan, "--dropout must be a finite number"),
    ("dropout", 1.0, "--dropout must be >= 0 and < 1"),
    ("lora_alpha", 0, "--lora-alpha must be > 0"),
    ("batch_size", 2.5, "--batch-size must be a whole number"),
    ("max_epochs", True, "--max_epochs must be a whole number"),
    ("devices", 0, "--devices must be auto, a number >= 1"),
    ("precision", "fp8", "--precision must be one of"),
    ("seed", 2**70, "--seed must be between 0 and 4294967295"),
])
def test_python_config_refuses_bad_values_naming_the_flag(name, value, words):
    with pytest.raises(OptionError, match=words.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**{name: value})


def test_quantize_without_lora_is_refused_in_python_too():
    with pytest.raises(ValueError, match="add --lora"):
        TrainConfig(quantize="nf4")


def test_the_module_checks_its_hyperparameters_at_the_declaration(tiny_backbone):
    model, tok = tiny_backbone
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        KoGPT2Chat(base_model="scratch-tiny", backbone=bb.backbone_spec(model, tok), lr=math.inf)
