"""Silence messages a user of this kit cannot act on, each by its exact text, at its source.

Real warnings (a missing GPU, dropped data rows, a bad option) still reach the user; only these
known lines go: Lightning's advertisement for its cloud logger, its hardware inventory and
dataloader notes, deprecations inside Lightning's and PEFT's own code, and transformers'
progress bar when it saves a one-file model.
"""
from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO = (
    "💡 Tip: For seamless cloud logging",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "`Trainer.fit` stopped:",
    "Detected KeyboardInterrupt",  # training says itself what Ctrl-C kept (train.Interrupted)
)


class _DropLines(logging.Filter):
    def __init__(self, starts):
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record) -> bool:
        return not str(record.getMessage()).lstrip().startswith(self.starts)


_installed = False


def silence_known_noise():
    """Install the filters once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropLines(LIGHTNING_INFO))
    # Lightning 2.6 calls a torch API that torch 2.13 deprecated; nothing for a user to change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # PEFT asks a transformers property that transformers 5 renamed; nothing for a user to change.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" for a single file
    except ImportError:
        pass
