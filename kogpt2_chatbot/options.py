"""The rule every option's value obeys, written once.

Decoding options (decoding.py), training options (train_options.py) and serving settings
(serve/) are dataclass fields that carry their kind and bounds; a few plain values (history
turns, reply batch sizes, the benchmarks' counts) are bounded numbers without a dataclass.
`check_number` is the one check of a number against its bounds, `check` applies it (and the
true/false and choice rules) to a declared field, and `cli_type` / `whole_number` are the
argparse types built on them, so a bound and its message read the same at every door:

    max_new_tokens must be between 1 and 1024; got 0                           (Python, HTTP)
    argument --max-new-tokens: max_new_tokens must be between 1 and 1024; got 0  (the command line)

Only the standard library is imported here: the command line's parser answers without torch.
"""
from __future__ import annotations

import argparse
import math


class OptionError(ValueError):
    """A value outside what its option allows; the message names the option and the bound."""


def kind_of(f) -> type:
    """int, float, bool or str: the field's declared `kind`, else the first type of its annotation."""
    kind = f.metadata.get("kind")
    if kind is not None:
        return kind
    return {"int": int, "bool": bool, "float": float, "str": str}[str(f.type).split(" ")[0]]


def default_text(f) -> str:
    """What a field's help ends with: ' (default 3)', ' (default false)'; nothing when the default is None."""
    if f.default is None:
        return ""
    return f" (default {str(f.default).lower() if kind_of(f) is bool else f.default})"


def bounds(low=None, high=None, low_open: bool = False, high_open: bool = False) -> str | None:
    """The bounds in words: "between 1 and 1024", ">= 0", "> 0 and <= 1"."""
    if low is not None and high is not None and not (low_open or high_open):
        return f"between {low} and {high}"
    parts = [f"{'>' if low_open else '>='} {low}" if low is not None else None,
             f"{'<' if high_open else '<='} {high}" if high is not None else None]
    return " and ".join(p for p in parts if p) or None


def check_number(name: str, value, kind: type = int, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, error: type = OptionError):
    """Raise `error` unless `value` is a finite number of `kind` (int: a whole number, not a bool)
    within the bounds; returns the value."""
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise error(f"{name} must be {'a whole number' if kind is int else 'a number'}; got {value!r}")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number; got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise error(f"{name} must be {bounds(low, high, low_open, high_open)}; got {value!r}")
    return value


def check(f, value, name: str | None = None, error: type = OptionError):
    """Raise `error` unless `value` is valid for the declared field `f` (metadata: kind, low, high,
    low_open, high_open, choices; each optional). A field whose default is None accepts None.
    `name`: what the message calls the option (default the field's name)."""
    meta, kind, name = f.metadata, kind_of(f), name or f.name
    if value is None and f.default is None:
        return
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise error(f"{name} must be {'true or false' if kind is bool else 'text'}; got {value!r}")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise error(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return
    check_number(name, value, kind, meta.get("low"), meta.get("high"), meta.get("low_open", False),
                 meta.get("high_open", False), error)


def parse_number(kind: type, text: str, name: str, error: type = OptionError):
    """`text` as an int or a float, or `error` saying it is not one."""
    try:
        return kind(text)
    except ValueError:
        raise error(f"{name} must be {'a whole number' if kind is int else 'a number'}; got {text!r}") from None


def argparse_type(validate, kind: type, name: str, error: type = OptionError, flag_named: bool = False):
    """An argparse type: the text as `kind` (str: as it is), then `validate(value)`, which raises
    `error` with a message that starts with `name`, the message every door shows, so the command
    line says "argument --top-p: top_p must be > 0 and <= 1; got 1.5". `flag_named`: `name` is the
    flag itself, which argparse already shows, so the message goes on after it."""

    def parse(text: str):
        try:
            value = text if kind is str else parse_number(kind, text, name, error)
            return validate(value)
        except error as err:
            message = str(err)
            raise argparse.ArgumentTypeError(message.removeprefix(name + " ") if flag_named else message) from None

    parse.__name__ = kind.__name__  # argparse's "invalid int value" if anything slips past
    return parse


def cli_type(f, name: str | None = None, check=check, error: type = OptionError, flag_named: bool = False):
    """The argparse type of field `f`, checked by `check(f, value)` (default: this module's)."""

    def validate(value):
        check(f, value)
        return value

    return argparse_type(validate, kind_of(f), name or f.name, error, flag_named)


def whole_number(low: int = 0, high: int | None = None):
    """The argparse type of a flag that takes a whole number within bounds (no dataclass behind it)."""
    return argparse_type(lambda value: check_number("value", value, int, low, high), int, "value",
                         flag_named=True)
