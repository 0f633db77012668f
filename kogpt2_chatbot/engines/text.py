"""Reply ids -> the text a user sees, streamed pieces of it, and the degenerate-reply check."""
from __future__ import annotations

import re

_SPACES = re.compile(r"[^\S\n]+")  # runs of spaces and tabs (lone `▁` tokens decode to one space each)
_NOT_WORD = re.compile(r"[^\w]")
# Korean particles; standing alone as words they are the junk of an under-trained model.
PARTICLES = frozenset("은는이가을를도의에와과로만")


def shown(tokenizer, new_ids: list[int], eos_id: int | None = None) -> str:
    """The reply decoded as it came: up to `</s>`, control tokens dropped, spaces as generated."""
    if eos_id is not None and eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def reply_text(tokenizer, new_ids: list[int], eos_id: int | None = None) -> str:
    """The reply as shown: up to `</s>`, control tokens dropped, runs of spaces made one."""
    return _SPACES.sub(" ", shown(tokenizer, new_ids, eos_id)).strip()


def is_degenerate(tokenizer, new_ids: list[int], eos_id: int, cap: int) -> bool:
    """A failed reply: it hit the cap without `</s>`, some token 3-gram occurs three times, or it
    is junk of lone syllables and spaces ("이  을  은  도  는").

    Junk: a run of spaces inside the reply (lone `▁` tokens; no answer of the corpus has one), two
    or more lone particles making up a third of the words, or four or more words of one character
    each. None of these flags any question or answer of the corpus (23,646 sentences of
    Chatbot_data/ChatbotData.csv; "다 잘 될 거예요." and "내 꿈 꿔!" pass)."""
    if len(new_ids) >= cap and eos_id not in new_ids:
        return True
    counts: dict[tuple, int] = {}
    for i in range(len(new_ids) - 2):
        gram = tuple(new_ids[i : i + 3])
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] >= 3:
            return True
    raw = shown(tokenizer, new_ids, eos_id).strip()
    words = [w for w in (_NOT_WORD.sub("", w) for w in raw.split()) if w]
    particles = sum(w in PARTICLES for w in words)
    return ("  " in raw or (particles >= 2 and particles * 3 >= len(words))
            or (len(words) >= 4 and all(len(w) == 1 for w in words)))


class TextPieces:
    """Turns a growing list of token ids into text pieces that join to `reply_text` exactly."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        # Trailing spaces are held back (the reply is stripped, a run may still grow), and so are
        # half-decoded characters.
        text = reply_text(self.tokenizer, self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    def finish(self) -> str:
        final = reply_text(self.tokenizer, self.ids)
        piece = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent = final
        return piece
