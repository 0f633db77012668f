"""What the benchmarks' number flags share: a count is a whole number of at least 1 (questions, rows,
steps, batch sizes, repeats); an offset or a warm-up may be 0. A bad value is argparse's error
(exit code 2) naming the flag, before anything loads; the rule and its words are the kit's own
(kogpt2_chatbot.options)."""
from __future__ import annotations

from kogpt2_chatbot.options import whole_number

COUNT = whole_number(1)
FROM_ZERO = whole_number(0)
