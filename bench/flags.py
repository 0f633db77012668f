"""What the benchmarks' number flags share: a count is a whole number of at least 1 (questions, rows,
steps, batch sizes, repeats); an offset or a warm-up may be 0. A bad value is argparse's error
(exit code 2) naming the flag, before anything loads."""
from __future__ import annotations

import argparse


def whole_number(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {value}")
        return value

    parse.__name__ = "int"
    return parse


COUNT = whole_number(1)
FROM_ZERO = whole_number(0)
