"""Training options, declared once: each is a field of `TrainConfig` with its default, bounds and help.

The command-line flags (`add_cli_args`), the Python `TrainConfig(...)`, the hyperparameters of
`KoGPT2Chat` and the values in `backbone.LoraSettings` all come from these fields, and `check` is
the one place a value is validated, so a name, a default and an error message are the same at
every door. What only the machine or the model can tell (is there a GPU, how long is the model's
context) is checked in train.py once that is known.

It lives apart from train.py so that the command line's parser and module.py can read the
declaration without loading torch or Lightning: `--help` and a bad flag answer at once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from . import backbone as bb
from . import framing
from . import options

PRETRAINED_LR = 5e-5  # the original's, for fine-tuning KoGPT2
SCRATCH_LR = 2e-3     # a randomly initialised model needs far larger steps (the sweep's best)
LORA_LR = 2e-4        # adapters start at zero and are small: the usual LoRA rate (PEFT, TRL, LLaMA-Factory)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PROTOCOLS = ("default", "kochatbart")  # how the held-out split is made (data.py); evaluate scores its own
GROUPS = {
    "training": "training (the original's flags keep their meaning)",
    "lora": "LoRA / QLoRA (PEFT): train adapters on a frozen base instead of every weight",
    "hardware": "hardware (Lightning 2.x)",
}


OptionError = options.OptionError  # a training option out of its bounds; the message names the flag


def _option(default, help: str, kind: type, *, flags=(), group="training", low=None, high=None,
            low_open=False, high_open=False, choices=None, metavar=None, parse=None, cli=True, **argparse_extra):
    """One option. `flags`: its command-line spellings (the first is the one messages use; default
    --name-with-dashes); `low`/`high`: bounds (open with low_open/high_open); `parse`: for a value
    with a syntax of its own, a function from text to the value that raises OptionError;
    cli=False: Python only."""
    if choices and metavar is None:
        metavar = "{" + ",".join(choices) + "}"
    return field(default=default, metadata=dict(
        help=help, kind=kind, flags=tuple(flags), group=group, low=low, high=high, low_open=low_open,
        high_open=high_open, choices=choices, metavar=metavar, parse=parse, cli=cli, argparse=argparse_extra))


@dataclass
class TrainConfig:
    data: str | None = _option(
        None, "chat data: a Q/A/label table (CSV/TSV/XLSX), a table of numbered turns (사람문장1, 시스템문장1, "
        "... or Q1, A1, ...), or JSONL {\"messages\": [...]} conversations; default Chatbot_data/ChatbotData.csv, "
        "downloaded and checksum-verified when absent", str)
    base_model: str = _option(
        bb.DEFAULT_BASE_MODEL, "hub id or local folder of a causal LM, or an offline preset: scratch (3x256), "
        "scratch-tiny (2x64)", str, flags=("--base-model",))
    model_dir: str = _option("model_chp", "outputs", str, flags=("--model-dir",))
    max_epochs: int = _option(2, "epochs (the original's README trained 2)", int,
                              flags=("--max_epochs", "--max-epochs"), low=1)
    max_steps: int = _option(-1, "stop after this many optimizer steps (-1: no limit)", int,
                             flags=("--max_steps", "--max-steps"), low=-1)
    max_len: int = _option(framing.DEFAULT_MAX_LEN, "tokens per training conversation (the original used 32)", int,
                           flags=("--max-len", "--max_len"), low=8)
    batch_size: int = _option(96, "pairs per step", int, flags=("--batch-size", "--batch_size"), low=1)
    lr: float | None = _option(None, f"peak learning rate; default {PRETRAINED_LR:g} (the original's) for a "
                               f"pretrained model, {SCRATCH_LR:g} for scratch, {LORA_LR:g} with --lora", float,
                               low=0, low_open=True)
    warmup_ratio: float = _option(0.1, "share of the steps spent warming up", float,
                                  flags=("--warmup_ratio", "--warmup-ratio"), low=0, high=1)
    weight_decay: float = _option(0.01, "AdamW weight decay (none on biases and LayerNorm)", float,
                                  flags=("--weight-decay",), low=0)
    dropout: float | None = _option(None, "override the model's dropout", float, low=0, high=1, high_open=True)
    val_ratio: float = _option(0.05, "share of the questions held out for validation", float,
                               flags=("--val-ratio",), low=0, high=1, high_open=True)
    seed: int = _option(42, "seed of the split and the training", int, low=0, high=2**32 - 1)
    protocol: str = _option(
        PROTOCOLS[0], "default: a stratified validation split, near-duplicate questions on one side; kochatbart: "
        "KoChatBART's random 80/10/10 split, whose test part `evaluate --protocol kochatbart` scores", str,
        choices=PROTOCOLS)
    early_stopping: int | None = _option(None, "stop after PATIENCE epochs without a better val_loss", int,
                                         flags=("--early-stopping",), low=1, metavar="PATIENCE")
    resume: str | None = _option(None, "continue a run (optimizer and schedule included); alone: "
                                 "<model-dir>/model_-last.ckpt", str, metavar="CKPT", nargs="?", const="last")
    refine: float = _option(
        0.0, "share of training turns shown a reference answer (the nearest other training pair's) before "
        "their answer, so the model learns grounding's refine mode; 0: off, 0.5 a good start", float,
        low=0, high=1)
    refine_alpha: float = _option(
        0.5, "alpha-blending: share of those references that are the turn's own answer (the rest: the "
        "retrieved one), so the model neither ignores a reference nor always copies it", float,
        flags=("--refine-alpha",), low=0, high=1)
    num_workers: int = _option(0, "data loader worker processes", int, flags=("--num-workers",), low=0)
    samples: int = _option(3, "validation replies printed at the end", int, low=0)
    log_every_n_steps: int = _option(50, "how often the training loss is logged", int, low=1, cli=False)
    progress: bool = _option(True, "show Lightning's progress bar", bool, cli=False)
    compile: bool | None = _option(
        None, "compile the training step (torch.compile: fewer kernel launches); default on with CUDA only",
        bool, group="hardware")

    lora: bool = _option(False, "train LoRA adapters; checkpoints keep the adapter only", bool, group="lora")
    lora_r: int = _option(8, "rank", int, flags=("--lora-r",), group="lora", low=1)
    lora_alpha: float = _option(16.0, "scale (the update is multiplied by alpha / r)", float,
                                flags=("--lora-alpha",), group="lora", low=0, low_open=True)
    lora_dropout: float = _option(0.05, "dropout on the adapters' input", float, flags=("--lora-dropout",),
                                  group="lora", low=0, high=1, high_open=True)
    lora_targets: str | None = _option(None, "comma-separated module names (default: every linear layer but the "
                                       "output layer)", str, flags=("--lora-targets",), group="lora", metavar="NAMES")
    quantize: str | None = _option(None, "nf4: load the base in 4 bit (QLoRA; needs CUDA and bitsandbytes)", str,
                                   group="lora", choices=("nf4",))

    accelerator: str = _option("auto", "where to train", str, group="hardware", choices=ACCELERATORS)
    devices: str | int = _option("auto", "auto, a number of devices (processes on a CPU), -1 (every GPU), or GPU "
                                 "indices such as 0,1", str, group="hardware", parse=lambda text: devices_value(text))
    strategy: str = _option("auto", "Lightning strategy: auto, ddp, fsdp, ...", str, group="hardware")
    num_nodes: int = _option(1, "machines", int, flags=("--num_nodes", "--num-nodes"), group="hardware", low=1)
    precision: str | None = _option(None, "default bf16-mixed on a GPU that has it, else 32-true", str,
                                    group="hardware", choices=PRECISIONS)
    accumulate_grad_batches: int = _option(1, "batches per optimizer step", int, group="hardware", low=1,
                                           flags=("--accumulate_grad_batches", "--accumulate-grad-batches"))
    gpus: int | None = _option(None, "the original's flag: number of GPUs (0: CPU)", int, low=0, cli=False)

    def __post_init__(self):
        for f in fields(self):
            check(f, getattr(self, f.name))
        if self.quantize and not self.lora:
            raise OptionError("--quantize nf4 is QLoRA: add --lora")


def default_lr(base_model: str, lora: bool) -> float:
    """The learning rate a run uses when --lr is not given."""
    return SCRATCH_LR if bb.is_scratch(base_model) else (LORA_LR if lora else PRETRAINED_LR)


def option(name: str):
    """The declaration (a dataclass field) of the option `name`."""
    return next(f for f in fields(TrainConfig) if f.name == name)


def flag_of(f) -> str:
    return (f.metadata["flags"] or ("--" + f.name.replace("_", "-"),))[0]


def check(f, value):
    """Raise OptionError unless `value` is a valid value of option `f` (a field, or its name); the
    rule is options.check, with messages naming the flag."""
    f = option(f) if isinstance(f, str) else f
    if f.metadata["parse"] is not None and isinstance(value, (str, int)) and not isinstance(value, bool):
        f.metadata["parse"](str(value))
        return
    options.check(f, value, name=flag_of(f))
    if f.name == "max_steps" and value == 0:
        raise OptionError(f"{flag_of(f)} must be -1 (no limit) or >= 1; got 0")


def devices_value(text: str):
    """--devices as Lightning takes it: "auto", a count, -1 (every GPU) or a list of GPU indices."""
    if text == "auto":
        return text
    if text.lstrip("-").isdigit():
        count = int(text)
        if count == -1 or count >= 1:
            return count
    elif all(part.strip().isdigit() for part in text.split(",")) and text.strip(","):
        return text
    raise OptionError(f"--devices must be auto, a number >= 1, -1 or GPU indices such as 0,1; got {text!r}")


# --- the flags built from the declaration -----------------------------------------------------

def add_cli_args(parser: argparse.ArgumentParser):
    """The training flags, grouped as declared. Every default is None ("the declaration's default"),
    so TrainConfig's defaults are the only ones and `from_args` passes on only what was typed."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        if f.metadata["cli"]:
            add_flag(groups[f.metadata["group"]], f)


def add_flag(parser, f):
    f = option(f) if isinstance(f, str) else f
    meta = f.metadata
    shown = options.default_text(f)
    flags = meta["flags"] or (flag_of(f),)
    if meta["kind"] is bool:
        action = "store_true" if f.default is False else argparse.BooleanOptionalAction
        parser.add_argument(*flags, dest=f.name, action=action, default=None, help=meta["help"] + shown)
        return
    parser.add_argument(*flags, dest=f.name, type=_cli_type(f), default=None, metavar=meta["metavar"],
                        help=meta["help"] + shown, **meta["argparse"])


def _cli_type(f):
    if f.metadata["parse"] is not None:  # a syntax of its own
        return options.argparse_type(f.metadata["parse"], str, flag_of(f), flag_named=True)
    return options.cli_type(f, flag_of(f), check=check, flag_named=True)


def from_args(args) -> TrainConfig:
    """The TrainConfig of a parsed command line: what was typed, the declaration's defaults for the rest."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)
                          if getattr(args, f.name, None) is not None})
