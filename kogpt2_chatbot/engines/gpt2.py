"""GPT-2 (KoGPT2 and the scratch presets) from its live weights, and the one step loop that the
`lean` and `static` engines share.

For a small model and ~12-token replies, per-call framework overhead costs more than the
arithmetic, so `LeanGPT2` runs each layer as a dozen plain tensor ops. `decode()` is the step
loop: logits processors, the next token, finished rows; each engine keeps its own batch state
(`advance()` computes the next step's logits, `shrink()` may drop finished rows, `refill()` may
start waiting prompts in their place).
"""
from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

from ..decoding import Decoding
from .base import left_pad

# How many steps a CUDA loop runs between reads of "how many rows are still going": each read
# waits for the device, so fewer of them let the host queue the next steps meanwhile. On a CPU
# there is nothing to wait for and every extra step is real work, so it reads every step.
STEPS_PER_SYNC = 4


def _mm_to_fp32_works(weight) -> bool:
    """Can this torch multiply 16-bit matrices into an fp32 result on this device (CUDA, torch >= 2.8)?"""
    try:
        probe = torch.zeros((1, weight.shape[1]), dtype=weight.dtype, device=weight.device)
        return torch.mm(probe, weight[:1].t(), out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):
        return False


class LeanGPT2:
    """KV-cached decoding for Hugging Face GPT-2 models, from their live weights (eval only)."""

    @staticmethod
    def supports(model) -> bool:
        if hasattr(model, "peft_config"):  # its raw weights lack the adapter: generate() runs it instead
            return False
        c = model.config
        return (c.model_type == "gpt2" and not getattr(c, "scale_attn_by_inverse_layer_idx", False)
                and not getattr(c, "reorder_and_upcast_attn", False) and not getattr(c, "add_cross_attention", False))

    def __init__(self, model):
        from transformers.activations import ACT2FN

        t = model.transformer
        self.wte, self.wpe, self.ln_f = t.wte.weight, t.wpe.weight, t.ln_f
        self.head = model.lm_head.weight
        # 16-bit weights still give fp32 logits: rounded to 16 bits, near-ties among the top tokens
        # turn into flips (bench/RESULTS.md, "16-bit decoding"). A GPU multiplies 16-bit inputs into an
        # fp32 output directly; elsewhere an fp32 copy of the output layer does it.
        self.head32 = None
        if self.head.dtype != torch.float32 and not _mm_to_fp32_works(self.head):
            self.head32 = self.head.float()
        self.blocks = [(b.ln_1, b.attn.c_attn, b.attn.c_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj) for b in t.h]
        self.n_head = model.config.n_head
        if model.config.activation_function in ("gelu_new", "gelu_pytorch_tanh"):
            self.act = functools.partial(F.gelu, approximate="tanh")  # the same function, one kernel
        else:
            self.act = ACT2FN[model.config.activation_function]

    def forward(self, ids, pos, cache, start: int, mask):
        """Logits of the last position; K/V of the S new positions go to cache[start:start+S].

        `mask` is a boolean [B, 1, S, start+S] attention mask, or None: causal when S > 1,
        everything so far when S == 1 (no padding in the batch)."""
        S = ids.shape[1]
        end = start + S
        causal = mask is None and S > 1

        def attend(q, k, v, k_cache, v_cache):
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            return F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask,
                                                  is_causal=causal)

        return self.run_blocks(ids, pos, cache, attend)

    def run_blocks(self, ids, pos, cache, attend):
        """Logits of the last position, through every block; `attend(q, k, v, k_cache, v_cache)`
        (heads first: [B, H, S, D]) stores the new K/V in the layer's cache and returns attention."""
        x = F.embedding(ids, self.wte) + F.embedding(pos, self.wpe)
        B, S, E = x.shape
        H = self.n_head
        for (ln1, c_attn, c_proj, ln2, c_fc, m_proj), (k_cache, v_cache) in zip(self.blocks, cache):
            h = F.layer_norm(x, (E,), ln1.weight, ln1.bias, ln1.eps)
            q, k, v = torch.addmm(c_attn.bias, h.view(-1, E), c_attn.weight).view(B, S, 3, H, E // H).unbind(2)
            a = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), k_cache, v_cache)
            x = x + torch.addmm(c_proj.bias, a.transpose(1, 2).reshape(B * S, E), c_proj.weight).view(B, S, E)
            h = F.layer_norm(x, (E,), ln2.weight, ln2.bias, ln2.eps).view(-1, E)
            x = x + torch.addmm(m_proj.bias, self.act(torch.addmm(c_fc.bias, h, c_fc.weight)), m_proj.weight).view(B, S, E)
        last = F.layer_norm(x[:, -1], (E,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return self.logits(last)

    def logits(self, last):
        """fp32 logits of the last hidden states."""
        if last.dtype == torch.float32:
            return last @ self.head.t()
        if self.head32 is not None:
            return last.float() @ self.head32.t()
        return torch.mm(last, self.head.t(), out_dtype=torch.float32)


def prefill_inputs(prompts: list[list[int]], pad_id: int, total: int, device):
    """(ids [B, total], key mask, positions of the prompt, prefill attention mask or None, width)."""
    width = max(len(p) for p in prompts)
    seq, keys = left_pad(prompts, pad_id, total)
    seq, keys = seq.to(device), keys.to(device)
    pos = (keys[:, :width].long().cumsum(-1) - 1).clamp(min=0)
    mask = None
    if any(len(p) != width for p in prompts):
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        # Padding queries attend to themselves only, so they stay finite (their outputs are unused).
        mask = ((causal & keys[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device))[:, None]
    return seq, keys, pos, mask, width


def next_tokens(scores, decoding: Decoding, generator, rows, n_prompts: int):
    """Greedy: the best token. Sampling: torch.multinomial's own draw (probabilities over
    exponential noise), with the noise drawn per prompt, so a prompt's tokens do not depend on
    which other rows are still in the batch (the lean and static loops drop finished rows at
    different times)."""
    if not decoding.do_sample:
        return scores.argmax(-1)
    probs = F.softmax(scores.float(), -1)
    noise = torch.empty((n_prompts + 1, probs.shape[1]), device=probs.device).exponential_(generator=generator)
    return (probs / noise[rows]).argmax(-1)  # idle rows (-1) draw from the spare last row


def decode(state, logits, width: int, decoding: Decoding, processors, generator, eos_id: int, pad_id: int,
           n_prompts: int):
    """Yield (rows, columns, tokens) per step, device tensors over the batch: the prompt index of
    each row (-1 for an idle row), where its token goes in its reply (`max_new_tokens` once the
    row has ended: a spare column) and the token.

    `state` has `rows`, `done` (bool [B]) and `age` (tokens each row has given so far),
    `history(cur)` (the ids before column `cur`, [B, columns], as the processors read them),
    `append(cur, token)`, `advance(cur)` -> the logits after column `cur`, `shrink(going)`, told
    how many rows are still going, and `pending`: prompts not yet started, which `refill(step)`
    starts in rows that have ended (it returns how many rows are going then; `started_at` is the
    step of the last start). Finished rows are masked on the device; the host learns how many are
    left once every STEPS_PER_SYNC steps on CUDA."""
    every = 1 if state.done.device.type == "cpu" else STEPS_PER_SYNC
    last = decoding.max_new_tokens
    cur = width
    for step in itertools.count(1):
        scores = processors(state.history(cur), logits.float())
        token = next_tokens(scores, decoding, generator, state.rows, n_prompts).masked_fill(state.done, pad_id)
        state.append(cur, token)
        yield state.rows, state.age.masked_fill(state.done, last), token
        state.done |= (token == eos_id) | (state.age >= last - 1)
        state.age += 1
        if not state.pending and step - state.started_at >= last:  # every row has reached its cap
            return
        if step % every == 0:
            going = state.refill(step) if state.pending else int((~state.done).sum())
            if not going:
                return
            state.shrink(going)
        logits = state.advance(cur)
        cur += 1


def collect(steps, n_prompts: int, decoding: Decoding, pad_id: int, eos_id: int, device) -> list[list[int]]:
    """The new ids of each prompt from `decode()`'s steps, read back from the device once."""
    last = decoding.max_new_tokens
    out = torch.full((n_prompts + 1, last + 1), pad_id, dtype=torch.long, device=device)
    for rows, columns, token in steps:
        out[rows, columns] = token  # idle rows write to the spare last row, ended ones to the spare column
    return [row[: row.index(eos_id) + 1] if eos_id in row else row[:last] for row in out[:n_prompts, :last].tolist()]


def stream_tokens(steps, eos_id: int):
    """One prompt's tokens from `decode()`'s steps, as they come, `</s>` not included; the steps
    run in inference mode one at a time, never across a yield: it is per thread, and a caller may
    run other streams (or its own tensor work) between our tokens."""
    try:
        while True:
            with torch.inference_mode():
                step = next(steps, None)
                token = None if step is None else int(step[2][0])
            if token is None or token == eos_id:
                return
            yield token
    finally:
        steps.close()  # frees what the loop holds when the caller stops early
