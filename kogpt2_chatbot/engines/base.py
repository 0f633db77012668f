"""What the engines share: padding prompts, the seeded generator, and batching generate()."""
from __future__ import annotations

import abc

import torch

from .. import framing
from . import DEFAULT_BATCH_SIZE, check_batch_size
from ..decoding import Decoding, NeverEmpty


def context_size(model) -> int:
    return int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def left_pad(prompts: list[list[int]], pad_id: int, total: int):
    """(ids, mask) of shape [len(prompts), total]: every prompt ends at the longest one's length,
    so generation continues all rows at the same column; the columns after it are free."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    width = int(lengths.max())
    flat = torch.tensor([i for p in prompts for i in p], dtype=torch.long)  # one copy, not one per prompt
    rows = torch.repeat_interleave(torch.arange(len(prompts)), lengths)
    offsets = (width - lengths) - (lengths.cumsum(0) - lengths)  # where each prompt's ids go, less where they are
    ids = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    ids[rows, torch.arange(len(flat)) + offsets[rows]] = flat
    columns = torch.arange(total)
    mask = (columns >= (width - lengths)[:, None]) & (columns < width)
    return ids, mask


def seeded_generator(decoding: Decoding, device):
    if not decoding.do_sample or decoding.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(decoding.seed)


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


class BatchedEngine(abc.ABC):
    """generate() as batches of prompts of similar length, each answered by `_batch()`.

    A subclass sets `name` and implements `_batch(prompts, decoding, generator) -> new ids per
    prompt` and `stream()`; the constructor looks up the framing ids and the never-empty rule."""

    name = "?"

    @classmethod
    def refuses(cls, model, source) -> str | None:
        return None

    @classmethod
    def picks(cls, model, source) -> bool:
        return False

    def __init__(self, model, tokenizer, source=None):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        ids = framing.control_ids(tokenizer)
        self.pad_id, self.eos_id = ids[framing.PAD], ids[framing.EOS]
        config = model.get_base_model().config if hasattr(model, "peft_config") else model.config
        self.never_empty = NeverEmpty.for_tokenizer(tokenizer, int(config.vocab_size), self.eos_id)

    def processors(self, decoding: Decoding):
        return decoding.logits_processors(self.never_empty.to(model_device(self.model)))

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], decoding: Decoding, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress=None):
        """New token ids for each prompt (order kept), `</s>` included when the reply stopped."""
        check_batch_size(batch_size)
        # Longest first, so each batch holds prompts of similar length (little padding).
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[int]] = [[] for _ in prompts]
        generator = seeded_generator(decoding, model_device(self.model))
        for i, new in zip(order, self._answer([prompts[i] for i in order], decoding, batch_size, generator, progress)):
            results[i] = new
        return results

    def _answer(self, prompts, decoding: Decoding, batch_size: int, generator, progress):
        """New ids for prompts sorted longest first: `_batch()` on each `batch_size` of them."""
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            yield from self._batch(chunk, decoding, generator)
            if progress is not None:
                progress(len(chunk))

    @abc.abstractmethod
    def _batch(self, prompts, decoding: Decoding, generator) -> list[list[int]]:
        """New token ids for one batch of prompts: what each engine implements."""
