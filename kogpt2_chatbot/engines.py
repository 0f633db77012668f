"""Engines: prompt ids in, new token ids out (batched, KV-cached, streamed). Only the chatbot
API (`api.Chatbot`) calls them; every door goes through it.

Two engines produce the same tokens:
- `LeanGPT2`, for GPT-2 models (KoGPT2 and the scratch presets): a KV-cached decoding loop that
  runs the model's own weights through a dozen plain tensor ops a layer. For a small model and
  ~12-token replies, per-call framework overhead costs more than the arithmetic, so this loop
  is what makes one reply fast on a CPU; it also drops finished rows from a batch.
- `StaticGPT2`, the same loop with fixed shapes, for GPT-2 on a GPU: each decode step is replayed
  as a CUDA graph, with fp16 weights and fp32 logits (on a CPU it runs eagerly, for the tests).
- Hugging Face `generate()` for every other architecture.
All apply the same Hugging Face logits processors, so decoding options mean the same thing, and
both refuse to end a reply before it holds visible text (`NonEmptyReply`).
"""
from __future__ import annotations

import functools
import queue
import threading

import torch
import torch.nn.functional as F

from . import framing
from .decoding import Decoding


# --- inputs and outputs -------------------------------------------------------------------

def context_size(model) -> int:
    return int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))


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


def reply_text(tokenizer, new_ids: list[int], eos_id: int) -> str:
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()


def is_degenerate(new_ids: list[int], eos_id: int, cap: int) -> bool:
    """A failed reply: it hit the cap without `</s>`, or some token 3-gram occurs three times."""
    if len(new_ids) >= cap and eos_id not in new_ids:
        return True
    counts: dict[tuple, int] = {}
    for i in range(len(new_ids) - 2):
        gram = tuple(new_ids[i : i + 3])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= 3:
            return True
    return False


