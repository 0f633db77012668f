"""Training: data -> split -> backbone -> Lightning Trainer -> checkpoints, curves, hf/ export."""
from __future__ import annotations

import functools
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import backbone as bb
from . import data as chatdata
from . import framing

LAST_NAME = "model_-last"   # the original's checkpoint name: model_chp/model_-last.ckpt
BEST_NAME = "model_-best"
PRETRAINED_LR = 5e-5  # the original's, for fine-tuning KoGPT2
SCRATCH_LR = 2e-3     # a randomly initialised model needs far larger steps (the sweep's best)
LORA_LR = 2e-4        # adapters start at zero and are small: the usual LoRA rate (PEFT, TRL, LLaMA-Factory)


@dataclass
class TrainConfig:
    data: str | None = None            # None: Chatbot_data/ChatbotData.csv, downloaded if absent
    base_model: str = bb.DEFAULT_BASE_MODEL
    model_dir: str = "model_chp"
    max_epochs: int = 2                # the original trained for --max_epochs 2 in its README
    max_steps: int = -1
    max_len: int = 64
    batch_size: int = 96
    lr: float | None = None            # None: 5e-5 (the original's) for a pretrained model, 2e-3 for scratch
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float | None = None
    val_ratio: float = 0.05
    seed: int = 42
    protocol: str = "default"          # or "kochatbart": a random 80/10/10 split whose test part evaluate scores
    early_stopping: int | None = None  # patience in validation rounds; None: train every epoch
    resume: str | None = None          # a checkpoint path, or "last" for <model_dir>/model_-last.ckpt
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None       # None: bf16-mixed on a GPU that has it, else 32-true
    accumulate_grad_batches: int = 1
    gpus: int | None = None            # the original's flag: --gpus N means N GPUs
    num_workers: int = 0
    log_every_n_steps: int = 50
    samples: int = 3                   # validation questions answered at the end, as a first look
    progress: bool = True
    lora: bool = False                 # LoRA adapters on a frozen base (PEFT); checkpoints keep the adapter
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: str | None = None    # None: every linear layer but the output layer
    quantize: str | None = None        # "nf4": QLoRA, the base in 4 bit (CUDA)


def save_on_interrupt(path):
    """A callback: Ctrl-C saves the run where it stands as model_-last.ckpt, which --resume continues."""
    from lightning.pytorch.callbacks import Callback

    class SaveOnInterrupt(Callback):
        def on_exception(self, trainer, pl_module, exception):
            if isinstance(exception, KeyboardInterrupt):
                trainer.save_checkpoint(path, weights_only=False)  # full state, so --resume continues
                print(f"\n[train] interrupted: saved {path}; continue with --resume")

    return SaveOnInterrupt()


def resolve_hardware(cfg: TrainConfig) -> dict:
    """Map --gpus and 'auto' onto Lightning's accelerator/devices/precision."""
    accelerator, devices = cfg.accelerator, cfg.devices
    if cfg.gpus is not None:
        if cfg.gpus > 0 and torch.cuda.is_available():
            accelerator, devices = "gpu", cfg.gpus
        elif cfg.gpus > 0:
            warnings.warn(f"--gpus {cfg.gpus}: no GPU found (torch.cuda.is_available() is False); training on the CPU")
            accelerator, devices = "cpu", 1
        else:
            accelerator, devices = "cpu", 1
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.precision
    if precision is None:
        precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
    return {"accelerator": accelerator, "devices": devices, "precision": precision}


def resume_path(cfg: TrainConfig) -> str | None:
    if not cfg.resume:
        return None
    path = Path(cfg.model_dir) / f"{LAST_NAME}.ckpt" if cfg.resume == "last" else Path(cfg.resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path} to continue from; "
                                "drop --resume to start a new run")
    return str(path)


