"""Chat data: read and validate it, fetch the default corpus, split it, turn it into batches.

Three shapes of data, all read by `load_chat_table`:
- a Q/A/label table (CSV, TSV, TXT, XLSX), one question and answer a row, like the public corpus;
- a wide table of numbered turns, a conversation a row: `사람문장1, 시스템문장1, 사람문장2, ...`
  (the emotional-conversation corpus, emotion in `감정_대분류`) or `Q1, A1, Q2, A2, ...`, with an
  emotion or label column mapped to a sentiment by EMOTION_MAP;
- JSONL conversations in the Hugging Face/TRL messages format, a conversation a line:
  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]},
  with an optional "sentiment" per user message or per conversation.
Every row of the result is one turn (Q, A, label) of a conversation (`conv`, `turn`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import framing, textfile
from . import train_options as topts
from .framing import Turn
from .sentiment import EMOTION_MAP, SENTIMENTS, sentiment_of_label

DEFAULT_DATA = "Chatbot_data/ChatbotData.csv"
CORPUS_URL = "https://raw.githubusercontent.com/songys/Chatbot_data/master/ChatbotData.csv"
CORPUS_SHA256 = "287eb129695b577321c80ad397bb3c2279164d4ca577874d129fd3db5b30afe2"
COLUMNS = ("Q", "A", "label")
TEXT_SUFFIXES = (*textfile.TABLE_SUFFIXES, ".jsonl")  # decoded by textfile; .xlsx is a workbook
_KINDS = f"{', '.join(textfile.TABLE_SUFFIXES)}, .xlsx or .jsonl"  # what read_table reads, as its errors say
DEFAULT_PROTOCOL, KOCHATBART_PROTOCOL = topts.PROTOCOLS  # how the held-out rows are chosen (train --protocol)

EMOTION_COLUMNS = ("감정_대분류", "label", "Emotion", "emotion", "감정")
_TURN_COLUMN = re.compile(r"^(사람문장|Q|시스템문장|A)\s*(\d+)$")
FORMATS_HELP = ("a chat table needs Q, A and label columns (0 일상, 1 이별, 2 사랑); numbered turn columns "
                "(사람문장1, 시스템문장1, ... or Q1, A1, Q2, A2, ...); or, as .jsonl, one {\"messages\": [...]} "
                "conversation a line")


# Laughter and crying marks, punctuation and spaces: "배고파ㅠㅠ", "배고파!!" and "배 고파" are one question.
_NEAR_DUPLICATE_NOISE = re.compile(r"[\sㅋㅎㅠㅜㅡ~^]+|[^\w]+")


def question_key(question: str) -> str:
    """The text that decides which side of the split a question goes to: questions equal up to
    spaces, punctuation and laughter/crying marks (ㅋㅋ, ㅎㅎ, ㅠㅠ, ㅜㅜ) share a side."""
    key = _NEAR_DUPLICATE_NOISE.sub("", str(question)).lower()
    return key or str(question).strip()


class DataError(ValueError):
    """A chat table that cannot be used as it is; the message says where and why."""


@dataclass
class ChatTable:
    rows: "pandas.DataFrame"  # noqa: F821  Q, A, label (str '0'|'1'|'2'), line, conv, turn, group
    path: str
    sha256: str
    dropped_empty: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def history_turns(self) -> int:
        """Most earlier turns any answer was trained with: 0 for a single-turn table."""
        return int(self.rows["turn"].max()) if len(self.rows) else 0

    @property
    def conversations(self) -> int:
        return int(self.rows["conv"].nunique())


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_default_corpus(path: str | os.PathLike = DEFAULT_DATA, url: str = CORPUS_URL) -> Path:
    """Download the public corpus to `path` (checksum-verified) unless it is already there."""
    path = Path(path)
    if path.exists():
        return path
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again if this fails
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:
                out.write(response.read())
        except OSError as err:
            raise DataError(
                f"could not download the corpus from {url} ({err}).\n"
                f"Put a copy at {path}, or pass one with --data PATH (CSV, TSV or XLSX with columns Q, A, label)."
            ) from err
        got = sha256_of(tmp)
        if got != CORPUS_SHA256:
            raise DataError(
                f"the file downloaded from {url} has SHA-256 {got}, expected {CORPUS_SHA256}.\n"
                f"Pass a trusted copy with --data PATH."
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        for folder in made:
            with contextlib.suppress(OSError):  # only empty ones: a failed download leaves nothing behind
                folder.rmdir()
    return path


def corpus_path(path=None) -> Path:
    """The chat data to read: `path` as given, which must be there; none (or the default path itself):
    the public corpus, downloaded when absent. Only the default is ever fetched in a file's place."""
    if path is None or Path(path) == Path(DEFAULT_DATA):
        return fetch_default_corpus()
    if not Path(path).exists():
        raise DataError(f"no such file: {path}")
    return Path(path)


