"""Token framing, the one place that knows it.

    <usr> question <unused1> sentiment <sys> answer </s>

Ids are always assembled from ids: user text is encoded with the tokenizer's special-token
matching switched off, so typing "<sys>" or "</s>" can never produce a control token.
"""
from __future__ import annotations

import threading

USR = "<usr>"        # starts the question
SENT = "<unused1>"   # separates the question from its sentiment digit
SYS = "<sys>"        # starts the answer
EOS = "</s>"         # ends the answer (also KoGPT2's bos)
PAD = "<pad>"
UNK = "<unk>"
MASK = "<unused0>"   # the original's mask token; unused by the framing itself

CONTROL_TOKENS = (EOS, USR, PAD, SYS, UNK, MASK, SENT)

SENTIMENTS = ("0", "1", "2")
SENTIMENT_NAMES = {"neutral": "0", "negative": "1", "positive": "2"}
SENTIMENT_HELP = "0|1|2 또는 neutral|negative|positive (0 일상, 1 이별/부정, 2 사랑/긍정)"

IGNORE_INDEX = -100  # Hugging Face's "no loss here"

# Reply cap in new tokens: the corpus's longest answer (76 characters) is well under this with
# any of our tokenizers; a reply that reaches it has failed to stop.
DEFAULT_MAX_NEW_TOKENS = 64

# Smallest room a pair needs: <usr> q <unused1> s <sys> a </s> with one token each for q and a.
_FRAME_TOKENS = 4  # <usr>, <unused1>, <sys>, </s>

_encode_lock = threading.Lock()

# The framing as a Hugging Face chat template, for plain transformers and serving engines.
# Single turn, like training: the last user message is the question. The sentiment comes from
# the template variable `sentiment` (apply_chat_template(..., sentiment=1); vLLM's
# chat_template_kwargs), default 0.
CHAT_TEMPLATE = (
    "{%- set s = (sentiment if sentiment is defined else '0') | string | trim | lower -%}"
    "{%- set s = {'neutral': '0', 'negative': '1', 'positive': '2'}.get(s, s) -%}"
    "{%- set ns = namespace(question='', answer=none) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.question = message['content'] -%}{%- set ns.answer = none -%}"
    "{%- elif message['role'] == 'assistant' -%}{%- set ns.answer = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "<usr>{{ ns.question | trim }}<unused1>{{ s }}<sys>"
    "{%- if ns.answer is not none and not add_generation_prompt -%}{{ ns.answer | trim }}</s>{%- endif -%}"
)


def normalize_sentiment(value) -> str:
    """'0'|'1'|'2', 0|1|2 or neutral|negative|positive -> '0'|'1'|'2'."""
    if isinstance(value, bool):  # bool is an int; True is no sentiment
        raise ValueError(f"sentiment must be {SENTIMENT_HELP}; got {value!r}")
    if isinstance(value, int) and str(value) in SENTIMENTS:
        return str(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in SENTIMENTS:
            return text
        if text in SENTIMENT_NAMES:
            return SENTIMENT_NAMES[text]
    raise ValueError(f"sentiment must be {SENTIMENT_HELP}; got {value!r}")


def control_ids(tokenizer) -> dict[str, int]:
    """Ids of the framing's tokens; a clear error when the tokenizer lacks one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("a fast (tokenizers-backed) tokenizer is required")
    ids = {t: backend.token_to_id(t) for t in (USR, SENT, SYS, EOS, PAD)}  # get_vocab() copies it all
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(
            f"tokenizer lacks the framing tokens {missing}; load it with "
            "kogpt2_chatbot.backbone.load_backbone(), which adds them"
        )
    return ids


def text_ids_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode plain text: special-token strings inside it stay ordinary characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("a fast (tokenizers-backed) tokenizer is required")
    with _encode_lock:  # the switch is tokenizer-wide; keep concurrent callers apart
        before = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            encodings = backend.encode_batch(list(texts), add_special_tokens=False)
        finally:
            backend.encode_special_tokens = before
    return [e.ids for e in encodings]


def text_ids(tokenizer, text: str) -> list[int]:
    return text_ids_batch(tokenizer, [text])[0]


def _frame(ids: dict[str, int], q: list[int], s: list[int]) -> list[int]:
    return [ids[USR], *q, ids[SENT], *s, ids[SYS]]


def prompt_ids(tokenizer, question: str, sentiment, max_len: int | None = None) -> list[int]:
    """Ids of `<usr> question <unused1> sentiment <sys>`, the prompt a reply continues.

    With `max_len`, an over-long question loses tokens from its start (the end of a
    question usually carries what is asked), so the prompt fits in `max_len` ids.
    """
    ids = control_ids(tokenizer)
    q = text_ids(tokenizer, question.strip())
    s = text_ids(tokenizer, normalize_sentiment(sentiment))
    if max_len is not None:
        room = max_len - 3 - len(s)
        if room < 1:
            raise ValueError(f"max_len {max_len} leaves no room for the question")
        q = q[-room:]
    return _frame(ids, q, s)


def example_ids(tokenizer, question: str, sentiment, answer: str, max_len: int):
    """(input_ids, labels) of one training pair, at most `max_len` ids.

    Labels are IGNORE_INDEX on the prompt and the answer's ids plus `</s>` on the answer,
    so the loss covers exactly `answer </s>` and the model learns to stop. Over-long pairs
    lose question tokens first (from the start, keeping at least a quarter of `max_len`
    where the question has that many), then answer tokens from the end; `</s>` is never cut.
    """
    q, s, a = text_ids_batch(
        tokenizer, [question.strip(), normalize_sentiment(sentiment), answer.strip()]
    )
    return framed_example(control_ids(tokenizer), q, s, a, max_len)


def framed_example(ids: dict[str, int], q: list[int], s: list[int], a: list[int], max_len: int):
    """example_ids() from already-encoded parts (the dataset encodes whole columns at once)."""
    fixed = _FRAME_TOKENS + len(s)
    if max_len < fixed + 2:
        raise ValueError(f"max_len {max_len} is too small: the framing alone needs {fixed + 2}")
    over = fixed + len(q) + len(a) - max_len
    if over > 0:
        keep_q = max(len(q) - over, min(len(q), max_len // 4, max_len - fixed - 1))
        q = q[len(q) - keep_q:]
        a = a[: max_len - fixed - len(q)]
    prompt = _frame(ids, q, s)
    target = [*a, ids[EOS]]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target
