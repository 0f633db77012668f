"""Training: data -> split -> backbone -> Lightning Trainer -> checkpoints, curves, hf/ export."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from . import backbone as bb
from . import checkpoint as ckpt_format
from . import data as chatdata
from . import framing
from .train_options import TrainConfig, devices_value

from .checkpoint import BEST_NAME, LAST_NAME  # noqa: F401  (model_chp/model_-last.ckpt, the original's)

CHARS_PER_TOKEN = 64  # longer cells are cut before tokenizing (see clip_long_cells)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says what was saved and how to go on."""


def save_on_interrupt(path):
    """A callback: Ctrl-C saves the run where it stands as model_-last.ckpt, which --resume continues.

    During training, Ctrl-C is held until the step under way has finished (optimizer and schedule
    included), so the saved state is one a run passes through and --resume continues it exactly;
    a second Ctrl-C stops at once. `.saved` is the path once it has saved. Lightning saves this
    callback's state in every checkpoint, so the random state travels with them."""
    from lightning.pytorch.callbacks import Callback

    class SaveOnInterrupt(Callback):
        saved, pending, previous = None, False, None

        def on_train_start(self, trainer, pl_module):
            if threading.current_thread() is threading.main_thread():
                self.previous = signal.signal(signal.SIGINT, self.hold)

        def hold(self, signum, frame):
            if self.pending:
                raise KeyboardInterrupt
            self.pending = True

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.pending:
                raise KeyboardInterrupt

        def on_train_end(self, trainer, pl_module):
            self.release()
            if self.pending:
                raise KeyboardInterrupt

        def on_exception(self, trainer, pl_module, exception):
            self.release()
            if isinstance(exception, KeyboardInterrupt):
                trainer.save_checkpoint(path, weights_only=False)  # full state, so --resume continues
                self.saved = path

        def release(self):
            if self.previous is not None:
                signal.signal(signal.SIGINT, self.previous)
                self.previous = None

        # The random state goes into every checkpoint (plain tensors), so a resumed run draws the
        # dropout masks the uninterrupted one would have.
        def state_dict(self):
            state = {"torch_rng": torch.get_rng_state()}
            if torch.cuda.is_available():
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            return state

        def load_state_dict(self, state):
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
            cuda = state.get("cuda_rng")
            if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)

    return SaveOnInterrupt()