def read_table(path, encoding: str | None = None) -> "pandas.DataFrame":  # noqa: F821
    """CSV, TSV, TXT, XLSX or JSONL as strings, nothing turned into NaN or numbers; text decoded and
    separated by `textfile`."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give the data file in it ({_KINDS})")
    suffix = path.suffix.lower()
    encoding = encoding or _encoding(path)
    try:
        if suffix in textfile.TABLE_SUFFIXES:
            # Blank lines are rows too: a one-column file of sentences may hold empty ones.
            return pd.read_csv(path, sep=textfile.separator(path, encoding), dtype=str, keep_default_na=False,
                               encoding=encoding, skip_blank_lines=False)
        if suffix in (".xlsx", ".xlsm"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
            return frame.fillna("")
        if suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding=encoding)
            return frame.astype(object).where(frame.notna(), "").astype(str)
    except Exception as err:  # pandas raises many types for a malformed file
        raise DataError(f"could not read {path}: {err}") from err
    raise DataError(f"{path}: unsupported file type {suffix!r}; use {_KINDS}")


def _encoding(path: Path) -> str | None:
    """How a text data file is decoded (textfile's rule); None for a workbook or a path that is no file."""
    if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        return None
    try:
        return textfile.encoding_of(path)
    except textfile.NotText as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"could not read {path}: {err.strerror or err}") from None


def load_chat_table(path) -> ChatTable:
    """Read and validate chat data of any of the three shapes (see the module doc)."""
    path = Path(path)
    encoding = _encoding(path)
    if path.suffix.lower() == ".jsonl" and encoding and _first_record_has_messages(path, encoding):
        table = _from_messages(path, encoding)
    else:
        table = _from_frame(read_table(path, encoding), path)
    said = textfile.note(path, encoding)
    if said:
        table.notes.insert(0, said)
    return table


def _from_frame(frame, path: Path) -> ChatTable:
    """A table of pairs or of numbered turns, by its columns."""
    frame.columns = [str(c).strip() for c in frame.columns]
    if all(c in frame.columns for c in COLUMNS):
        return _from_pairs(frame, path)
    turns = _turn_columns(frame.columns)
    if turns:
        return _from_wide(frame, path, turns)
    present = [c for c in COLUMNS if c in frame.columns]
    missing = f"missing column(s) {', '.join(c for c in COLUMNS if c not in present)}; " if present else ""
    raise DataError(f"{path}: {missing}found {', '.join(map(str, frame.columns)) or 'no columns'}. {FORMATS_HELP}.")


def _from_pairs(frame, path) -> ChatTable:
    """A Q/A/label table. Empty Q or A rows are dropped and counted."""
    rows = frame[list(COLUMNS)].astype(str).copy()
    rows["line"] = range(2, len(rows) + 2)  # 1-based, after the header line / row
    rows["label"] = rows["label"].str.strip()
    rows["label"] = rows["label"].str.replace(r"\.0$", "", regex=True)  # 1.0 from spreadsheets
    bad = rows[~rows["label"].isin(SENTIMENTS)]
    if len(bad):
        shown = ", ".join(f"line {ln}: {lab!r}" for ln, lab in zip(bad["line"][:20], bad["label"][:20]))
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise DataError(f"{path}: label must be 0, 1 or 2; {len(bad)} bad row(s): {shown}{more}")
    rows["Q"] = rows["Q"].str.strip()
    rows["A"] = rows["A"].str.strip()
    empty = (rows["Q"] == "") | (rows["A"] == "")
    kept = rows[~empty].reset_index(drop=True)
    # Each pair is a conversation of one turn; the split keeps near-duplicate questions on one side.
    kept["conv"], kept["turn"], kept["group"] = range(len(kept)), 0, kept["Q"].map(question_key)
    table = ChatTable(rows=kept, path=str(path), sha256=sha256_of(path), dropped_empty=int(empty.sum()))
    if table.dropped_empty:
        table.notes.append(f"dropped {table.dropped_empty} row(s) with an empty Q or A "
                           f"(lines {', '.join(map(str, rows['line'][empty][:10]))}{'...' if empty.sum() > 10 else ''})")
    if not len(table.rows):
        raise DataError(f"{path}: no usable rows (every row has an empty Q or A)")
    return table