def load_checkpoint_dict(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def lora_settings(cfg: TrainConfig) -> dict | None:
    """The --lora flags as plain data (checked here, before any data or model is loaded)."""
    import dataclasses

    if not cfg.lora:
        if cfg.quantize:
            raise ValueError("--quantize nf4 is QLoRA: add --lora")
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

    default_lr = SCRATCH_LR if bb.is_scratch(cfg.base_model) else (LORA_LR if cfg.lora else PRETRAINED_LR)
    lr = cfg.lr if cfg.lr is not None else default_lr
    hparams = dict(base_model=cfg.base_model, max_len=cfg.max_len, batch_size=cfg.batch_size, lr=lr,
                   warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, dropout=cfg.dropout,
                   lora=lora_settings(cfg))
    if ckpt is not None:  # resume: the very backbone (tokenizer included) the run started with
        saved = ckpt["hyper_parameters"]
        hparams["base_model"] = saved["base_model"]
        return KoGPT2Chat(**hparams, backbone=saved["backbone"])
    if bb.is_scratch(cfg.base_model) and not cfg.lora:
        texts = [*train_rows["Q"], *train_rows["A"], *framing.SENTIMENTS]
        model, tokenizer = bb.load_backbone(cfg.base_model, texts=texts, cache_dir=Path(cfg.model_dir) / ".cache")
        return KoGPT2Chat(**hparams, backbone=bb.backbone_spec(model, tokenizer))
    return KoGPT2Chat(**hparams)


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
    lora_settings(cfg)  # bad LoRA flags stop here, before any data or model is loaded
    model_dir = Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_path(cfg)
    ckpt = load_checkpoint_dict(ckpt_path) if ckpt_path else None

    data_path = cfg.data or str(chatdata.fetch_default_corpus())
    table = chatdata.load_chat_table(data_path)
    for note in table.notes:
        print(f"[data] {note}")
    recorded = (ckpt or {}).get("chatbot_split", {})
    test_rows = table.rows.iloc[0:0]
    if any(recorded.get(k) for k in ("val_groups", "val_questions", "val_lines")):  # resume: the same split
        val, test = chatdata.held_out(table.rows, recorded), chatdata.held_out(table.rows, recorded, "test")
        train_rows = table.rows[~val & ~test].reset_index(drop=True)
        val_rows, test_rows = table.rows[val].reset_index(drop=True), table.rows[test].reset_index(drop=True)
    elif cfg.protocol == chatdata.KOCHATBART_PROTOCOL:
        recorded = None
        train_rows, val_rows, test_rows = chatdata.split_kochatbart(table.rows, cfg.seed)
    elif cfg.protocol == "default":
        recorded = None
        train_rows, val_rows = chatdata.split_train_val(table.rows, cfg.val_ratio, cfg.seed)
    else:
        raise ValueError(f"--protocol must be default or {chatdata.KOCHATBART_PROTOCOL}; got {cfg.protocol!r}")
    if table.history_turns:
        print(f"[data] {data_path}: {table.conversations} conversations, {len(table.rows)} turns "
              f"(up to {table.history_turns + 1} a conversation) -> {train_rows.conv.nunique()} train, "
              f"{val_rows.conv.nunique()} validation conversations")
    else:
        test = f", {len(test_rows)} test" if len(test_rows) else ""
        print(f"[data] {data_path}: {len(table.rows)} pairs -> {len(train_rows)} train, {len(val_rows)} validation{test}")

    # Lightning loads only now: a bad flag or a bad data file has already stopped the run, in seconds.
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(cfg.seed, verbose=False)  # the splits above use their own seeded generators
    module = build_module(cfg, train_rows, ckpt)
    module.split = {
        "data": str(data_path), "data_sha256": table.sha256, "val_ratio": cfg.val_ratio, "seed": cfg.seed,
        "val_groups": sorted(set(val_rows["group"])),
    }
    if len(test_rows) or cfg.protocol == chatdata.KOCHATBART_PROTOCOL:
        module.split.update(protocol=chatdata.KOCHATBART_PROTOCOL, val_lines=[int(x) for x in val_rows["line"]],
                            test_lines=[int(x) for x in test_rows["line"]])
    module.history_turns = table.history_turns
    module.sentiment_state = train_sentiment_classifier(train_rows, val_rows)
    if recorded:
        module.split.update({k: v for k, v in ckpt["chatbot_split"].items()
                             if k in ("val_ratio", "seed", "protocol", "val_lines", "test_lines")})
    tokenizer = module.tokenizer
    pad_id = framing.control_ids(tokenizer)[framing.PAD]
    collate = functools.partial(chatdata.collate, pad_id=pad_id)
    loader = functools.partial(torch.utils.data.DataLoader, batch_size=cfg.batch_size, collate_fn=collate,
                               num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    train_set = chatdata.ChatDataset(train_rows, tokenizer, cfg.max_len)
    sampler = chatdata.LengthGroupedSampler([len(ids) for ids, _ in train_set.examples], cfg.batch_size, cfg.seed)
    train_loader = loader(train_set, sampler=sampler)
    val_loader = None
    if len(val_rows):
        val_set = chatdata.ChatDataset(val_rows, tokenizer, cfg.max_len)
        by_length = sorted(range(len(val_set)), key=lambda i: len(val_set[i][0]))
        val_loader = loader(torch.utils.data.Subset(val_set, by_length), shuffle=False)

    has_val = val_loader is not None
    # Two checkpoints: the latest state after every epoch (Lightning's save_last only follows
    # improved ones) and the best by val_loss.
    last = ModelCheckpoint(dirpath=model_dir, filename=LAST_NAME, monitor=None, save_top_k=1,
                           enable_version_counter=False)
    callbacks = [last, save_on_interrupt(model_dir / f"{LAST_NAME}.ckpt")]
    checkpoint = None
    if has_val:
        checkpoint = ModelCheckpoint(dirpath=model_dir, filename=BEST_NAME, monitor="val_loss", mode="min",
                                     save_top_k=1, enable_version_counter=False)
        callbacks.append(checkpoint)
    if cfg.early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=cfg.early_stopping))
    logger = CSVLogger(save_dir=model_dir, name="logs")
    hardware = resolve_hardware(cfg)
    trainer = L.Trainer(
        **hardware, strategy=cfg.strategy, num_nodes=cfg.num_nodes,
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, gradient_clip_val=1.0,
        accumulate_grad_batches=cfg.accumulate_grad_batches, callbacks=callbacks, logger=logger,
        log_every_n_steps=max(1, min(cfg.log_every_n_steps, len(train_loader))),
        default_root_dir=model_dir, enable_progress_bar=cfg.progress, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    if not trainer.is_global_zero:
        return module
    finish(module, trainer, checkpoint, model_dir, val_rows, cfg)
    return module


def finish(module, trainer, checkpoint, model_dir: Path, val_rows, cfg: TrainConfig):
    """Rank zero, after fit: metrics.csv, training_curves.png, hf/ (best weights), a first look."""
    metrics_csv = Path(trainer.logger.log_dir) / "metrics.csv"
    if metrics_csv.exists():
        shutil.copyfile(metrics_csv, model_dir / "metrics.csv")
        plot_curves(model_dir / "metrics.csv", model_dir / "training_curves.png")
    best = checkpoint.best_model_path if checkpoint is not None else None
    if best and os.path.exists(best):
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=module.strict_loading)
        print(f"[train] best val_loss {float(checkpoint.best_model_score):.4f}: {best}")
    module.save_pretrained(model_dir / "hf")
    print(f"[train] last checkpoint: {model_dir / (LAST_NAME + '.ckpt')}; Hugging Face export: {model_dir / 'hf'}")
    if cfg.samples and len(val_rows):
        bot = module.chatbot
        sample = val_rows.sample(min(cfg.samples, len(val_rows)), random_state=cfg.seed)
        # Each sampled turn is answered given the turns before it in its conversation.
        turns = {conv: list(zip(g.Q, g.A, g.label)) for conv, g in val_rows.groupby("conv")}
        histories = [turns[conv][:turn] for conv, turn in zip(sample["conv"], sample["turn"])]
        replies = bot.chat_batch(list(sample["Q"]), list(sample["label"]), histories)
        for q, label, history, reply in zip(sample["Q"], sample["label"], histories, replies):
            earlier = f"  (after {len(history)} earlier turn(s))" if history else ""
            print(f"user > {q}  (sentiment {label}){earlier}\nSimsimi > {reply}")


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
    fig.savefig(out_png)
    plt.close(fig)


