"""Token framing, the one place that knows it.

    <usr> q1 <unused1> s1 <sys> a1 </s> <usr> q2 <unused1> s2 <sys> a2 </s> ...

A conversation is the single-turn framing repeated, so one turn gives the original's ids.
Grounding's refine mode adds a reference answer to the last turn, before its `<sys>`:

    <usr> q <unused1> s <unused0> reference <sys> a </s>

`<unused0>` is the original's mask token, which its framing never used, so every tokenizer the
kit loads already has it as a special token; a frame without a reference is unchanged.

Ids are always assembled from ids: user text is encoded with the tokenizer's special-token
matching switched off, so typing "<sys>" or "</s>" can never produce a control token.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

from . import options
from .sentiment import SENTIMENTS, normalize_sentiment  # noqa: F401  (the digits a frame's sentiment slot holds)

USR = "<usr>"        # starts the question
SENT = "<unused1>"   # separates the question from its sentiment digit
SYS = "<sys>"        # starts the answer
EOS = "</s>"         # ends the answer (also KoGPT2's bos)
PAD = "<pad>"
UNK = "<unk>"
MASK = "<unused0>"   # the original's mask token
REF = MASK           # starts a reference answer (grounding's refine mode)

CONTROL_TOKENS = (EOS, USR, PAD, SYS, UNK, MASK, SENT)

IGNORE_INDEX = -100  # Hugging Face's "no loss here"

# Reply cap in new tokens: the corpus's longest answer (76 characters) is well under this with
# any of our tokenizers; a reply that reaches it has failed to stop.
DEFAULT_MAX_NEW_TOKENS = 64

# Tokens a training conversation holds (the original used 32); a checkpoint records its own, and
# prompts are cut to it. Checkpoints from before it was recorded were all trained with this.
DEFAULT_MAX_LEN = 64

# Smallest room a pair needs: <usr> q <unused1> s <sys> a </s> with one token each for q and a.
_FRAME_TOKENS = 4  # <usr>, <unused1>, <sys>, </s>

_encode_lock = threading.Lock()

# The framing as a Hugging Face chat template, for plain transformers, TRL and serving engines:
# the whole conversation, turn by turn, as training frames it. Each user message's sentiment is
# its `sentiment` key, else the template variable `sentiment` (apply_chat_template(...,
# sentiment=1); vLLM's chat_template_kwargs), else 0. System messages are not part of the
# framing and are skipped. Answers sit inside {% generation %}, so TRL's assistant_only_loss
# (return_assistant_tokens_mask) trains on exactly the tokens our loss covers.
CHAT_TEMPLATE = (
    "{%- set names = {'neutral': '0', 'negative': '1', 'positive': '2'} -%}"
    "{%- set default = (sentiment if sentiment is defined else '0') | string | trim | lower -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set s = (message['sentiment'] if message['sentiment'] is defined and message['sentiment'] is not none"
    " else default) | string | trim | lower -%}"
    "<usr>{{ message['content'] | trim }}<unused1>{{ names.get(s, s) }}<sys>"
    "{%- elif message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}</s>{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class Turn(NamedTuple):
    """One exchange of a conversation, the one form turns take everywhere (data, the API, serve,
    evaluate): the user's question, the answer, and the question's sentiment ('0'|'1'|'2'; None
    where a door has not resolved it yet). `(question, answer)` and `(question, answer,
    sentiment)` tuples, the forms people write a history in, read the same."""
    question: str
    answer: str
    sentiment: str | None = None


def check_history_turns(value) -> int:
    """How many earlier turns a prompt holds (a checkpoint's, a conversation's, --history): a
    whole number >= 0; 0 frames the question alone, as the original did."""
    return options.check_number("history_turns", value, int, low=0)


class Dialogue(NamedTuple):
    """Chat messages read as turns (messages_to_turns)."""
    turns: list[Turn]            # answered turns, oldest first; sentiments as given (None: not given)
    question: Turn | None        # a last user message still waiting for its answer (answer "")
    skipped: tuple[str, ...]     # roles of messages the framing has no place for: system, greeting


def messages_to_turns(messages, sentiment=None) -> Dialogue:
    """Hugging Face / OpenAI chat messages ({"role", "content", "sentiment"?}) -> turns.

    The one reading of messages, for training data (JSONL), the OpenAI route and evaluation.
    Content is a string or OpenAI's list of {"type": "text", "text": ...} parts. A user message's
    sentiment is its "sentiment" key, else `sentiment`, kept as given (the door resolves it).
    System messages and assistant greetings before the first user message are skipped; anything
    else out of order is a ValueError naming the message.
    """
    turns, question, skipped = [], None, []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(f"message {n} is not an object with role and content")
        role, content = message.get("role"), _message_text(message.get("content"))
        if role == "system" or (role == "assistant" and question is None and not turns):
            skipped.append("system" if role == "system" else "greeting")
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"message {n} has role {role!r}; use system, user or assistant")
        if content is None or not content.strip():
            raise ValueError(f"message {n} ({role}) is empty")
        if role == "user":
            if question is not None:
                raise ValueError(f"messages {n - 1} and {n} are both user messages; join them into one")
            given = message.get("sentiment")
            question = Turn(content.strip(), "", sentiment if given is None else given)
        else:
            if question is None:
                raise ValueError(f"messages {n - 1} and {n} are both assistant messages; join them into one")
            turns.append(question._replace(answer=content.strip()))
            question = None
    return Dialogue(turns, question, tuple(skipped))


def _message_text(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text", ""), str))
    return None


def control_ids(tokenizer) -> dict[str, int]:
    """Ids of the framing's tokens; a clear error when the tokenizer lacks one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("a fast (tokenizers-backed) tokenizer is required")
    ids = {t: backend.token_to_id(t) for t in (USR, SENT, SYS, EOS, PAD, REF)}  # get_vocab() copies it all
    missing = [t for t, i in ids.items() if i is None and t != REF]
    if missing:
        raise ValueError(
            f"tokenizer lacks the framing tokens {missing}; load it with "
            "kogpt2_chatbot.backbone.load_backbone(), which adds them"
        )
    if ids[REF] is None:  # only a reference needs it (framed with one: a KeyError there)
        del ids[REF]
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