def _turn_columns(columns) -> list[tuple[str, str]]:
    """[(question column, answer column)] for turns 1..N, or [] when the table has none."""
    found: dict[int, dict[str, str]] = {}
    for column in columns:
        match = _TURN_COLUMN.match(str(column))
        if match:
            side = "q" if match.group(1) in ("사람문장", "Q") else "a"
            found.setdefault(int(match.group(2)), {})[side] = str(column)
    turns = []
    for n in range(1, len(found) + 2):
        if n not in found:
            break
        if set(found[n]) != {"q", "a"}:
            raise DataError(f"turn {n} needs both a question and an answer column; found only {list(found[n].values())}")
        turns.append((found[n]["q"], found[n]["a"]))
    return turns


def _from_wide(frame, path, turn_columns) -> ChatTable:
    """A conversation a row, in numbered turn columns, with an optional emotion column."""
    emotion = next((c for c in EMOTION_COLUMNS if c in frame.columns), None)
    problems, conversations, dropped = [], [], {"empty": [], "unanswered": []}
    for index, row in frame.iterrows():
        line = index + 2
        label = "0"
        if emotion is not None:
            label = sentiment_of_label(row[emotion])
            if label is None:
                problems.append(f"line {line}: {emotion} {row[emotion]!r} maps to no sentiment "
                                f"(known: {', '.join(k for k in EMOTION_MAP if not k.isdigit())}, or 0/1/2)")
                continue
        turns, ended = [], None
        for n, (qc, ac) in enumerate(turn_columns, 1):
            q, a = str(row[qc]).strip(), str(row[ac]).strip()
            if not q and not a:
                ended = ended or n
                continue
            if ended:
                problems.append(f"line {line}: turn {ended} is empty but turn {n} is not; move the turns together")
                break
            if a and not q:
                problems.append(f"line {line}: {ac} has an answer without a question in {qc}")
                break
            if q and not a:
                if any(str(row[c]).strip() for pair in turn_columns[n:] for c in pair):
                    problems.append(f"line {line}: {qc} has a question without an answer in {ac}")
                    break
                dropped["unanswered"].append(line)  # a last question with no answer: nothing to learn
                break
            turns.append(Turn(q, a, label))
        if turns:
            conversations.append((line, turns))
        elif not any(p.startswith(f"line {line}:") for p in problems) and line not in dropped["unanswered"]:
            dropped["empty"].append(line)
    notes = [] if emotion else [f"no emotion column ({' / '.join(EMOTION_COLUMNS)}): every turn gets sentiment 0"]
    return _table(path, conversations, problems, dropped, notes)


def _first_record_has_messages(path: Path, encoding: str) -> bool:
    try:
        with open(path, encoding=encoding) as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    return isinstance(record, dict) and "messages" in record
    except json.JSONDecodeError:
        return False
    return False


def _from_messages(path: Path, encoding: str) -> ChatTable:
    """JSONL, one {"messages": [...], "sentiment"?: ...} conversation a line."""
    problems, conversations = [], []
    dropped = {"empty": [], "unanswered": [], "system": [], "greeting": []}
    with open(path, encoding=encoding) as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"line {line}: not JSON ({err.msg}, column {err.colno})")
                continue
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list):
                problems.append(f"line {line}: expected an object with a \"messages\" list")
                continue
            turns, problem = _turns_of_messages(messages, record.get("sentiment", record.get("label")), dropped, line)
            if problem:
                problems.append(f"line {line}: {problem}")
            elif turns:
                conversations.append((line, turns))
            elif line not in dropped["unanswered"]:
                dropped["empty"].append(line)
    return _table(path, conversations, problems, dropped, [])