def measure_throughput():
    """A callback: training samples/s over the training batches alone (validation, checkpoints and
    the rest of an epoch's end left out), and again without the first epoch (compiling, warm-up).
    Each epoch's time closes with one wait for the device at its end, never one per step, so the
    host keeps queueing steps ahead as in any run. `summary()` gives the figures, or None."""
    from lightning.pytorch.callbacks import Callback

    class Throughput(Callback):
        def __init__(self):
            self.epochs: list[tuple[int, float]] = []  # (samples, seconds) of each epoch's batches
            self.start, self.samples = None, 0

        def on_train_epoch_start(self, trainer, pl_module):
            _wait_for(pl_module.device)
            self.start, self.samples = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.samples += len(batch["input_ids"]) * trainer.world_size  # every process's batch

        def on_validation_start(self, trainer, pl_module):  # at an epoch's end, after its last batch
            self._close(pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            self._close(pl_module)

        def _close(self, pl_module):
            if self.start is not None and self.samples:
                _wait_for(pl_module.device)
                self.epochs.append((self.samples, time.perf_counter() - self.start))
            self.start = None

        def summary(self) -> dict | None:
            if not self.epochs:
                return None
            samples, seconds = (sum(x) for x in zip(*self.epochs))
            out = {"samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}
            if len(self.epochs) > 1:
                later, later_seconds = (sum(x) for x in zip(*self.epochs[1:]))
                out["after_first_epoch_samples_per_s"] = later / later_seconds
            return out

    return Throughput()


def _wait_for(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resume_inside_epoch(sampler, ckpt: dict, world_size: int):
    """A checkpoint saved inside an epoch (Ctrl-C) continues with that epoch's remaining batches."""
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    done = progress.get("current", {}).get("processed", 0)
    if done and not progress.get("is_last_batch", True):
        sampler.resume(int(ckpt["epoch"]), done * world_size)  # every process had trained `done` batches


def resolve_hardware(cfg: TrainConfig) -> dict:
    """Map --gpus and 'auto' onto Lightning's accelerator/devices/precision, refusing what this
    machine cannot run (a GPU it lacks, more CPU processes than it has cores)."""
    accelerator, devices = cfg.accelerator, devices_value(str(cfg.devices))
    cuda = torch.cuda.is_available()
    if cfg.gpus is not None:
        if cfg.gpus > 0 and cuda:
            accelerator, devices = "gpu", cfg.gpus
        else:
            if cfg.gpus > 0:
                print(f"[train] --gpus {cfg.gpus}: no GPU found (torch.cuda.is_available() is False); "
                      "training on the CPU", file=sys.stderr)
            accelerator, devices = "cpu", 1
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ValueError(f"--accelerator {accelerator}: no CUDA GPU found (torch.cuda.is_available() is False); "
                         "use --accelerator cpu or auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    if isinstance(devices, int) and devices > 1:
        have = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
        if devices > have:
            where = "GPUs" if on_gpu else "CPU cores (a process each)"
            raise ValueError(f"--devices {devices}: this machine has {have} {where}")
    precision = cfg.precision
    if precision is None:
        precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
    return {"accelerator": accelerator, "devices": devices, "precision": precision, "on_gpu": on_gpu}


def resume_path(cfg: TrainConfig) -> str | None:
    if not cfg.resume:
        return None
    path = Path(cfg.model_dir) / ckpt_format.LAST_FILE if cfg.resume == "last" else Path(cfg.resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} to continue from; "
                                "drop --resume to start a new run")
    return str(path)


def read_resume(path: str, cfg: TrainConfig) -> dict:
    """The checkpoint --resume continues, through the one safe reader; one line if it has nothing left to do."""
    try:
        ckpt = ckpt_format.read_checkpoint(path)
    except ckpt_format.CheckpointError as err:
        raise ckpt_format.CheckpointError(f"--resume: {err}") from None
    done = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    if done is not None and 0 <= cfg.max_epochs <= done:
        raise ValueError(f"--resume: {path} has already trained {done} epoch(s) and --max_epochs is {cfg.max_epochs}; "
                         f"give a larger --max_epochs to train further")
    if 0 < cfg.max_steps <= int(ckpt.get("global_step", 0)):
        raise ValueError(f"--resume: {path} has already taken {ckpt['global_step']} steps and --max_steps is "
                         f"{cfg.max_steps}; give a larger --max_steps to train further")
    return ckpt


def lora_settings(cfg: TrainConfig) -> dict | None:
    """The --lora flags as plain data (checked here, before any data or model is loaded)."""
    import dataclasses

    if not cfg.lora:
        return None
    if bb.is_scratch(cfg.base_model):
        raise ValueError(f"--lora adapts a pretrained base; {cfg.base_model!r} starts from random weights, "
                         "so train it fully (drop --lora)")
    settings = bb.LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                               targets=cfg.lora_targets, quantize=cfg.quantize)
    if settings.quantize:
        bb.require_cuda_for_quantize()
    return dataclasses.asdict(settings)


def build_module(cfg: TrainConfig, train_rows, ckpt: dict | None):
    from .module import KoGPT2Chat

    hparams = dict(base_model=cfg.base_model, max_len=cfg.max_len, batch_size=cfg.batch_size, lr=cfg.lr,
                   warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, dropout=cfg.dropout,
                   lora=lora_settings(cfg))
    if ckpt is not None:  # resume: the very backbone (tokenizer included) the run started with
        saved = ckpt["hyper_parameters"]
        hparams["base_model"] = saved["base_model"]
        module = KoGPT2Chat(**hparams, backbone=saved["backbone"])
    elif bb.is_scratch(cfg.base_model) and not cfg.lora:
        texts = [*train_rows["Q"], *train_rows["A"], *framing.SENTIMENTS]
        model, tokenizer = bb.load_backbone(cfg.base_model, texts=texts, cache_dir=Path(cfg.model_dir) / ".cache")
        module = KoGPT2Chat(**hparams, backbone=bb.backbone_spec(model, tokenizer))
    else:
        module = KoGPT2Chat(**hparams)
    context = bb.context_length(module.kogpt2)
    if context is not None and cfg.max_len > context:
        raise ValueError(f"--max-len {cfg.max_len} is longer than the model's context ({context} tokens); "
                         f"use --max-len {context} or less")
    return module


def train_sentiment_classifier(train_rows, val_rows) -> dict | None:
    """The classifier behind --sentiment auto, fitted on the training split's questions."""
    from .sentiment import SentimentClassifier

    if train_rows["label"].nunique() < 2:
        print("[sentiment] one label only in the training data: no classifier; --sentiment auto will answer with 0")
        return None
    classifier = SentimentClassifier.train(train_rows["Q"], train_rows["label"], val_rows["Q"], val_rows["label"])
    if classifier.accuracy is not None:
        print(f"[sentiment] classifier for --sentiment auto: {100 * classifier.accuracy:.1f}% of validation "
              f"questions labelled right")
    return classifier.to_state()


def train(cfg: TrainConfig):
    """Train (or resume) and write every output into cfg.model_dir. Returns the trained module."""
    from .noise import silence_known_noise

    silence_known_noise()
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # our tokenizer cache lives there
    # The sampler continues an epoch cut short itself (resume_inside_epoch), which Lightning cannot see.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    lora_settings(cfg)  # bad LoRA flags stop here, before any data or model is loaded
    hardware = resolve_hardware(cfg)  # so does a GPU or a core count this machine lacks
    model_dir = Path(cfg.model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ValueError(f"--model-dir {model_dir} is a file; give a folder for the checkpoints")
    ckpt_path = resume_path(cfg)
    ckpt = read_resume(ckpt_path, cfg) if ckpt_path else None
    with ckpt_format.removed_if_failed(model_dir):  # a run that stops before any checkpoint leaves no folder
        model_dir.mkdir(parents=True, exist_ok=True)
        return _fit(cfg, hardware, model_dir, ckpt_path, ckpt)



def _fit(cfg: TrainConfig, hardware: dict, model_dir: Path, ckpt_path: str | None, ckpt: dict | None):
    data_path = str(chatdata.corpus_path(cfg.data))
    table = chatdata.load_chat_table(data_path)
    for note in table.notes:
        print(f"[data] {note}")
    recorded = ckpt_format.split_of(ckpt or {})
    train_rows, val_rows, test_rows = split_rows(cfg, table, recorded, data_path)
    train_rows, val_rows = (clip_long_cells(rows, cfg.max_len) for rows in (train_rows, val_rows))
    if cfg.early_stopping and not len(val_rows):
        raise ValueError(f"--early-stopping watches the validation loss, and {data_path} leaves no validation "
                         "questions; drop --early-stopping or give more varied data")

    # Lightning loads only now: a bad flag or a bad data file has already stopped the run, in seconds.
    import lightning as L

    L.seed_everything(cfg.seed, verbose=False)  # the splits above use their own seeded generators
    module = build_module(cfg, train_rows, ckpt)
    module.split = split_record(cfg, table, data_path, val_rows, test_rows, recorded)
    module.history_turns = table.history_turns
    module.refine_state = {"refine": cfg.refine, "alpha": cfg.refine_alpha} if cfg.refine else None
    module.sentiment_state = train_sentiment_classifier(train_rows, val_rows)
    module.compile_step = cfg.compile if cfg.compile is not None else hardware["on_gpu"]
    train_loader, val_loader = loaders(cfg, module.tokenizer, train_rows, val_rows, pinned=hardware["on_gpu"])
    speed = measure_throughput()
    trainer, checkpoint, interrupt = build_trainer(cfg, hardware, model_dir, len(train_loader), val_loader is not None,
                                                   ckpt_path, ckpt, speed)
    if ckpt is not None:
        resume_inside_epoch(train_loader.sampler, ckpt, trainer.world_size)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning's answer to Ctrl-C, after our callback saved the run
        if interrupt.saved is None:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning left Ctrl-C ignored
        raise Interrupted(f"interrupted at step {trainer.global_step}: saved {interrupt.saved}; "
                          "the same command with --resume continues from there") from None
    module.throughput = speed.summary()
    if not trainer.is_global_zero:
        return module
    finish(module, trainer, checkpoint, model_dir, train_rows, val_rows, cfg)
    return module


def split_rows(cfg: TrainConfig, table, recorded: dict, data_path):
    """(train, validation, test) rows: a resumed run's recorded split, else the --protocol's."""
    test_rows = table.rows.iloc[0:0]
    if any(recorded.get(k) for k in ("val_groups", "val_questions", "val_lines")):  # resume: the same split
        val, test = chatdata.held_out(table.rows, recorded), chatdata.held_out(table.rows, recorded, "test")
        train_rows = table.rows[~val & ~test].reset_index(drop=True)
        val_rows, test_rows = table.rows[val].reset_index(drop=True), table.rows[test].reset_index(drop=True)
    elif cfg.protocol == chatdata.KOCHATBART_PROTOCOL:
        train_rows, val_rows, test_rows = chatdata.split_kochatbart(table.rows, cfg.seed)
    else:
        train_rows, val_rows = chatdata.split_train_val(table.rows, cfg.val_ratio, cfg.seed)
    if table.history_turns:
        print(f"[data] {data_path}: {table.conversations} conversations, {len(table.rows)} turns "
              f"(up to {table.history_turns + 1} a conversation) -> {train_rows.conv.nunique()} train, "
              f"{val_rows.conv.nunique()} validation conversations")
    else:
        test = f", {len(test_rows)} test" if len(test_rows) else ""
        print(f"[data] {data_path}: {len(table.rows)} pairs -> {len(train_rows)} train, {len(val_rows)} validation{test}")
    return train_rows, val_rows, test_rows


def split_record(cfg: TrainConfig, table, data_path, val_rows, test_rows, recorded: dict) -> dict:
    """What the checkpoint records of the split (a resumed run keeps the one it started with)."""
    split = {
        "data": str(data_path), "data_sha256": table.sha256, "val_ratio": cfg.val_ratio, "seed": cfg.seed,
        "val_groups": sorted(set(val_rows["group"])),
    }
    if len(test_rows) or cfg.protocol == chatdata.KOCHATBART_PROTOCOL:
        split.update(protocol=chatdata.KOCHATBART_PROTOCOL, val_lines=[int(x) for x in val_rows["line"]],
                     test_lines=[int(x) for x in test_rows["line"]])
    if any(recorded.get(k) for k in ("val_groups", "val_questions", "val_lines")):
        split.update({k: v for k, v in recorded.items()
                      if k in ("val_ratio", "seed", "protocol", "val_lines", "test_lines")})
    return split


def clip_long_cells(rows, max_len: int):
    """Questions and answers cut to what --max-len tokens can hold, so a runaway cell (megabytes of
    text) costs no tokenizer minutes. A token covers at least one character and the framing keeps a
    question's end and an answer's start, so the cut never changes the ids a pair trains on unless
    the tokenizer has tokens longer than CHARS_PER_TOKEN characters."""
    limit = CHARS_PER_TOKEN * max_len
    long_q, long_a = rows["Q"].str.len() > limit, rows["A"].str.len() > limit
    if not (long_q.any() or long_a.any()):
        return rows
    rows = rows.copy()
    rows.loc[long_q, "Q"] = rows.loc[long_q, "Q"].str[-limit:]
    rows.loc[long_a, "A"] = rows.loc[long_a, "A"].str[:limit]
    lines = ", ".join(str(x) for x in rows.loc[long_q | long_a, "line"][:5])
    print(f"[data] {int(long_q.sum() + long_a.sum())} cell(s) over {limit:,} characters cut to that "
          f"(a turn trains on at most --max-len {max_len} tokens); line(s) {lines}")
    return rows


def loaders(cfg: TrainConfig, tokenizer, train_rows, val_rows, pinned: bool = False):
    """The training loader (batches of similar lengths) and the validation one (None without rows);
    `pinned` (training on a GPU): batches in page-locked memory, so their copies to the GPU do not
    hold the host up while it queues the step."""
    pad_id = framing.control_ids(tokenizer)[framing.PAD]
    collate = functools.partial(chatdata.collate, pad_id=pad_id)
    # The loaders draw from the global random state as before: giving them a generator of their own
    # changed the dropout masks training sees, and a two-turn test model then learnt its history far
    # worse (27% right where it had been 80%), so a resumed run is exact with dropout 0 only.
    # Refine training draws its references anew each epoch: workers started afresh see the epoch.
    loader = functools.partial(torch.utils.data.DataLoader, collate_fn=collate, num_workers=cfg.num_workers,
                               persistent_workers=cfg.num_workers > 0 and not cfg.refine, pin_memory=pinned)
    references = None
    if cfg.refine:
        from .grounding import training_references

        references = training_references(train_rows)
    train_set = chatdata.ChatDataset(train_rows, tokenizer, cfg.max_len, references, cfg.refine, cfg.refine_alpha,
                                     cfg.seed)
    sampler = chatdata.LengthGroupedSampler(train_set.lengths(), cfg.batch_size, cfg.seed, on_epoch=train_set.set_epoch)
    train_loader = loader(train_set, batch_size=cfg.batch_size, sampler=sampler)
    if not len(val_rows):
        return train_loader, None
    val_set = chatdata.ChatDataset(val_rows, tokenizer, cfg.max_len)
    by_length = sorted(range(len(val_set)), key=lambda i: len(val_set[i][0]))
    return train_loader, loader(torch.utils.data.Subset(val_set, by_length), batch_size=cfg.batch_size, shuffle=False)


def build_trainer(cfg: TrainConfig, hardware: dict, model_dir: Path, steps_per_epoch: int, has_val: bool,
                  ckpt_path: str | None = None, ckpt: dict | None = None, *extra_callbacks):
    """(the Lightning Trainer, the best-checkpoint callback or None, the Ctrl-C callback); `extra_callbacks`
    join them. Every checkpoint is written and read through checkpoint.py (atomic writes; --resume's
    file, already read, is `ckpt`)."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    # Two checkpoints: the latest state after every epoch (Lightning's save_last only follows
    # improved ones) and the best by val_loss.
    last = ModelCheckpoint(dirpath=model_dir, filename=LAST_NAME, monitor=None, save_top_k=1,
                           enable_version_counter=False)
    interrupt = save_on_interrupt(model_dir / ckpt_format.LAST_FILE)
    callbacks, checkpoint = [last, interrupt, *extra_callbacks], None
    if has_val:
        checkpoint = ModelCheckpoint(dirpath=model_dir, filename=BEST_NAME, monitor="val_loss", mode="min",
                                     save_top_k=1, enable_version_counter=False)
        callbacks.append(checkpoint)
    if cfg.early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=cfg.early_stopping))
    try:
        trainer = L.Trainer(
            accelerator=hardware["accelerator"], devices=hardware["devices"], precision=hardware["precision"],
            strategy=cfg.strategy, num_nodes=cfg.num_nodes,
            max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, gradient_clip_val=1.0,
            accumulate_grad_batches=cfg.accumulate_grad_batches, callbacks=callbacks,
            logger=CSVLogger(save_dir=model_dir, name="logs"),
            log_every_n_steps=max(1, min(cfg.log_every_n_steps, steps_per_epoch)),
            default_root_dir=model_dir, enable_progress_bar=cfg.progress, enable_model_summary=False,
            num_sanity_val_steps=0, plugins=[ckpt_format.checkpoint_io({ckpt_path: ckpt} if ckpt_path else None)],
        )
    except (MisconfigurationException, ValueError) as err:  # e.g. a --strategy this machine cannot run
        raise ValueError(f"--accelerator/--devices/--strategy/--precision: {err}") from None
    return trainer, checkpoint, interrupt


def finish(module, trainer, checkpoint, model_dir: Path, train_rows, val_rows, cfg: TrainConfig):
    """Rank zero, after fit: metrics.csv, training_curves.png, the grounding index (in every
    checkpoint), hf/ (best weights), a first look."""
    metrics_csv = Path(trainer.logger.log_dir) / "metrics.csv"
    if metrics_csv.exists():
        with ckpt_format.atomic_path(model_dir / "metrics.csv") as tmp:
            shutil.copyfile(metrics_csv, tmp)
        with ckpt_format.atomic_path(model_dir / "training_curves.png") as tmp:
            plot_curves(model_dir / "metrics.csv", tmp)
    best = checkpoint.best_model_path if checkpoint is not None else None
    if best and os.path.exists(best):
        state = ckpt_format.read_checkpoint(best)["state_dict"]
        module.load_state_dict(state, strict=module.strict_loading)
        print(f"[train] best val_loss {float(checkpoint.best_model_score):.4f}: {best} (every door loads it by "
              f"default; {ckpt_format.LAST_FILE} is for --resume)")
    speed = module.throughput
    if speed:
        later = speed.get("after_first_epoch_samples_per_s")
        print(f"[train] {speed['samples']:,} samples in {speed['seconds']:.1f} s of training batches: "
              f"{speed['samples_per_s']:,.1f} samples/s" + (f" ({later:,.1f} after the first epoch)" if later else ""))
    add_grounding_index(module, train_rows, val_rows, [best, model_dir / ckpt_format.LAST_FILE])
    module.save_pretrained(model_dir / "hf")
    print(f"[train] last checkpoint: {model_dir / ckpt_format.LAST_FILE}; Hugging Face export: {model_dir / 'hf'}")
    if cfg.samples and len(val_rows):
        bot = module.chatbot
        sample = val_rows.sample(min(cfg.samples, len(val_rows)), random_state=cfg.seed)
        histories = chatdata.earlier_turns(val_rows, sample)  # each turn answered after those before it
        replies = bot.chat_batch(list(sample["Q"]), list(sample["label"]), histories)
        for q, label, history, reply in zip(sample["Q"], sample["label"], histories, replies):
            earlier = f"  (after {len(history)} earlier turn(s))" if history else ""
            print(f"user > {q}  (sentiment {label}){earlier}\nSimsimi > {reply}")


def add_grounding_index(module, train_rows, val_rows, checkpoints):
    """The training pairs' index, rerank weights fitted with the weights the doors use (the best),
    and the default mode measured on the validation rows."""
    from . import grounding
    from .checkpoint import add_index

    index = grounding.fit_index(module.chatbot, train_rows, val_rows)
    module.grounding_state = index.to_state()
    for path in {str(p) for p in checkpoints if p and os.path.exists(p)}:
        add_index(path, module.grounding_state)
    print(f"[grounding] index of {grounding.describe_index(index)}")


def plot_curves(metrics_csv, out_png):
    """Train loss per logged step and validation loss per epoch, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    styles = {"train_loss": dict(alpha=0.3, label="train_loss (logged steps)"),
              "train_loss_epoch": dict(marker="o", markersize=4, label="train_loss (epoch mean)"),
              "val_loss": dict(marker="o", markersize=4, label="val_loss")}
    for column, style in styles.items():
        if column in frame:
            points = frame[["step", column]].dropna()
            ax.plot(points["step"], points[column], **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, format="png")
    plt.close(fig)