def _frame(ids: dict[str, int], q: list[int], s: list[int], reference: list[int] | None = None) -> list[int]:
    slot = [] if reference is None else [ids[REF], *reference]
    return [ids[USR], *q, ids[SENT], *s, *slot, ids[SYS]]


def _turn(ids: dict[str, int], q, s, a) -> list[int]:
    return [*_frame(ids, q, s), *a, ids[EOS]]


def _encode_turns(tokenizer, turns) -> list[tuple[list[int], list[int], list[int]]]:
    """[Turn] -> [(question ids, sentiment ids, answer ids)], in one encode call."""
    texts = []
    for question, answer, sentiment in turns:
        texts += [question.strip(), normalize_sentiment(sentiment), answer.strip()]
    flat = text_ids_batch(tokenizer, texts) if texts else []
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]


def prompt_ids(tokenizer, question: str, sentiment, max_len: int | None = None, history=()) -> list[int]:
    """Ids of `[history turns] <usr> question <unused1> sentiment <sys>`, what a reply continues.

    `history`: earlier turns (Turn: question, answer, sentiment), oldest first. With `max_len`,
    an over-long prompt loses whole oldest turns first, then the start of the question (the
    end of a question usually carries what is asked), so it fits in `max_len` ids.
    """
    return prompts_ids(tokenizer, [(question, sentiment, history)], max_len)[0]


def prompts_ids(tokenizer, items, max_len: int | None = None, references=None) -> list[list[int]]:
    """prompt_ids() of many (question, sentiment, history) items, with one encode call for all
    their texts (the tokenizer's batch encoder runs in parallel; one call per prompt costs more
    than the encoding itself). `references`: a reference answer (or None) for each item, framed
    into its question's turn (grounding's refine mode)."""
    items = [(question, sentiment, list(history or ())) for question, sentiment, history in items]
    references = [None] * len(items) if references is None else list(references)
    encoded = _encode_turns(tokenizer, [t for (q, s, h), r in zip(items, references)
                                        for t in [Turn(q, r or "", s), *h]])
    ids, out, at = control_ids(tokenizer), [], 0
    for (_, _, history), reference in zip(items, references):
        (q, s, r), *past = encoded[at : at + 1 + len(history)]
        at += 1 + len(history)
        out.append(framed_prompt(ids, past, q, s, max_len, r if reference else None))
    return out


