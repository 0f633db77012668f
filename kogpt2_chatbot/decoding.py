"""How replies are decoded: the one declaration of every decoding option.

Each option is a field of `Decoding` with its default, bounds and help. The command-line flags
(`add_cli_args`), the HTTP request schema (`request_schema`) and the Python keyword arguments
(`Decoding.from_kwargs`) are all built from these fields, so a name, a bound and an error
message are the same at every door.

Defaults chosen by measurement (bench/RESULTS.md, "Decoding defaults"): greedy like the
original, always length-capped, and no token 3-gram twice in a reply (plain greedy left 19.5%
of the validation replies repeating a 3-gram three times; with no_repeat_ngram_size=3, none).
no_repeat_ngram_size=0 is the original's plain greedy.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields

from . import options
from .framing import DEFAULT_MAX_NEW_TOKENS

MAX_NEW_TOKENS_LIMIT = 1024
SEED_LIMIT = 2**64 - 1  # torch's generators take seeds up to 2^64 - 1


class DecodingError(options.OptionError):
    """A decoding option out of its bounds; the message names the option and the bound."""


def _option(default, help: str, low=None, high=None, low_open: bool = False, flag: str | None = None):
    return field(default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open,
                                            "flag": flag})


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = _option(DEFAULT_MAX_NEW_TOKENS, "reply cap in tokens", 1, MAX_NEW_TOKENS_LIMIT)
    do_sample: bool = _option(False, "sample instead of greedy decoding")
    # Outside [0.001, 100] fp32 logits divided by it overflow or vanish (NaN probabilities); past
    # either end sampling is already greedy or uniform.
    temperature: float = _option(1.0, "sampling temperature", 0.001, 100)
    top_k: int = _option(50, "sample among the k most likely tokens (0: all)", 0)
    top_p: float = _option(1.0, "sample within this probability mass", 0, 1, low_open=True)
    repetition_penalty: float = _option(1.0, "penalty for tokens already in the text (1: none)", 0, low_open=True)
    no_repeat_ngram_size: int = _option(3, "no token n-gram of this size twice in a reply (0: off)", 0)
    seed: int | None = _option(None, "makes sampling reproducible", 0, SEED_LIMIT, flag="--sample-seed")

    def __post_init__(self):
        for f in fields(self):
            check(f, getattr(self, f.name))

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Decoding":
        """Python keywords; None means "the default"."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(f"unknown decoding option(s) {unknown}; known: {known}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def replace(self, **kwargs) -> "Decoding":
        return Decoding.from_kwargs(**{**asdict(self), **{k: v for k, v in kwargs.items() if v is not None}})

    def logits_processors(self, never_empty: "NeverEmpty | None" = None):
        """The Hugging Face processors generate() would apply, in its order (our n-gram blocking is
        HF's, computed the same way on tensors), with the never-empty rule first when given."""
        from transformers.generation import logits_process as lp

        procs = lp.LogitsProcessorList([never_empty] if never_empty is not None else [])
        if self.repetition_penalty != 1.0:
            procs.append(lp.RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            procs.append(NoRepeatNGram(self.no_repeat_ngram_size))
        if self.do_sample:
            if self.temperature != 1.0:
                procs.append(lp.TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                procs.append(lp.TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(lp.TopPLogitsWarper(self.top_p))
        return procs

    def generation_config(self, tokenizer, model_config, never_empty: "NeverEmpty | None" = None):
        """The GenerationConfig under which plain `generate()` replies as the bot does: these
        options, the framing's end and padding ids, and the never-empty rule as `bad_words_ids`."""
        from transformers import GenerationConfig

        from .framing import EOS, PAD, control_ids

        ids = control_ids(tokenizer)
        vocab = int(model_config.vocab_size)
        rule = never_empty or NeverEmpty.for_tokenizer(tokenizer, vocab, ids[EOS])
        sampling = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p) if self.do_sample else {}
        return GenerationConfig(
            eos_token_id=ids[EOS], pad_token_id=ids[PAD], bos_token_id=model_config.bos_token_id,
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size, bad_words_ids=rule.bad_words_ids(vocab), **sampling)


# --- the logits processors of our own ---------------------------------------------------------

class NoRepeatNGram:
    """Hugging Face's NoRepeatNGramLogitsProcessor (the prompt counts too), on tensors.

    A token that would complete an n-gram already in the row is banned. Older transformers
    releases compute this row by row in Python, reading the ids back from the device every step;
    here one comparison of the last n-1 tokens against every window does it for the whole batch.
    tests/test_decoding.py checks the banned tokens equal HF's own processor's."""

    def __init__(self, ngram_size: int):
        self.n = ngram_size

    def __call__(self, input_ids, scores):
        import torch

        length = input_ids.shape[-1]
        if length < self.n:  # no complete n-gram yet
            return scores
        prefix = input_ids[:, length + 1 - self.n :]
        windows = input_ids.unfold(1, self.n, 1)
        matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(-1)
        vocab = scores.shape[-1]
        # Windows that do not match write to a spare column past the vocabulary, so they ban nothing.
        banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))