def _turns_of_messages(messages, default_sentiment, dropped, line):
    """([Turn], problem or None) of one conversation, its sentiments mapped like emotion labels."""
    try:
        talk = framing.messages_to_turns(messages, default_sentiment)
    except ValueError as err:
        return [], str(err)
    for role in talk.skipped:  # no place in the framing
        dropped[role].append(line)
    if talk.question is not None:
        dropped["unanswered"].append(line)  # a last question with no answer: nothing to learn
    turns = []
    for turn in talk.turns:
        sentiment = "0" if turn.sentiment is None else sentiment_of_label(turn.sentiment)
        if sentiment is None:
            return [], (f"turn {len(turns) + 1}: sentiment {turn.sentiment!r} maps to no sentiment "
                        "(0, 1, 2 or an emotion name)")
        turns.append(turn._replace(sentiment=sentiment))
    return turns, None


def _table(path, conversations, problems, dropped, notes) -> ChatTable:
    """Rows of every turn, or a DataError that lists each bad line and what to do."""
    import pandas as pd

    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataError(f"{path}: {len(problems)} bad conversation(s); fix or remove them and run again:\n  "
                        f"{shown}{more}")
    records = [{"Q": q, "A": a, "label": s, "line": line, "conv": c, "turn": t, "group": f"line {line}"}
               for c, (line, turns) in enumerate(conversations) for t, (q, a, s) in enumerate(turns)]
    rows = pd.DataFrame(records, columns=["Q", "A", "label", "line", "conv", "turn", "group"])
    table = ChatTable(rows=rows, path=str(path), sha256=sha256_of(path), dropped_empty=len(dropped["empty"]),
                      notes=list(notes))
    described = {"empty": "empty conversation(s) skipped", "unanswered": "conversation(s) ended in a question "
                 "without an answer; that last question was left out", "system": "system message(s) skipped "
                 "(the framing has no place for them)", "greeting": "assistant greeting(s) before the first "
                 "user message skipped"}
    for kind, lines in dropped.items():
        if lines:
            table.notes.append(f"{len(lines)} {described[kind]} (lines {', '.join(map(str, lines[:10]))}"
                               f"{'...' if len(lines) > 10 else ''})")
    if not len(rows):
        raise DataError(f"{path}: no usable conversations")
    return table


def split_train_val(rows, val_ratio: float = 0.05, seed: int = 42):
    """Seeded split, stratified by label, whole groups on one side only.

    A group is a conversation, or, for a Q/A table, every pair whose question is the same up to
    spaces, punctuation and laughter marks (question_key; the corpus repeats 161 questions
    exactly and many more nearly). Whole groups go to validation, label by label, until each
    label has its share of rows. Returns (train_rows, val_rows).
    """
    topts.check("val_ratio", val_ratio)
    if val_ratio == 0 or len(rows) < 2:
        return rows, rows.iloc[0:0]
    rng = random.Random(seed)
    groups = rows.groupby("group", sort=True)
    by_label: dict[str, list] = {}
    for key, group in groups:
        by_label.setdefault(group["label"].mode().iloc[0], []).append((key, len(group)))
    val_groups = set()
    for label in sorted(by_label):
        candidates = by_label[label]
        rng.shuffle(candidates)
        target = round(val_ratio * sum(n for _, n in candidates))
        taken = 0
        for group, n in candidates:
            if taken >= max(target, 1):
                break
            val_groups.add(group)
            taken += n
    in_val = rows["group"].isin(val_groups)
    if in_val.all():  # a one-question table: keep something to train on
        return rows, rows.iloc[0:0]
    return rows[~in_val].reset_index(drop=True), rows[in_val].reset_index(drop=True)


def held_out(rows, split: dict, part: str = "val"):
    """Which rows a checkpoint's recorded split held out (a bool Series); part: val or test."""
    if split.get("protocol") == KOCHATBART_PROTOCOL:
        return rows["line"].isin(set(split.get(f"{part}_lines", ())))
    if part != "val":
        return rows["line"].isin(())
    if "val_groups" in split:
        return rows["group"].isin(set(split["val_groups"]))
    return rows["Q"].isin(set(split.get("val_questions", ())))  # checkpoints from before question_key