def framed_prompt(ids: dict[str, int], history, q: list[int], s: list[int], max_len: int | None = None,
                  reference: list[int] | None = None) -> list[int]:
    """prompt_ids() from already-encoded parts; `history` is [(q_ids, s_ids, a_ids)]. Too long, a
    prompt loses its oldest turns, then the reference's end (down to half the room), then the
    question's start."""
    turns = [_turn(ids, *t) for t in history]
    if max_len is not None:
        room = max_len - 3 - len(s)
        if reference is not None:
            reference = reference[: max(0, min(len(reference), room // 2, room - 1 - len(q)))]
            room -= 1 + len(reference)
        if room < 1:
            raise ValueError(f"max_len {max_len} leaves no room for the question")
        while turns and sum(map(len, turns)) + len(q) > room:
            turns.pop(0)  # the oldest turn goes first
        q = q[-room:]
    return [*(i for t in turns for i in t), *_frame(ids, q, s, reference)]


def example_ids(tokenizer, question: str, sentiment, answer: str, max_len: int):
    """(input_ids, labels) of one training pair, at most `max_len` ids.

    Labels are IGNORE_INDEX on the prompt and the answer's ids plus `</s>` on the answer,
    so the loss covers exactly `answer </s>` and the model learns to stop. Over-long pairs
    lose question tokens first (from the start, keeping at least a quarter of `max_len`
    where the question has that many), then answer tokens from the end; `</s>` is never cut.
    """
    return conversation_ids(tokenizer, [Turn(question, answer, sentiment)], max_len)


def conversation_ids(tokenizer, turns, max_len: int):
    """(input_ids, labels) of a conversation [Turn(question, answer, sentiment), ...], oldest first.

    The single-turn framing repeated; the loss covers every answer and its `</s>`. An
    over-long conversation loses whole oldest turns first, then is cut like one pair.
    """
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    return framed_conversation(control_ids(tokenizer), _encode_turns(tokenizer, turns), max_len)


def framed_conversation(ids: dict[str, int], turns, max_len: int, reference: list[int] | None = None):
    """conversation_ids() from already-encoded turns [(q_ids, s_ids, a_ids)]; `reference`: the
    ids of a reference answer for the last turn (refine training)."""
    *history, last = turns
    blocks = [_turn(ids, *t) for t in history]
    last_len = _FRAME_TOKENS + sum(map(len, last)) + (0 if reference is None else 1 + len(reference))
    while blocks and sum(map(len, blocks)) + last_len > max_len:
        blocks.pop(0)
    input_ids, labels = [], []
    for block in blocks:  # whole earlier turns: loss on their answers and </s>
        prompt = block.index(ids[SYS]) + 1
        input_ids += block
        labels += [IGNORE_INDEX] * prompt + block[prompt:]
    tail_ids, tail_labels = framed_example(ids, *last, max_len - len(input_ids), reference)
    return input_ids + tail_ids, labels + tail_labels


def framed_example(ids: dict[str, int], q: list[int], s: list[int], a: list[int], max_len: int,
                   reference: list[int] | None = None):
    """example_ids() from already-encoded parts (the dataset encodes whole columns at once). A
    reference takes only the room the pair leaves (none left: the example goes without one)."""
    fixed = _FRAME_TOKENS + len(s)
    if max_len < fixed + 2:
        raise ValueError(f"max_len {max_len} is too small: the framing alone needs {fixed + 2}")
    if reference is not None:
        left = max_len - fixed - len(q) - len(a) - 1
        reference = reference[:left] if left > 0 else None
        fixed += 0 if reference is None else 1 + len(reference)
    over = fixed + len(q) + len(a) - max_len
    if over > 0:
        keep_q = max(len(q) - over, min(len(q), max_len // 4, max_len - fixed - 1))
        q = q[len(q) - keep_q:]
        a = a[: max_len - fixed - len(q)]
    prompt = _frame(ids, q, s, reference)
    target = [*a, ids[EOS]]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target
