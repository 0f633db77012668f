"""The `lean` engine: GPT-2's live weights through a KV-cached loop (gpt2.py), for one fast reply
on a CPU; it drops finished rows from a batch (HF generate() keeps computing them to the end)."""
from __future__ import annotations

import torch

from .base import BatchedEngine, model_device, seeded_generator
from .gpt2 import LeanGPT2, collect, decode, prefill_inputs, stream_tokens


def gpt2_refusal(model) -> str | None:
    if LeanGPT2.supports(model):
        return None
    if hasattr(model, "peft_config"):  # its raw weights lack the adapter: generate() runs it instead
        return "a LoRA model runs under the hf engine (its raw weights lack the adapter)"
    return f"it runs GPT-2 models only; this is {model.config.model_type!r}"


class LeanState:
    """A batch's tensors in the lean loop: every row its own KV cache, rows dropped as they end."""

    def __init__(self, lean: LeanGPT2, prompts, pad_id: int, max_new_tokens: int):
        device, dtype = lean.wte.device, lean.wte.dtype
        width = max(len(p) for p in prompts)
        self.seq, self.keys, pos, mask, self.width = prefill_inputs(prompts, pad_id, width + max_new_tokens, device)
        B, E, H = len(prompts), lean.wte.shape[1], lean.n_head
        self.cache = [tuple(torch.empty((B, H, width + max_new_tokens, E // H), device=device, dtype=dtype)
                            for _ in range(2)) for _ in lean.blocks]
        self.lean, self.padded = lean, mask is not None
        self.first_logits = lean.forward(self.seq[:, :width], pos, self.cache, 0, mask)
        self.next_pos = pos[:, -1:] + 1
        self.rows = torch.arange(B, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.age = torch.zeros(B, dtype=torch.long, device=device)
        self.pending = self.started_at = 0  # every prompt starts at once

    def history(self, cur: int):
        return self.seq[:, :cur]

    def append(self, cur: int, token):
        self.seq[:, cur] = token

    def advance(self, cur: int):
        self.keys[:, cur] = True
        step_mask = self.keys[:, None, None, : cur + 1] if self.padded else None
        logits = self.lean.forward(self.seq[:, cur : cur + 1], self.next_pos, self.cache, cur, step_mask)
        self.next_pos = self.next_pos + 1
        return logits

    def shrink(self, going: int):
        if (len(self.rows) - going) * 4 < len(self.rows):  # until a quarter have ended, keep them
            return
        keep = (~self.done).nonzero().flatten()
        self.seq, self.keys, self.next_pos = self.seq[keep], self.keys[keep], self.next_pos[keep]
        self.rows, self.done, self.age = self.rows[keep], self.done[keep], self.age[keep]
        self.cache = [(k[keep], v[keep]) for k, v in self.cache]


class LeanEngine(BatchedEngine):
    name = "lean-gpt2"

    @classmethod
    def refuses(cls, model, source) -> str | None:
        return gpt2_refusal(model)

    @classmethod
    def picks(cls, model, source) -> bool:
        return True

    def steps(self, prompts, decoding, generator):
        state = LeanState(LeanGPT2(self.model), prompts, self.pad_id, decoding.max_new_tokens)
        return decode(state, state.first_logits, state.width, decoding, self.processors(decoding), generator,
                      self.eos_id, self.pad_id, len(prompts))

    def _batch(self, prompts, decoding, generator):
        return collect(self.steps(prompts, decoding, generator), len(prompts), decoding, self.pad_id, self.eos_id,
                       model_device(self.model))

    def stream(self, prompt, decoding):
        with torch.inference_mode():  # the prefill
            steps = self.steps([prompt], decoding, seeded_generator(decoding, model_device(self.model)))
        yield from stream_tokens(steps, self.eos_id)