# --- the lean GPT-2 engine ------------------------------------------------------------------

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

    def steps(self, prompts, decoding: Decoding, pad_id: int, eos_id: int, generator=None, processors=None):
        """Yield (row indices, next tokens) per step for a batch of prompts, rows finishing at </s>.

        A finished row is dropped from the batch once a quarter of the rows have finished, so
        later steps spend no work on it (HF generate() keeps computing such rows to the end).
        """
        device, dtype = self.wte.device, self.wte.dtype
        B, width = len(prompts), max(len(p) for p in prompts)
        total = width + decoding.max_new_tokens
        seq, keys = left_pad(prompts, pad_id, total)
        padded = any(len(p) != width for p in prompts)
        seq, keys = seq.to(device), keys.to(device)
        pos = (keys[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        E = self.wte.shape[1]
        cache = [tuple(torch.empty((B, self.n_head, total, E // self.n_head), device=device, dtype=dtype)
                       for _ in range(2)) for _ in self.blocks]
        mask = None
        if padded:
            causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
            # Padding queries attend to themselves only, so they stay finite (their outputs are unused).
            mask = ((causal & keys[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device))[:, None]
        logits = self.forward(seq[:, :width], pos, cache, 0, mask)
        next_pos = pos[:, -1:] + 1
        rows = list(range(B))   # the prompt index of each batch row
        done = [False] * B
        processors = decoding.logits_processors() if processors is None else processors
        for step in range(decoding.max_new_tokens):
            cur = width + step
            scores = processors(seq[:, :cur], logits.float()) if processors else logits
            if decoding.do_sample:
                token = torch.multinomial(F.softmax(scores.float(), -1), 1, generator=generator).squeeze(1)
            else:
                token = scores.argmax(-1)
            seq[:, cur] = token
            tokens = token.tolist()  # the one device-to-host read of a step
            live = [r for r in range(len(rows)) if not done[r]]
            yield [rows[r] for r in live], [tokens[r] for r in live]
            for r in live:
                done[r] = tokens[r] == eos_id
            finished = sum(done)
            if step + 1 == decoding.max_new_tokens or finished == len(done):
                return
            if finished * 4 >= len(done):  # a quarter finished: stop spending work on them
                keep = [r for r in range(len(rows)) if not done[r]]
                index = torch.tensor(keep, device=device)
                seq, keys, next_pos = seq[index], keys[index], next_pos[index]
                cache = [(k[index], v[index]) for k, v in cache]
                rows, done = [rows[r] for r in keep], [False] * len(keep)
            keys[:, cur] = True
            step_mask = keys[:, None, None, : cur + 1] if padded else None
            logits = self.forward(seq[:, cur : cur + 1], next_pos, cache, cur, step_mask)
            next_pos = next_pos + 1


# --- the static engine: fixed shapes, so CUDA graphs can replay each decode step --------------

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def bucket_for(n: int) -> int:
    return next((b for b in BUCKETS if b >= n), n)


class HalfOverflow(ArithmeticError):
    """This model's activations do not fit in fp16 (its logits came out inf or nan)."""


class StaticGPT2:
    """The lean loop with every decode step of one fixed shape per batch bucket.

    A small model's decode step is dozens of tiny kernels, so on a GPU the launches, not the
    arithmetic, set the speed. Here the KV cache is allocated once per (bucket, length), the new
    K/V go in at a position held in a tensor, and attention runs over the whole cache with a mask
    of the positions written so far: the step's shapes never change, so on CUDA each bucket's step
    is captured once as a CUDA graph and replayed (one launch). Rows that finish move to a smaller
    bucket once few enough are left. The same code runs eagerly on a CPU, where its replies are
    tested equal to the lean loop's."""

    def __init__(self, lean: LeanGPT2, use_graphs: bool):
        self.lean, self.use_graphs = lean, use_graphs
        # (bucket, length) -> slots: buffers and, on CUDA, the captured graph. A slot belongs to one
        # reply loop at a time, so replies streamed turn about (or from two threads) never share one.
        self.slots: dict[tuple[int, int], list[dict]] = {}
        self._lock = threading.Lock()

    def _slot(self, bucket: int, length: int):
        """A free slot of this shape, now taken; `_release` gives it back."""
        with self._lock:
            pool = self.slots.setdefault((bucket, length), [])
            for slot in pool:
                if not slot["busy"]:
                    slot["busy"] = True
                    return slot
            w = self.lean.wte
            E, H = w.shape[1], self.lean.n_head
            slot = {
                "cache": [tuple(torch.zeros((bucket, H, length, E // H), device=w.device, dtype=w.dtype)
                                for _ in range(2)) for _ in self.lean.blocks],
                "tokens": torch.zeros((bucket, 1), dtype=torch.long, device=w.device),
                "pos": torch.zeros((bucket, 1), dtype=torch.long, device=w.device),
                "cur": torch.zeros(1, dtype=torch.long, device=w.device),
                "valid": torch.zeros((bucket, 1, 1, length), dtype=torch.bool, device=w.device),
                "graph": None, "out": None, "busy": True,
            }
            pool.append(slot)
            return slot

    def _release(self, slot):
        with self._lock:
            slot["busy"] = False

    def _step(self, slot):
        """One decode step on the slot's buffers; returns the logits [bucket, vocab]."""
        cur, valid = slot["cur"], slot["valid"]
        valid.index_fill_(3, cur, True)

        def attend(q, k, v, k_cache, v_cache):  # the new K/V at a position held in a tensor; the whole cache
            k_cache.index_copy_(2, cur, k)
            v_cache.index_copy_(2, cur, v)
            return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=valid)

        return self.lean.run_blocks(slot["tokens"], slot["pos"], slot["cache"], attend)

    def _run(self, slot):
        if not self.use_graphs:
            return self._step(slot)
        if slot["graph"] is None:
            try:
                self._capture(slot)
            except RuntimeError as err:  # a driver or build without graph support: the same step, eagerly
                import sys

                print(f"warning: CUDA graphs unavailable ({str(err).splitlines()[0]}); decoding without them",
                      file=sys.stderr)
                self.use_graphs = False
                return self._step(slot)
        slot["graph"].replay()
        return slot["out"]

    def _capture(self, slot):
        # Warm-up on a side stream, as capture requires. It computes this very step (the same
        # column written with the same values as the replay after it), so nothing needs undoing.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step(slot)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            slot["out"] = self._step(slot)
        slot["graph"] = graph

    def steps(self, prompts, decoding: Decoding, pad_id: int, eos_id: int, generator=None, processors=None):
        """Like LeanGPT2.steps: yield (prompt indices, next tokens) for the rows still going."""
        n, width = len(prompts), max(len(p) for p in prompts)
        length = -(-(width + decoding.max_new_tokens) // 32) * 32  # a few lengths, so few graphs
        held = [self._slot(bucket_for(n), length)]  # the slot this loop holds; it changes as rows finish
        try:
            yield from self._steps_on(held, prompts, decoding, pad_id, eos_id, generator, processors, length)
        finally:  # also when the caller stops early (a stream closed, a stop string met)
            self._release(held[0])

    def _steps_on(self, held, prompts, decoding, pad_id, eos_id, generator, processors, length):
        lean = self.lean
        device = lean.wte.device
        n, width = len(prompts), max(len(p) for p in prompts)
        slot = held[0]
        bucket = len(slot["tokens"])
        seq, keys = left_pad(prompts, pad_id, length)
        seq, keys = seq.to(device), keys.to(device)
        pos = (keys[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        prefill_cache = [(k[:n], v[:n]) for k, v in slot["cache"]]
        mask = None
        if any(len(p) != width for p in prompts):
            causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
            mask = ((causal & keys[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device))[:, None]
        logits = lean.forward(seq[:, :width], pos, prefill_cache, 0, mask)
        if lean.head.dtype == torch.float16 and not bool(torch.isfinite(logits).all()):  # one check a batch
            raise HalfOverflow("fp16 activations overflowed")
        # The rows of the bucket beyond the prompts are idle: they see only their own position.
        slot["valid"].zero_()
        slot["valid"][:n, 0, 0] = keys
        slot["pos"].zero_()
        slot["pos"][:n] = pos[:, -1:] + 1
        slot["cur"].fill_(width)
        seq = torch.cat([seq, torch.full((bucket - n, length), pad_id, dtype=torch.long, device=device)])
        rows = list(range(n)) + [-1] * (bucket - n)  # the prompt index of each bucket row
        done = [False] * n + [True] * (bucket - n)
        processors = decoding.logits_processors() if processors is None else processors
        for step in range(decoding.max_new_tokens):
            cur = width + step
            live = [r for r in range(len(rows)) if not done[r]]
            index = torch.tensor(live, device=device)
            scores = processors(seq[index, :cur], logits[index].float())
            if decoding.do_sample:
                token = torch.multinomial(F.softmax(scores.float(), -1), 1, generator=generator).squeeze(1)
            else:
                token = scores.argmax(-1)
            seq[index, cur] = token
            tokens = token.tolist()  # the one device-to-host read of a step
            yield [rows[r] for r in live], tokens
            for r, t in zip(live, tokens):
                done[r] = t == eos_id
            if step + 1 == decoding.max_new_tokens or all(done):
                return
            going = [r for r in range(len(rows)) if not done[r]]
            smaller = bucket_for(len(going))
            if smaller < len(rows):  # few enough rows left: move them to a smaller bucket
                keep = going + [going[0]] * (smaller - len(going))
                pick = torch.tensor(keep, device=device)
                target = self._slot(smaller, length)
                for (k, v), (k2, v2) in zip(slot["cache"], target["cache"]):
                    k2.copy_(k[pick])
                    v2.copy_(v[pick])
                for name in ("tokens", "pos", "valid"):
                    target[name].copy_(slot[name][pick])
                target["cur"].copy_(slot["cur"])
                seq = seq[pick]
                rows = [rows[r] for r in going] + [-1] * (smaller - len(going))
                done = [False] * len(going) + [True] * (smaller - len(going))
                held[0] = target
                self._release(slot)
                slot = target
            slot["tokens"].copy_(seq[:, cur : cur + 1])
            logits = self._run(slot)
            slot["pos"].add_(1)
            slot["cur"].add_(1)


# --- never an empty reply ------------------------------------------------------------------

def visible_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Bool per token id: does the token alone decode to visible text (not space, not special)?"""
    count = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(count)], skip_special_tokens=True)
    visible = torch.zeros(vocab_size, dtype=torch.bool)
    visible[:count] = torch.tensor([bool(t.strip()) for t in texts])
    return visible


class NonEmptyReply:
    """A logits processor: `</s>` cannot end a reply before the reply holds a visible token.

    A small or under-trained model often ranks `</s>` first right after `<sys>`; without this
    its answer is empty. Columns before `start` are the prompt."""

    def __init__(self, start: int, visible: torch.Tensor, eos_id: int):
        self.start, self.visible, self.eos_id = start, visible, eos_id

    def __call__(self, input_ids, scores):
        new = input_ids[:, self.start :]
        if self.visible.device != new.device:
            self.visible = self.visible.to(new.device)
        if new.shape[1]:
            empty = ~self.visible[new.clamp(max=len(self.visible) - 1)].any(-1)
        else:
            empty = torch.ones(len(new), dtype=torch.bool, device=new.device)
        scores[:, self.eos_id].masked_fill_(empty, float("-inf"))  # no boolean indexing: no device sync
        return scores


# --- the engine ------------------------------------------------------------------------------

def _generator(decoding: Decoding, device):
    if not decoding.do_sample or decoding.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(decoding.seed)


class Engine:
    """Generation for one model and its tokenizer: the lean loop for GPT-2, else generate()."""

    def __init__(self, model, tokenizer, engine: str = "auto"):
        """engine: auto (on CUDA the static loop with CUDA graphs in fp16 for GPT-2, on a CPU the lean
        loop; generate() for other architectures), lean, static (graphs on CUDA), or hf (generate())."""
        if engine not in ("auto", "lean", "static", "hf"):
            raise ValueError(f"engine must be auto, lean, static or hf; got {engine!r}")
        if engine in ("lean", "static") and not LeanGPT2.supports(model):
            raise ValueError(f"the {engine} engine runs GPT-2 models only; this is {model.config.model_type!r}")
        self.model, self.tokenizer = model, tokenizer
        on_cuda = next(model.parameters()).device.type == "cuda"
        self.static = engine == "static" or (engine == "auto" and on_cuda and LeanGPT2.supports(model))
        self.lean = self.static or engine == "lean" or (engine == "auto" and LeanGPT2.supports(model))
        self._static: StaticGPT2 | None = None
        # The static loop's weights: fp16 on a GPU (with fp32 logits 99.7-99.9% of greedy replies equal
        # fp32's, against 97.4-98.5% for bf16: bench/RESULTS.md, "16-bit decoding"), else the model's own.
        self.static_dtype = torch.float16 if on_cuda else None
        ids = framing.control_ids(tokenizer)
        self.pad_id, self.eos_id = ids[framing.PAD], ids[framing.EOS]
        config = model.get_base_model().config if hasattr(model, "peft_config") else model.config
        self.visible = visible_tokens(tokenizer, max(len(tokenizer), int(config.vocab_size)))

    @property
    def name(self) -> str:
        if self.static:
            graphs = "+cuda-graphs" if self._on_cuda() and (self._static is None or self._static.use_graphs) else ""
            weights = str(self.static_dtype or self.model.dtype).removeprefix("torch.")
            if self._static is not None and self._static.lean.head32 is not None:
                weights += ", fp32 output layer copy"  # this torch cannot multiply 16 bits into fp32
            return f"static-gpt2{graphs} ({weights})"
        return "lean-gpt2" if self.lean else "generate"

    def _on_cuda(self) -> bool:
        return next(self.model.parameters()).device.type == "cuda"

    def static_engine(self) -> StaticGPT2:
        """Built once, with `static_dtype` weights (a copy; the model keeps its own)."""
        if self._static is None:
            model = self.model
            if self.static_dtype is not None and model.dtype != self.static_dtype:
                import copy

                model = copy.deepcopy(model).to(self.static_dtype).eval()
            self._static = StaticGPT2(LeanGPT2(model), use_graphs=self._on_cuda())
        return self._static

    def processors(self, start: int, decoding: Decoding):
        from transformers.generation.logits_process import LogitsProcessorList

        device = next(self.model.parameters()).device
        if self.visible.device != device:  # once per device, not once per step
            self.visible = self.visible.to(device)
        return LogitsProcessorList([NonEmptyReply(start, self.visible, self.eos_id), *decoding.logits_processors()])

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], decoding: Decoding, batch_size: int = 64, progress=None):
        """New token ids for each prompt (order kept), `</s>` included when the reply stopped."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        device = next(self.model.parameters()).device
        # Longest first, so each batch holds prompts of similar length (little padding).
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[list[int]] = [[] for _ in prompts]
        generator = _generator(decoding, device)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = [prompts[i] for i in chunk]
            if self.lean:
                for rows, tokens in self._lean_steps(batch, decoding, generator):
                    for row, token in zip(rows, tokens):
                        results[chunk[row]].append(token)
            else:
                for i, new in zip(chunk, self._hf_generate(batch, decoding)):
                    results[i] = new
            if progress is not None:
                progress(len(chunk))
        return results

    def stream(self, prompt: list[int], decoding: Decoding):
        """Yield the new token ids of one reply as they are generated (`</s>` not included)."""
        if not self.lean:
            yield from self._stream_hf(prompt, decoding)
            return
        device = next(self.model.parameters()).device
        steps = self._lean_steps([prompt], decoding, _generator(decoding, device))
        try:
            while True:
                # Inference mode for each step only, never across a yield: it is per thread, and a
                # caller may run other streams (or its own tensor work) between our tokens.
                with torch.inference_mode():
                    step = next(steps, None)
                if step is None or step[1][0] == self.eos_id:
                    return
                yield step[1][0]
        finally:
            steps.close()  # gives back a static slot when the caller stops early

    def _lean_steps(self, batch, decoding, generator):
        processors = self.processors(max(len(p) for p in batch), decoding)
        if not self.static:
            return LeanGPT2(self.model).steps(batch, decoding, self.pad_id, self.eos_id, generator, processors)
        return self._static_steps(batch, decoding, generator, processors)

    def _static_steps(self, batch, decoding, generator, processors):
        steps = self.static_engine().steps(batch, decoding, self.pad_id, self.eos_id, generator, processors)
        try:
            first = next(steps)  # the prefill: where an fp16 overflow shows, before any token is given out
        except HalfOverflow:
            import sys

            wide = torch.bfloat16 if self._on_cuda() and torch.cuda.is_bf16_supported() else None
            print(f"warning: this model overflows fp16; decoding in {'bf16' if wide else 'its own precision'} "
                  "from now on", file=sys.stderr)
            self.static_dtype, self._static = wide, None
            steps = self.static_engine().steps(batch, decoding, self.pad_id, self.eos_id, generator, processors)
            first = next(steps)
        yield first
        yield from steps

    def _hf_generate(self, batch, decoding: Decoding, streamer=None):
        model = self.model
        device = next(model.parameters()).device
        width = max(len(p) for p in batch)
        input_ids, mask = left_pad(batch, self.pad_id, width)
        state = None
        if decoding.do_sample and decoding.seed is not None:  # generate() samples from the global RNG
            state = torch.random.get_rng_state()
            torch.manual_seed(decoding.seed)
        try:
            # Our processors in our order (the lean loop's); generate()'s own ones switched off (the
            # sampling ones only when sampling: greedy generate() warns about them).
            own = dict(temperature=1.0, top_k=0, top_p=1.0) if decoding.do_sample else {}
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.long().to(device), eos_token_id=self.eos_id,
                pad_token_id=self.pad_id, streamer=streamer, max_new_tokens=decoding.max_new_tokens,
                do_sample=decoding.do_sample, repetition_penalty=1.0, no_repeat_ngram_size=0,
                logits_processor=self.processors(width, decoding), **own)
        finally:
            if state is not None:
                torch.random.set_rng_state(state)
        new = []
        for row in out[:, width:].tolist():
            new.append(row[: row.index(self.eos_id) + 1] if self.eos_id in row else row)
        return new

    def _stream_hf(self, prompt, decoding):
        """Token ids from generate() on a worker thread, as its streamer receives them."""
        from transformers.generation.streamers import BaseStreamer

        tokens: queue.Queue = queue.Queue()

        class Collect(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:  # generate() hands over the prompt first
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    tokens.put(token)

            def end(self):
                tokens.put(None)

        failure = []

        def work():
            try:
                with torch.inference_mode():
                    self._hf_generate([prompt], decoding, streamer=Collect())
            except BaseException as err:  # surfaced in the caller's thread
                failure.append(err)
                tokens.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while (token := tokens.get()) is not None and token != self.eos_id:
            yield token
        thread.join()
        if failure:
            raise failure[0]


# --- streaming ------------------------------------------------------------------------------

class TextPieces:
    """Turns a growing list of token ids into text pieces that join to the final reply exactly."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        # Hold back trailing whitespace (the reply is stripped) and half-decoded characters.
        stable = text.rstrip()
        if stable.endswith("\ufffd") or not stable.startswith(self.sent):
            return ""
        piece, self.sent = stable[len(self.sent):], stable
        return piece

    def finish(self) -> str:
        final = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        piece = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent = final
        return piece
