"""Replies: decoding settings with safe defaults, batched KV-cached generation, streaming."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from . import framing


@dataclass
class Decoding:
    """How replies are decoded. Greedy by default, like the original; always length-capped."""
    max_new_tokens: int = framing.DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def __post_init__(self):
        if not 1 <= int(self.max_new_tokens) <= 1024:
            raise ValueError(f"max_new_tokens must be between 1 and 1024; got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0; got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0; got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0; got {self.no_repeat_ngram_size}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Decoding":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown decoding option(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def generate_kwargs(self) -> dict:
        out = asdict(self)
        out.pop("seed")
        if not self.do_sample:
            for key in ("temperature", "top_k", "top_p"):
                out.pop(key)
        return out


def clean_question(question) -> str:
    if not isinstance(question, str):
        raise ValueError(f"question must be text; got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise ValueError("question is empty: type something to ask (빈 질문에는 답할 수 없어요)")
    return text


def _context(model) -> int:
    return int(getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 1024))


def _prompts(model, tokenizer, questions, sents, decoding: Decoding):
    if isinstance(sents, (str, int)):
        sents = [sents] * len(questions)
    sents = list(sents)
    if len(sents) != len(questions):
        raise ValueError(f"got {len(questions)} questions but {len(sents)} sentiments")
    sents = [framing.normalize_sentiment(s) for s in sents]
    room = _context(model) - decoding.max_new_tokens
    return [framing.prompt_ids(tokenizer, clean_question(q), s, max_len=room) for q, s in zip(questions, sents)]


def _reply_text(tokenizer, new_ids: list[int], eos_id: int) -> str:
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[list[int]], decoding: Decoding, batch_size: int = 64):
    """New token ids for each prompt (order kept), `</s>` included when the reply stopped."""
    ids = framing.control_ids(tokenizer)
    pad_id, eos_id = ids[framing.PAD], ids[framing.EOS]
    device = next(model.parameters()).device
    # Longest first, so each batch holds prompts of similar length (little padding).
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    generator_state = None
    if decoding.seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(decoding.seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(decoding.seed)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                eos_token_id=eos_id, pad_token_id=pad_id, **decoding.generate_kwargs(),
            )
            for row, i in enumerate(chunk):
                new = out[row, width:].tolist()
                results[i] = new[: new.index(eos_id) + 1] if eos_id in new else new
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    return results


def chat_batch(model, tokenizer, questions, sents="0", batch_size: int = 64, **decoding) -> list[str]:
    dec = Decoding.from_kwargs(**decoding)
    questions = list(questions)
    if not questions:
        return []
    prompts = _prompts(model, tokenizer, questions, sents, dec)
    eos_id = framing.control_ids(tokenizer)[framing.EOS]
    new = generate_ids(model, tokenizer, prompts, dec, batch_size)
    return [_reply_text(tokenizer, ids, eos_id) for ids in new]


def chat(model, tokenizer, question, sent="0", **decoding) -> str:
    return chat_batch(model, tokenizer, [question], [sent], batch_size=1, **decoding)[0]