def training_rows(rows, split: dict):
    """The rows a checkpoint trained on: neither validation nor test (all of them where it
    records no split)."""
    held = held_out(rows, split) | held_out(rows, split, "test")
    return (rows[~held] if held.any() else rows).reset_index(drop=True)


def split_kochatbart(rows, seed: int = 42):
    """KoChatBART's protocol: rows shuffled at random with a fixed seed, 80% train, 10%
    validation, 10% test (9,458 / 1,182 / 1,183 of the corpus's 11,823). Returns (train, val, test)."""
    import numpy as np

    order = np.random.RandomState(seed).permutation(len(rows))
    n_train = int(len(rows) * 0.8)
    n_val = (len(rows) - n_train) // 2
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple(rows.iloc[sorted(part)].reset_index(drop=True) for part in parts)


def conversation_turns(rows) -> list[list[Turn]]:
    """[[Turn(question, answer, sentiment), ...] per conversation], in the order of the table."""
    return list(_turns_by_conversation(rows).values())


def earlier_turns(rows, asked) -> list[list[Turn]]:
    """For each of the `asked` rows (some of `rows`), the turns before it in its conversation."""
    turns = _turns_by_conversation(rows)
    return [turns[conv][:turn] for conv, turn in zip(asked["conv"], asked["turn"])]


def _turns_by_conversation(rows) -> dict:
    """{conversation: [Turn, ...] in the order of the table}."""
    out: dict = {}
    for conv, q, a, label in zip(rows["conv"], rows["Q"], rows["A"], rows["label"]):
        out.setdefault(conv, []).append(Turn(q, a, label))
    return out


def answer_chars(answers) -> int:
    """Characters a loss per character divides by: every answer, plus one for the `</s>` that
    ends it (like a text file's newline), so bits per character do not depend on the tokenizer."""
    return sum(len(a.strip()) + 1 for a in answers)


class ChatDataset(torch.utils.data.Dataset):
    """Framed training examples, a conversation each; the whole table is encoded once, up front.
    An item is (input_ids, labels, answer characters).

    Refine training (`refine` > 0, `references`: a retrieved answer for each row): a share
    `refine` of the conversations show their last turn a reference answer, drawn anew each
    epoch (`set_epoch`). Alpha-blending: a share `alpha` of those references is the turn's own
    answer, the rest the retrieved one, so the model learns to copy a reference that fits and
    to answer on its own when it does not, and the rest keep the plain framing."""

    def __init__(self, rows, tokenizer, max_len: int = framing.DEFAULT_MAX_LEN, references=None,
                 refine: float = 0.0, alpha: float = 0.5, seed: int = 0):
        ids = framing.control_ids(tokenizer)
        questions = framing.text_ids_batch(tokenizer, list(rows["Q"]))
        answers = framing.text_ids_batch(tokenizer, list(rows["A"]))
        sents = {s: framing.text_ids(tokenizer, s) for s in SENTIMENTS}
        refs = framing.text_ids_batch(tokenizer, [r or "" for r in references]) if refine else [None] * len(answers)
        conversations: dict[int, list] = {}
        chars: dict[int, list] = {}
        last_ref: dict[int, list] = {}
        for conv, q, a, s, text, r in zip(rows["conv"], questions, answers, rows["label"], rows["A"], refs):
            conversations.setdefault(conv, []).append((q, sents[s], a))
            chars.setdefault(conv, []).append(text)
            last_ref[conv] = r
        turns = list(conversations.values())
        self.examples = [framing.framed_conversation(ids, t, max_len) for t in turns]
        self.chars = [answer_chars(texts) for texts in chars.values()]
        self.refine, self.alpha, self.seed, self.epoch = refine, alpha, seed, 0
        self.variants = []  # (with the retrieved reference, with the own answer as reference)
        if refine:
            self.variants = [(framing.framed_conversation(ids, t, max_len, r) if r else None,
                              framing.framed_conversation(ids, t, max_len, t[-1][2]))
                             for t, r in zip(turns, last_ref.values())]

    def __len__(self):
        return len(self.examples)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def lengths(self) -> list[int]:
        """The longest form of each example (what batching by length goes by)."""
        if not self.variants:
            return [len(ids) for ids, _ in self.examples]
        return [max(len(e[0]), *(len(v[0]) for v in vs if v)) for e, vs in zip(self.examples, self.variants)]

    def __getitem__(self, index):
        example = self.examples[index]
        if self.variants:
            draw = random.Random(f"{self.seed}-{self.epoch}-{index}")
            if draw.random() < self.refine:
                retrieved, own = self.variants[index]
                example = (own if draw.random() < self.alpha else retrieved) or example
        return (*example, self.chars[index])


