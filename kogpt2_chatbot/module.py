"""KoGPT2Chat: the LightningModule that learns P(answer | conversation so far, sentiment)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import torch

from . import backbone as bb
from . import checkpoint as ckpt_format
from . import framing
from .engines import DEFAULT_BATCH_SIZE
from .train_options import TrainConfig, check, default_lr

_DEFAULTS = TrainConfig()  # the hyperparameters' defaults are the training options' (train_options.py)


class KoGPT2Chat(L.LightningModule):
    """The Hugging Face model is `self.kogpt2`, its tokenizer `self.tokenizer` (the original's names).

    Built from `base_model` (hub id or folder; pretrained weights), or from `backbone`, the plain
    spec a checkpoint carries (so `load_from_checkpoint(path)` needs no network and no argument).
    """

    def __init__(
        self,
        base_model: str = _DEFAULTS.base_model,
        max_len: int = _DEFAULTS.max_len,
        batch_size: int = _DEFAULTS.batch_size,
        lr: float | None = _DEFAULTS.lr,
        warmup_ratio: float = _DEFAULTS.warmup_ratio,
        weight_decay: float = _DEFAULTS.weight_decay,
        dropout: float | None = _DEFAULTS.dropout,
        lora: dict | None = None,
        backbone: dict | None = None,
    ):
        super().__init__()
        if lr is None:  # recorded as the rate used, so a checkpoint says what it was trained with
            lr = default_lr(base_model, lora is not None)
        for name in ("max_len", "batch_size", "lr", "warmup_ratio", "weight_decay", "dropout"):
            check(name, locals()[name])  # the declaration's bounds, as the flags apply them
        self.save_hyperparameters(ignore=["backbone"])
        self._spec = backbone
        if backbone is not None:
            self.kogpt2, self.tokenizer = bb.backbone_from_spec(backbone)
        elif lora is not None:  # a frozen base with LoRA; checkpoints keep the adapter, not the base
            settings = bb.LoraSettings(**lora)
            model, self.tokenizer, new_ids = bb.load_backbone(base_model, quantize=settings.quantize, return_new_ids=True)
            self.kogpt2 = bb.add_lora(model, settings, new_ids)
            # A folder is recorded by its absolute path, so the checkpoint loads from anywhere.
            where = str(Path(base_model).resolve()) if Path(base_model).exists() else base_model
            self._spec = bb.lora_spec(self.kogpt2, self.tokenizer, where, settings, new_ids)
        else:
            self.kogpt2, self.tokenizer = bb.load_backbone(base_model)
        self.is_lora = bb.has_adapter(self.kogpt2)
        self.strict_loading = not self.is_lora  # a LoRA checkpoint holds the adapter only
        if dropout is not None:
            for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout"):
                if hasattr(self.kogpt2.config, name):
                    setattr(self.kogpt2.config, name, dropout)
            for layer in self.kogpt2.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = dropout
        # from_pretrained() hands models over in eval mode; a LightningModule starts in train
        # mode (dropout on), and Lightning 2.x no longer switches submodules for us.
        self.train()
        self.split: dict = {}  # which conversations were held out; set by training, kept in checkpoints
        self.history_turns = 0  # earlier turns a conversation's prompt holds; set by training
        self.sentiment_state: dict | None = None  # the `auto` classifier as plain data; set by training
        self.grounding_state: dict | None = None  # the index of training pairs (grounding.py); set by training
        self.refine_state: dict | None = None  # how the reference slot was trained (refine, alpha); set by training
        self._chatbot = self._chatbot_grounding = None
        self.compile_step = False  # set by training: --compile, or CUDA (train.py)
        self.throughput: dict | None = None  # training samples/s, set by training (train.measure_throughput)
        self._compiled_loss = None
        self._val_sum = self._val_count = None
        self._train_sum = self._train_count = None

    # --- the original's forward: logits for every position -------------------------------------
    def forward(self, input_ids, attention_mask=None):
        return self.kogpt2(input_ids=input_ids, attention_mask=attention_mask).logits

    def answer_loss(self, input_ids, labels):
        """(mean cross-entropy over answer tokens, number of answer tokens); see backbone.answer_loss."""
        return bb.answer_loss(self.kogpt2, input_ids, labels)

    def training_step(self, batch, batch_idx):
        loss = self.compiled_loss(batch) if self.compile_step else None
        if loss is None:
            loss, _ = self.answer_loss(batch["input_ids"], batch["labels"])
        n = len(batch["input_ids"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        # Batches are grouped by length, so single steps swing; the epoch mean is the curve to read.
        # Summed on the device here (a second self.log per step costs the host more than the step's
        # own launches on a GPU) and logged once at the epoch's end.
        if self._train_sum is None:  # the epoch's first step (a resumed epoch's too)
            self._train_sum, self._train_count = (torch.zeros((), device=self.device, dtype=torch.float64)
                                                  for _ in range(2))
        self._train_sum += loss.detach().double() * n
        self._train_count += n
        return loss

    def on_train_epoch_start(self):
        self._train_sum = self._train_count = None

    def on_train_epoch_end(self):
        if self._train_sum is None:  # no step this epoch
            return
        # Under DDP: the mean over every process's samples, reduced once.
        total = self.trainer.strategy.reduce(self._train_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._train_count, reduce_op="sum")
        self.log("train_loss_epoch", (total / count).float(), sync_dist=True)
        self._train_sum = self._train_count = None

    def compiled_loss(self, batch):
        """--compile: the same loss, compiled (backbone.compiled_answer_loss). Where torch.compile
        cannot build it on the first step, one line says so and training goes on without (None)."""
        if self._compiled_loss is None:
            self._compiled_loss = bb.compiled_answer_loss(self.kogpt2)
        try:
            return self._compiled_loss(batch["input_ids"], batch["labels"])
        except Exception as err:
            if self.global_step:  # it compiled and ran before: a real failure
                raise
            first = (str(err).strip().splitlines() or [""])[0][:200]
            print(f"[train] --compile: {type(err).__name__}: {first}; training without it (--no-compile)",
                  file=sys.stderr)
            self.compile_step = False
            return None

    def on_validation_epoch_start(self):
        self._val_sum, self._val_count, self._val_chars = (
            torch.zeros((), device=self.device, dtype=torch.float64) for _ in range(3))

    def validation_step(self, batch, batch_idx):
        loss, count = self.answer_loss(batch["input_ids"], batch["labels"])
        # Token-weighted, so val_loss is the mean over every answer token of the split.
        self._val_sum += loss.double() * count
        self._val_count += count
        if "answer_chars" in batch:
            self._val_chars += batch["answer_chars"]

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        chars = self.trainer.strategy.reduce(self._val_chars, reduce_op="sum")
        if chars > 0:  # answer loss per character, in bits: comparable across vocabularies
            self.log("val_bpc", (total / chars / math.log(2)).float(), prog_bar=True, sync_dist=True)
        val_loss = (total / count.clamp(min=1)).float()
        # Already the same on every process; sync_dist averages equal values (and says so to Lightning).
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=True)
        self.log("val_ppl", torch.exp(val_loss.clamp(max=50)), sync_dist=True)

    def configure_optimizers(self):
        from transformers import get_cosine_schedule_with_warmup

        # The original's groups: no weight decay on biases and LayerNorm weights (every 1-D tensor).
        decay, no_decay = [], []
        for param in self.kogpt2.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, fused=self._fused_optimizer())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(total * self.hparams.warmup_ratio))
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def _fused_optimizer(self) -> bool:
        # Fused AdamW on a GPU (a few kernels per step), except under fp16 with a grad scaler: a fused
        # step unscales inside itself, so the gradients could not be clipped before it.
        return self.device.type == "cuda" and getattr(self.trainer.precision_plugin, "scaler", None) is None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # Lightning's mixed-precision plugin refuses to clip for a fused optimizer (it would unscale
        # inside its step). Fused is only chosen where there is no scaler (bf16-mixed, 32-true), so the
        # gradients are the true ones here: clip them by norm, as Lightning does for the others.
        if gradient_clip_val and optimizer.defaults.get("fused"):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"gradient clipping by {gradient_clip_algorithm!r} with a fused optimizer")
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --- replies: the chatbot API over this module's live weights -----------------------------
    @property
    def chatbot(self):
        """The `Chatbot` over this model (see kogpt2_chatbot.api); it follows training's weights."""
        from .api import Chatbot

        if self._chatbot is None or self._chatbot.history_turns != self.history_turns:
            from .sentiment import SentimentClassifier

            info = self.chatbot_state() | {"base_model": self.hparams.get("base_model"),
                                           "max_len": self.hparams.get("max_len", framing.DEFAULT_MAX_LEN),
                                           "split": self.split}
            # The original's API answers with sentiment 0 unless told otherwise; `sent="auto"` asks.
            # Likewise it generates unless told to ground (`grounding="rerank"`).
            self._chatbot = Chatbot(self.kogpt2, self.tokenizer, sentiment="0", history_turns=self.history_turns,
                                    info=info, classifier=SentimentClassifier.from_state(self.sentiment_state),
                                    grounding="generate")
        self._chatbot.info["split"] = self.split
        if self._chatbot_grounding is not self.grounding_state:  # training adds the index at its end
            from .grounding import Index

            self._chatbot.index, self._chatbot_grounding = Index.from_state(self.grounding_state), self.grounding_state
        return self._chatbot

    def chat(self, question: str, sent="0", history=None, **decoding) -> str:
        """One reply. `sent`: 0|1|2 or neutral|negative|positive. Decoding options: see Decoding."""
        return self.chatbot.chat(question, sent, history, **decoding)

    def chat_batch(self, questions, sents="0", batch_size: int = DEFAULT_BATCH_SIZE, **decoding) -> list[str]:
        """Many replies at once (one sentiment for all, or one per question); order kept."""
        return self.chatbot.chat_batch(questions, sents, batch_size=batch_size, **decoding)

    def stream_chat(self, question: str, sent="0", history=None, **decoding):
        """Yield the reply in pieces as it is generated; the pieces join to chat()'s reply."""
        yield from self.chatbot.stream(question, sent, history, **decoding)

    # --- checkpoints carry the backbone, the split and the chatbot's entries, as plain data -------
    def backbone_spec(self) -> dict:
        if self._spec is None:
            self._spec = bb.backbone_spec(self.kogpt2, self.tokenizer)
        return self._spec

    def chatbot_state(self) -> dict:
        """The checkpoint's `chatbot` entries (checkpoint.py documents them); new plain data goes here."""
        return {"history_turns": self.history_turns, "sentiment_classifier": self.sentiment_state,
                "grounding": self.grounding_state, "refine": self.refine_state}

    def on_save_checkpoint(self, checkpoint):
        if self.is_lora:  # the adapter and the new tokens' rows; the base stays where it came from
            keep = {f"kogpt2.{name}" for name in bb.adapter_state(self.kogpt2)}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        ckpt_format.store(checkpoint, self.backbone_spec(), self.split, self.chatbot_state())

    def on_load_checkpoint(self, checkpoint):
        self.split = ckpt_format.split_of(checkpoint)
        entries = ckpt_format.chatbot_entries(checkpoint)
        self.history_turns = int(entries.get("history_turns", 0))
        self.sentiment_state = entries.get("sentiment_classifier")
        self.grounding_state = entries.get("grounding")
        self.refine_state = entries.get("refine")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, strict=None, **overrides):
        """Lightning's classmethod, read through checkpoint.read_checkpoint: plain data only, every
        member's checksum checked, one clear CheckpointError for a bad file."""
        import inspect

        ckpt = ckpt_format.read_checkpoint(checkpoint_path)
        known = inspect.signature(cls.__init__).parameters
        model = cls(**{k: v for k, v in {**ckpt["hyper_parameters"], **overrides}.items() if k in known})
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"], strict=model.strict_loading if strict is None else strict)
        return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model

    def save_pretrained(self, directory):
        """A plain Hugging Face folder (model, tokenizer, chat template) for transformers or vLLM."""
        return self.chatbot.save_pretrained(directory)
