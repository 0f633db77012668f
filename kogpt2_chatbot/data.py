"""Chat tables: read, validate, fetch the default corpus, split, and turn into batches."""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import framing

DEFAULT_DATA = "Chatbot_data/ChatbotData.csv"
CORPUS_URL = "https://raw.githubusercontent.com/songys/Chatbot_data/master/ChatbotData.csv"
CORPUS_SHA256 = "287eb129695b577321c80ad397bb3c2279164d4ca577874d129fd3db5b30afe2"
COLUMNS = ("Q", "A", "label")


class DataError(ValueError):
    """A chat table that cannot be used as it is; the message says where and why."""


@dataclass
class ChatTable:
    rows: "pandas.DataFrame"  # noqa: F821  columns Q, A, label (str '0'|'1'|'2'), line
    path: str
    sha256: str
    dropped_empty: int = 0
    notes: list[str] = field(default_factory=list)


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
    return path


def read_table(path) -> "pandas.DataFrame":  # noqa: F821
    """CSV, TSV, XLSX or JSONL as strings, nothing turned into NaN or numbers."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            # Blank lines are rows too: a one-column file of sentences may hold empty ones.
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                               skip_blank_lines=False)
        if suffix in (".xlsx", ".xlsm"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
            return frame.fillna("")
        if suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
            return frame.astype(object).where(frame.notna(), "").astype(str)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from err
    except Exception as err:  # pandas raises many types for a malformed file
        raise DataError(f"could not read {path}: {err}") from err
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .xlsx or .jsonl")


def load_chat_table(path) -> ChatTable:
    """Read and validate a Q/A/label table. Empty Q or A rows are dropped and counted."""
    frame = read_table(path)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns)) or 'none'}. "
            "A chat table needs Q (question), A (answer) and label (0 일상, 1 이별, 2 사랑)."
        )
    rows = frame[list(COLUMNS)].astype(str).copy()
    rows["line"] = range(2, len(rows) + 2)  # 1-based, after the header line / row
    rows["label"] = rows["label"].str.strip()
    rows["label"] = rows["label"].str.replace(r"\.0$", "", regex=True)  # 1.0 from spreadsheets
    bad = rows[~rows["label"].isin(framing.SENTIMENTS)]
    if len(bad):
        shown = ", ".join(f"line {ln}: {lab!r}" for ln, lab in zip(bad["line"][:20], bad["label"][:20]))
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise DataError(f"{path}: label must be 0, 1 or 2; {len(bad)} bad row(s): {shown}{more}")
    rows["Q"] = rows["Q"].str.strip()
    rows["A"] = rows["A"].str.strip()
    empty = (rows["Q"] == "") | (rows["A"] == "")
    table = ChatTable(rows=rows[~empty].reset_index(drop=True), path=str(path), sha256=sha256_of(path),
                      dropped_empty=int(empty.sum()))
    if table.dropped_empty:
        table.notes.append(f"dropped {table.dropped_empty} row(s) with an empty Q or A "
                           f"(lines {', '.join(map(str, rows['line'][empty][:10]))}{'...' if empty.sum() > 10 else ''})")
    if not len(table.rows):
        raise DataError(f"{path}: no usable rows (every row has an empty Q or A)")
    return table


def split_train_val(rows, val_ratio: float = 0.05, seed: int = 42):
    """Seeded split, stratified by label, with every question text on one side only.

    Questions are grouped by their exact text (the corpus repeats 161 of them), and whole
    groups go to validation, label by label, until each label has its share of rows.
    Returns (train_rows, val_rows).
    """
    if not 0 <= val_ratio < 1:
        raise DataError(f"--val-ratio must be in [0, 1); got {val_ratio}")
    if val_ratio == 0 or len(rows) < 2:
        return rows, rows.iloc[0:0]
    rng = random.Random(seed)
    groups = rows.groupby("Q", sort=True)
    by_label: dict[str, list] = {}
    for question, group in groups:
        by_label.setdefault(group["label"].mode().iloc[0], []).append((question, len(group)))
    val_questions = set()
    for label in sorted(by_label):
        candidates = by_label[label]
        rng.shuffle(candidates)
        target = round(val_ratio * sum(n for _, n in candidates))
        taken = 0
        for question, n in candidates:
            if taken >= max(target, 1):
                break
            val_questions.add(question)
            taken += n
    in_val = rows["Q"].isin(val_questions)
    if in_val.all():  # a one-question table: keep something to train on
        return rows, rows.iloc[0:0]
    return rows[~in_val].reset_index(drop=True), rows[in_val].reset_index(drop=True)


class ChatDataset(torch.utils.data.Dataset):
    """Framed training examples; the whole table is encoded once, up front."""

    def __init__(self, rows, tokenizer, max_len: int = 64):
        ids = framing.control_ids(tokenizer)
        questions = framing.text_ids_batch(tokenizer, list(rows["Q"]))
        answers = framing.text_ids_batch(tokenizer, list(rows["A"]))
        sents = {s: framing.text_ids(tokenizer, s) for s in framing.SENTIMENTS}
        self.examples = [
            framing.framed_example(ids, q, sents[s], a, max_len)
            for q, a, s in zip(questions, answers, rows["label"])
        ]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


def collate(batch, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (not to a fixed length)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), framing.IGNORE_INDEX, dtype=torch.long)
    for row, (ids, target) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(target)] = torch.tensor(target)
    return {"input_ids": input_ids, "labels": labels}


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffled order in which each run of `batch_size` indices has similar lengths.

    Pairs average ~15 tokens but a random batch of 96 pads to its longest (~35), so half of
    every step would be padding. Indices are shuffled, cut into mega-batches of 50 batches,
    sorted by length inside each, and the resulting batches shuffled again: batches stay
    random, padding mostly goes. Under DDP, Lightning hands every process every
    world_size-th index of this order, which keeps the grouping.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega = list(lengths), batch_size, seed, mega
        self.epoch = 0

    def set_epoch(self, epoch: int):  # Lightning calls this every epoch
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
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
        for batch in shuffled + partial:  # a short batch last keeps the others aligned
            yield from batch
