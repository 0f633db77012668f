"""Replies: decoding settings with safe defaults, batched KV-cached generation, streaming.

Two engines produce the same tokens:
- `LeanGPT2`, for GPT-2 models (KoGPT2 and the scratch presets): a KV-cached decoding loop that
  runs the model's own weights through a dozen plain tensor ops a layer. For a small model and
  ~12-token replies, per-call framework overhead costs more than the arithmetic, so this loop
  is what makes one reply fast on a CPU; it also drops finished rows from a batch.
- Hugging Face `generate()` for every other architecture.
Both apply the same Hugging Face logits processors, so decoding options mean the same thing.
"""
from __future__ import annotations

import functools
import queue
import threading
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from . import framing


@dataclass(frozen=True)
class Decoding:
    """How replies are decoded: greedy like the original, always length-capped, and no token
    3-gram twice in a reply.

    Defaults chosen by measurement (bench/RESULTS.md, "Decoding defaults"): on the validation
    split of the full corpus, plain greedy left 19.5% of replies repeating a 3-gram three times;
    with no_repeat_ngram_size=3, none. no_repeat_ngram_size=0 is the original's plain greedy.
    """
    max_new_tokens: int = framing.DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 3
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (1 <= int(self.max_new_tokens) <= 1024, "max_new_tokens must be between 1 and 1024"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {asdict(self)}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Decoding":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def logits_processors(self):
        """The Hugging Face processors generate() would apply, in its order."""
        from transformers.generation import logits_process as lp

        procs = lp.LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(lp.RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram_size > 0:
            procs.append(lp.NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size))
        if self.do_sample:
            if self.temperature != 1.0:
                procs.append(lp.TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                procs.append(lp.TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(lp.TopPLogitsWarper(self.top_p))
        return procs

    def generate_kwargs(self) -> dict:
        out = asdict(self)
        out.pop("seed")
        if not self.do_sample:
            for key in ("temperature", "top_k", "top_p"):
                out.pop(key)
        return out


# --- inputs ---------------------------------------------------------------------------------

def clean_question(question) -> str:
    if not isinstance(question, str):
        raise ValueError(f"question must be text; got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise ValueError("question is empty: type something to ask (빈 질문에는 답할 수 없어요)")
    return text


def context_size(model) -> int:
    return int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))


def build_prompts(model, tokenizer, questions, sents, decoding: Decoding) -> list[list[int]]:
    """Framed prompt ids; a question too long for the context loses its start."""
    if isinstance(sents, (str, int)):
        sents = [sents] * len(questions)
    sents = list(sents)
    if len(sents) != len(questions):
        raise ValueError(f"got {len(questions)} questions but {len(sents)} sentiments")
    sents = [framing.normalize_sentiment(s) for s in sents]
    room = context_size(model) - decoding.max_new_tokens
    return [framing.prompt_ids(tokenizer, clean_question(q), s, max_len=room) for q, s in zip(questions, sents)]


def left_pad(prompts: list[list[int]], pad_id: int, total: int):
    """(ids, mask) of shape [len(prompts), total]: every prompt ends at the longest one's length,
    so generation continues all rows at the same column; the columns after it are free."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), total), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), total), dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) : width] = torch.tensor(p)
        mask[row, width - len(p) : width] = True
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

class LeanGPT2:
    """KV-cached decoding for Hugging Face GPT-2 models, from their live weights (eval only)."""

    @staticmethod
    def supports(model) -> bool:
        c = model.config
        return (c.model_type == "gpt2" and not getattr(c, "scale_attn_by_inverse_layer_idx", False)
                and not getattr(c, "reorder_and_upcast_attn", False) and not getattr(c, "add_cross_attention", False))

    def __init__(self, model):
        from transformers.activations import ACT2FN

        t = model.transformer
        self.wte, self.wpe, self.ln_f = t.wte.weight, t.wpe.weight, t.ln_f
        self.head = model.lm_head.weight
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
        x = F.embedding(ids, self.wte) + F.embedding(pos, self.wpe)
        B, S, E = x.shape
        H = self.n_head
        end = start + S
        causal = mask is None and S > 1
        for (ln1, c_attn, c_proj, ln2, c_fc, m_proj), (k_cache, v_cache) in zip(self.blocks, cache):
            h = F.layer_norm(x, (E,), ln1.weight, ln1.bias, ln1.eps)
            q, k, v = torch.addmm(c_attn.bias, h.view(-1, E), c_attn.weight).view(B, S, 3, H, E // H).unbind(2)
            k_cache[:, :, start:end] = k.transpose(1, 2)
            v_cache[:, :, start:end] = v.transpose(1, 2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache[:, :, :end], v_cache[:, :, :end],
                                               attn_mask=mask, is_causal=causal)
            x = x + torch.addmm(c_proj.bias, a.transpose(1, 2).reshape(B * S, E), c_proj.weight).view(B, S, E)
            h = F.layer_norm(x, (E,), ln2.weight, ln2.bias, ln2.eps).view(-1, E)
            x = x + torch.addmm(m_proj.bias, self.act(torch.addmm(c_fc.bias, h, c_fc.weight)), m_proj.weight).view(B, S, E)
        last = F.layer_norm(x[:, -1], (E,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return last @ self.head.t()

    def steps(self, prompts, decoding: Decoding, pad_id: int, eos_id: int, generator=None):
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
        processors = decoding.logits_processors()
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


# --- batched generation ---------------------------------------------------------------------

def _generator(decoding: Decoding, device):
    if not decoding.do_sample or decoding.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(decoding.seed)


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], decoding: Decoding, batch_size: int = 64,
                 engine: str = "auto", progress=None):
    """New token ids for each prompt (order kept), `</s>` included when the reply stopped."""
    ids = framing.control_ids(tokenizer)
    pad_id, eos_id = ids[framing.PAD], ids[framing.EOS]
    device = next(model.parameters()).device
    if engine not in ("auto", "lean", "hf"):
        raise ValueError(f"engine must be auto, lean or hf; got {engine!r}")
    if engine == "lean" and not LeanGPT2.supports(model):
        raise ValueError(f"the lean engine runs GPT-2 models only; this is {model.config.model_type!r}")
    lean = engine == "lean" or (engine == "auto" and LeanGPT2.supports(model))
    # Longest first, so each batch holds prompts of similar length (little padding).
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    generator = _generator(decoding, device)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = [prompts[i] for i in chunk]
        if lean:
            for rows, tokens in LeanGPT2(model).steps(batch, decoding, pad_id, eos_id, generator):
                for row, token in zip(rows, tokens):
                    results[chunk[row]].append(token)
        else:
            for i, new in zip(chunk, _hf_generate(model, batch, decoding, pad_id, eos_id)):
                results[i] = new
        if progress is not None:
            progress(len(chunk))
    return results


def _hf_generate(model, batch, decoding: Decoding, pad_id: int, eos_id: int, streamer=None):
    device = next(model.parameters()).device
    width = max(len(p) for p in batch)
    input_ids, mask = left_pad(batch, pad_id, width)
    state = None
    if decoding.do_sample and decoding.seed is not None:  # generate() samples from the global RNG
        state = torch.random.get_rng_state()
        torch.manual_seed(decoding.seed)
    try:
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.long().to(device), eos_token_id=eos_id,
                             pad_token_id=pad_id, streamer=streamer, **decoding.generate_kwargs())
    finally:
        if state is not None:
            torch.random.set_rng_state(state)
    new = []
    for row in out[:, width:].tolist():
        new.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return new


def chat_batch(model, tokenizer, questions, sents="0", batch_size: int = 64, **decoding) -> list[str]:
    dec = Decoding.from_kwargs(**decoding)
    questions = list(questions)
    if not questions:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    prompts = build_prompts(model, tokenizer, questions, sents, dec)
    eos_id = framing.control_ids(tokenizer)[framing.EOS]
    return [reply_text(tokenizer, ids, eos_id) for ids in generate_ids(model, tokenizer, prompts, dec, batch_size)]


def chat(model, tokenizer, question, sent="0", **decoding) -> str:
    return chat_batch(model, tokenizer, [question], [sent], batch_size=1, **decoding)[0]


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


def stream_tokens(model, tokenizer, prompt: list[int], decoding: Decoding):
    """Yield the new token ids of one reply as they are generated (`</s>` not included)."""
    ids = framing.control_ids(tokenizer)
    pad_id, eos_id = ids[framing.PAD], ids[framing.EOS]
    if not LeanGPT2.supports(model):
        yield from _stream_hf(model, prompt, decoding, pad_id, eos_id)
        return
    device = next(model.parameters()).device
    with torch.inference_mode():
        for _, tokens in LeanGPT2(model).steps([prompt], decoding, pad_id, eos_id, _generator(decoding, device)):
            if tokens[0] == eos_id:
                return
            yield tokens[0]


def stream_chat(model, tokenizer, question, sent="0", **decoding):
    """Yield the reply in pieces as tokens are generated; "".join(pieces) == chat(...)."""
    dec = Decoding.from_kwargs(**decoding)
    prompt = build_prompts(model, tokenizer, [question], [sent], dec)[0]
    pieces = TextPieces(tokenizer)
    for token in stream_tokens(model, tokenizer, prompt, dec):
        piece = pieces.add(token)
        if piece:
            yield piece
    tail = pieces.finish()
    if tail:
        yield tail


def _stream_hf(model, prompt, dec, pad_id, eos_id):
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
                _hf_generate(model, [prompt], dec, pad_id, eos_id, streamer=Collect())
        except BaseException as err:  # surfaced in the caller's thread
            failure.append(err)
            tokens.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (token := tokens.get()) is not None and token != eos_id:
        yield token
    thread.join()
    if failure:
        raise failure[0]