def collate(batch, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (not to a fixed length). Items are
    (ids, labels) or (ids, labels, answer characters); with the latter the batch says how many."""
    width = max(len(item[0]) for item in batch)
    # One tensor from padded lists: a copy per row took 5 ms a batch of 96, longer than a compiled
    # step's launches on a GPU (this runs on the host between steps).
    ignore = framing.IGNORE_INDEX
    input_ids = torch.tensor([[*ids, *[pad_id] * (width - len(ids))] for ids, *_ in batch], dtype=torch.long)
    labels = torch.tensor([[*target, *[ignore] * (width - len(target))] for _, target, *_ in batch], dtype=torch.long)
    out = {"input_ids": input_ids, "labels": labels}
    if len(batch[0]) == 3:
        out["answer_chars"] = torch.tensor(sum(item[2] for item in batch))
    return out


class LengthGroupedSampler(torch.utils.data.distributed.DistributedSampler):
    """Shuffled order in which each run of `batch_size` indices has similar lengths.

    Pairs average ~15 tokens but a random batch of 96 pads to its longest (~35), so half of
    every step would be padding. Indices are shuffled, cut into mega-batches of 50 batches,
    sorted by length inside each, and the resulting batches shuffled again: batches stay
    random, padding mostly goes.

    Under DDP it is its own distributed sampler: each process takes every world_size-th index
    of the order (padded with its first indices to a multiple of world_size, as torch's
    DistributedSampler does), which keeps the grouping. Being a DistributedSampler, Lightning
    leaves it in place and tells it each epoch; wrapped in Lightning's own, it was reshuffled
    index by index (the grouping lost) and never told a new epoch (the refine references drawn
    once). The process group exists only once training starts, so it is read at each epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50, on_epoch=None):
        # Not DistributedSampler.__init__: it needs the process group, which does not exist yet.
        self.lengths, self.batch_size, self.seed, self.mega = list(lengths), batch_size, seed, mega
        self.on_epoch = on_epoch  # told each new epoch (the dataset's set_epoch, for refine training)
        self.epoch = 0
        self.done: tuple[int, int] | None = None  # (epoch, batches) an interrupted run had trained

    @property
    def num_replicas(self) -> int:
        return torch.distributed.get_world_size() if self._distributed() else 1

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if self._distributed() else 0

    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def resume(self, epoch: int, batches: int):
        """Continue epoch `epoch` after its first `batches` batches (a run stopped inside it): the
        rest of that epoch's batches, in the same order, so the run goes on as if never stopped."""
        self.done = (epoch, batches)

    def set_epoch(self, epoch: int):  # Lightning calls this every epoch, before it iterates
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self):
        return -(-len(self.lengths) // self.num_replicas)

    def batches(self) -> list[list[int]]:
        """This epoch's batches of indices: every index once, none empty, the short one last.
        Whatever batches by hand (a benchmark) takes these, so no empty batch can reach collate."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            group = sorted(order[start : start + size], key=lambda i: -self.lengths[i])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        partial = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        batches = shuffled + partial  # a short batch last keeps the others aligned
        if self.done and self.done[0] == self.epoch:
            return batches[self.done[1]:]
        return batches

    def __iter__(self):
        order = [i for batch in self.batches() for i in batch]
        world = self.num_replicas
        if world > 1 and order:
            pad = -len(order) % world  # every process the same number of indices, or DDP waits forever
            order = (order + (order * (pad // len(order) + 1))[:pad])[self.rank :: world]
        yield from order
