"""The `static` engine: the GPT-2 step loop (gpt2.py) with every decode step of one fixed shape,
so that on CUDA each step is captured once as a CUDA graph and replayed; the default for GPT-2
on a GPU. Greedy batches are continuous: a row whose reply ends takes the next waiting prompt, so
a big batch stays full instead of waiting for its longest reply. On a CPU it runs eagerly, where
its replies are tested equal to the lean loop's."""
from __future__ import annotations

import copy
import sys
import threading

import torch
import torch.nn.functional as F

from .base import BatchedEngine, model_device, seeded_generator
from .gpt2 import LeanGPT2, collect, decode, prefill_inputs, stream_tokens
from .lean import gpt2_refusal

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
    is captured once as a CUDA graph and replayed (one launch). Rows that finish take waiting
    prompts, and once none wait, the rows still going move to a smaller bucket. The same code runs
    eagerly on a CPU, where its replies are tested equal to the lean loop's."""

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

    def steps(self, prompts, decoding, pad_id: int, eos_id: int, generator, processors, slots: int | None = None,
              progress=None):
        """decode()'s steps for these prompts, in slots of this engine (given back at the end,
        also when the caller stops early: a stream closed, a stop string met).

        With `slots`, at most that many rows (rounded up to a bucket) run at once, and a row that
        ends takes the next waiting prompt (continuous batching), so the batch stays full while
        prompts wait; `progress(n)` is told as replies end. Sampling draws its noise per step and
        prompt, so there every prompt starts at once, as in the lean loop."""
        together = len(prompts) if slots is None or decoding.do_sample else min(len(prompts), slots)
        # Each row's prompt and reply fit in the ring with a column to spare; few lengths, few graphs.
        length = -(-(max(len(p) for p in prompts) + decoding.max_new_tokens + 1) // 32) * 32
        slot = self._slot(bucket_for(together), length)
        state = None
        try:
            state = StaticState(self, slot, prompts, pad_id, length, progress)
            yield from decode(state, state.first_logits, state.width, decoding, processors, generator, eos_id,
                              pad_id, len(prompts))
            state.report(0)
        finally:
            self._release(slot if state is None else state.slot)


class StaticState:
    """A batch in a slot: bucket-sized tensors, each row a ring of `length` columns.

    Every row writes the same column at each step (the step's shapes never change), modulo the
    ring, so a prompt can start in any row at any step: its ids go in the columns that end at the
    current one, the last prompt token runs through the next step (its K/V and the logits of the
    reply's first token), and its reply follows. The processors read each row in time order (the
    ring turned to end at the newest column; the columns a row has not written hold padding, as a
    left-padded prompt does). Once no prompt is waiting, a smaller bucket takes the rows still going."""

    def __init__(self, static: StaticGPT2, slot, prompts, pad_id: int, length: int, progress=None):
        lean = static.lean
        bucket, device = len(slot["tokens"]), lean.wte.device
        self.static, self.slot, self.length, self.pad_id = static, slot, length, pad_id
        self.prompts, self.pending, self.progress, self.reported = prompts, len(prompts), progress, 0
        self.max_pos = lean.wpe.shape[0] - 1  # idle rows keep stepping: their positions stay in range
        self.seq = torch.full((bucket, length), pad_id, dtype=torch.long, device=device)
        self.rows = torch.full((bucket,), -1, dtype=torch.long, device=device)
        self.done = torch.ones(bucket, dtype=torch.bool, device=device)
        self.age = torch.zeros(bucket, dtype=torch.long, device=device)
        self.started_at = 0
        slot["valid"].zero_()
        slot["pos"].zero_()
        first = min(bucket, len(prompts))
        self.cur = max(len(p) for p in prompts[:first]) - 1  # the first prompts end here
        self._start(torch.arange(first, device=device))
        self.first_logits = self.advance(self.cur)
        if lean.head.dtype == torch.float16 and not bool(torch.isfinite(self.first_logits).all()):  # one check a batch
            raise HalfOverflow("fp16 activations overflowed")
        self.width = self.cur + 1

    def _start(self, free) -> int:
        """Start waiting prompts in the rows `free` (a device tensor), ending at column `cur`."""
        count = min(len(free), self.pending)
        if not count:
            return 0
        first = len(self.prompts) - self.pending
        prompts, self.pending = self.prompts[first : first + count], self.pending - count
        rows, lean, slot, device = free[:count], self.static.lean, self.slot, self.seq.device
        heads = [p[:-1] for p in prompts]  # the last prompt token runs through the next step
        width = max(len(h) for h in heads)
        seq = torch.full((count, self.length), self.pad_id, dtype=torch.long, device=device)
        valid = torch.zeros((count, self.length), dtype=torch.bool, device=device)
        if width:
            cols = (self.cur - width + torch.arange(width, device=device)) % self.length
            ids, keys, pos, mask, _ = prefill_inputs(heads, self.pad_id, width, device)
            E, H = lean.wte.shape[1], lean.n_head
            fresh = [tuple(torch.empty((count, H, width, E // H), device=device, dtype=lean.wte.dtype)
                           for _ in range(2)) for _ in lean.blocks]
            lean.forward(ids, pos, fresh, 0, mask)
            for (k, v), (k_new, v_new) in zip(slot["cache"], fresh):
                k[rows[:, None], :, cols[None, :]] = k_new.transpose(1, 2)
                v[rows[:, None], :, cols[None, :]] = v_new.transpose(1, 2)
            seq[:, cols] = ids
            valid[:, cols] = keys[:, :width]
        seq[:, self.cur % self.length] = torch.tensor([p[-1] for p in prompts], device=device)
        self.seq[rows] = seq
        slot["valid"][rows, 0, 0] = valid
        slot["pos"][rows, 0] = torch.tensor([len(h) for h in heads], device=device)
        self.rows[rows] = torch.arange(first, first + count, device=device)
        self.done[rows] = False
        self.age[rows] = 0
        return count

    def report(self, going: int):
        """Tell `progress` how many more replies have ended, `going` rows being still at work."""
        ended = len(self.prompts) - self.pending - going
        if self.progress is not None and ended > self.reported:
            self.progress(ended - self.reported)
        self.reported = max(self.reported, ended)

    def refill(self, step: int) -> int:
        free = self.done.nonzero().flatten()
        going = len(self.rows) - len(free)
        self.report(going)
        started = self._start(free)
        if started:
            self.started_at = step
        return going + started

    def history(self, cur: int):
        return torch.roll(self.seq, -(cur % self.length), 1)  # ends at column cur - 1

    def append(self, cur: int, token):
        self.cur = cur
        self.seq[:, cur % self.length] = token

    def advance(self, cur: int):
        slot, col = self.slot, cur % self.length
        slot["tokens"].copy_(self.seq[:, col : col + 1])
        slot["cur"].fill_(col)
        logits = self.static._run(slot)
        slot["pos"].add_(1).clamp_(max=self.max_pos)
        return logits

    def shrink(self, going: int):
        smaller = bucket_for(going)
        if self.pending or smaller >= len(self.rows):
            return
        live = (~self.done).nonzero().flatten()
        pick = torch.cat([live, live[:1].expand(smaller - going)])  # idle rows copy a live one
        target = self.static._slot(smaller, self.length)
        for (k, v), (k2, v2) in zip(self.slot["cache"], target["cache"]):
            k2.copy_(k[pick])
            v2.copy_(v[pick])
        for name in ("pos", "valid"):
            target[name].copy_(self.slot[name][pick])
        self.seq, self.age = self.seq[pick], self.age[pick]
        self.rows = torch.cat([self.rows[live], self.rows.new_full((smaller - going,), -1)])
        self.done = self.rows < 0
        self.static._release(self.slot)
        self.slot = target


class StaticEngine(BatchedEngine):
    @classmethod
    def refuses(cls, model, source) -> str | None:
        return gpt2_refusal(model)

    @classmethod
    def picks(cls, model, source) -> bool:
        return model_device(model).type == "cuda"

    def __init__(self, model, tokenizer, source=None):
        super().__init__(model, tokenizer, source)
        self._static: StaticGPT2 | None = None
        # The loop's weights: fp16 on a GPU (with fp32 logits 99.7-99.9% of greedy replies equal fp32's,
        # against 97.4-98.5% for bf16: bench/RESULTS.md, "16-bit decoding"), else the model's own.
        self.static_dtype = torch.float16 if self._on_cuda() else None

    def _on_cuda(self) -> bool:
        return model_device(self.model).type == "cuda"

    @property
    def name(self) -> str:
        graphs = "+cuda-graphs" if self._on_cuda() and (self._static is None or self._static.use_graphs) else ""
        weights = str(self.static_dtype or self.model.dtype).removeprefix("torch.")
        if self._static is not None and self._static.lean.head32 is not None:
            weights += ", fp32 output layer copy"  # this torch cannot multiply 16 bits into fp32
        return f"static-gpt2{graphs} ({weights})"

    def static_engine(self) -> StaticGPT2:
        """Built once, with `static_dtype` weights (a copy; the model keeps its own)."""
        if self._static is None:
            model = self.model
            if self.static_dtype is not None and model.dtype != self.static_dtype:
                model = copy.deepcopy(model).to(self.static_dtype).eval()
            self._static = StaticGPT2(LeanGPT2(model), use_graphs=self._on_cuda())
        return self._static

    def steps(self, prompts, decoding, generator, slots=None, progress=None):
        processors = self.processors(decoding)
        options = dict(slots=slots, progress=progress)
        steps = self.static_engine().steps(prompts, decoding, self.pad_id, self.eos_id, generator, processors,
                                           **options)
        try:
            try:
                first = next(steps)  # the prefill: where an fp16 overflow shows, before any token is given out
            except HalfOverflow:
                wide = torch.bfloat16 if self._on_cuda() and torch.cuda.is_bf16_supported() else None
                print(f"warning: this model overflows fp16; decoding in {'bf16' if wide else 'its own precision'} "
                      "from now on", file=sys.stderr)
                self.static_dtype, self._static = wide, None
                steps = self.static_engine().steps(prompts, decoding, self.pad_id, self.eos_id, generator, processors,
                                                   **options)
                first = next(steps)
            yield first
            yield from steps
        finally:
            steps.close()

    def _answer(self, prompts, decoding, batch_size, generator, progress):
        """Greedy decoding runs every prompt through one continuous batch of `batch_size` rows: a row
        that ends takes the next prompt. Sampling answers batch by batch, as the lean loop does."""
        if decoding.do_sample:
            return super()._answer(prompts, decoding, batch_size, generator, progress)
        return collect(self.steps(prompts, decoding, generator, slots=batch_size, progress=progress), len(prompts),
                       decoding, self.pad_id, self.eos_id, model_device(self.model))

    def _batch(self, prompts, decoding, generator):
        return collect(self.steps(prompts, decoding, generator), len(prompts), decoding, self.pad_id, self.eos_id,
                       model_device(self.model))

    def stream(self, prompt, decoding):
        steps = self.steps([prompt], decoding, seeded_generator(decoding, model_device(self.model)))
        yield from stream_tokens(steps, self.eos_id)