class NeverEmpty:
    """`</s>` cannot come right after a token that shows nothing (a space, a control token), the
    prompt's closing `<sys>` included, so every reply that ends holds visible text.

    A small or under-trained model often ranks `</s>` first right after `<sys>`; without this its
    answer is empty. Stated on the last token only, the rule is exactly what plain `generate()`
    applies from `bad_words_ids` = [[t, </s>] for every invisible t], so an exported model keeps it
    (min_new_tokens or begin_suppress_tokens would still let a lone space end a reply)."""

    def __init__(self, invisible, eos_id: int):
        self.invisible, self.eos_id = invisible, eos_id  # bool per token id

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int, eos_id: int) -> "NeverEmpty":
        import torch

        size = max(vocab_size, len(tokenizer))
        count = min(size, len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in range(count)], skip_special_tokens=True)
        invisible = torch.ones(size, dtype=torch.bool)  # ids past the tokenizer decode to nothing
        invisible[:count] = torch.tensor([not t.strip() for t in texts])
        return cls(invisible, eos_id)

    def to(self, device) -> "NeverEmpty":
        if self.invisible.device != device:  # once per device, not once per step
            self.invisible = self.invisible.to(device)
        return self

    def bad_words_ids(self, vocab_size: int) -> list[list[int]]:
        """The rule as generate()'s bad_words_ids (ids the model's output layer has)."""
        return [[t, self.eos_id] for t in self.invisible[:vocab_size].nonzero().flatten().tolist()]

    def __call__(self, input_ids, scores):
        last = input_ids[:, -1].clamp(max=len(self.invisible) - 1)
        scores[:, self.eos_id].masked_fill_(self.invisible[last], float("-inf"))  # no boolean indexing: no sync
        return scores


def check(f, value):
    """Raise DecodingError unless `value` is a valid value of option `f` (the rule is options.check)."""
    options.check(f, value, error=DecodingError)


# --- the doors built from the declaration ---------------------------------------------------

def flag_of(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_cli_args(parser: argparse.ArgumentParser):
    """One flag per option (--max-new-tokens, ...), default None: "the checkpoint's default"."""
    g = parser.add_argument_group("decoding (greedy by default, like the original)")
    for f in fields(Decoding):
        default = options.default_text(f)
        if options.kind_of(f) is bool:
            g.add_argument(flag_of(f), dest=f.name, action="store_true", default=None, help=f.metadata["help"] + default)
        else:
            g.add_argument(flag_of(f), dest=f.name, type=options.cli_type(f, check=check), default=None,
                           help=f.metadata["help"] + default)


def from_args(args) -> dict:
    """The decoding keywords a user set on the command line (unset ones are left out)."""
    return {f.name: getattr(args, f.name) for f in fields(Decoding) if getattr(args, f.name, None) is not None}


def request_schema():
    """A pydantic model of the options, every one optional, unknown names refused.

    Values are checked by `check` alone, the function every door uses, so a wrong type or bound
    gets the message the command line and Python give (pydantic would turn `true` into 1 or
    "5" into 5, which the Python API refuses); the JSON schema still shows each option's type."""
    from typing import Any

    from pydantic import ConfigDict, Field, create_model

    json_type = {int: "integer", bool: "boolean", float: "number"}
    annotations = {f.name: (Any, Field(None, description=f.metadata["help"],
                                       json_schema_extra={"type": json_type[options.kind_of(f)]}))
                   for f in fields(Decoding)}
    return create_model("DecodingOptions", __config__=ConfigDict(extra="forbid"), **annotations)


def option_names() -> list[str]:
    return [f.name for f in fields(Decoding)]
