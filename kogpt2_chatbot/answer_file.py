"""Answer a whole table: every row of a spreadsheet/CSV/JSONL gets a reply, nothing is lost.

    python chatbot.py --input EC_data/sample_emotions.csv --output answers.xlsx

- The text column defaults to `Sentence` (the emotion datasets' name), else the only text column.
- The emotion column defaults to `Emotion`; its labels choose the sentiment (EMOTION_MAP), and
  unknown labels stop the run before any generation unless --unknown-emotion says what to use.
- The output holds every input row and column, in order and with their types (numbers stay
  numbers in .xlsx and .jsonl; CSV text stays the very text), plus `Answer` and `Sentiment`.
- Progress is saved next to the output after every batch (`<output>.partial.jsonl`); the same
  command after Ctrl-C or a crash continues from there. The output file appears atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import data as chatdata
from . import framing

EMOTION_MAP = chatdata.EMOTION_MAP  # one map for training tables and spreadsheets
label_key = chatdata.label_key
DEFAULT_TEXT_COLUMN = "Sentence"
DEFAULT_EMOTION_COLUMN = "Emotion"
ANSWER, SENTIMENT = "Answer", "Sentiment"
FORMULA_START = ("=", "+", "-", "@")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class AnswerFileError(ValueError):
    """Bad input for answering a file; the message says what to change."""


def load_emotion_map(path) -> dict[str, str]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise AnswerFileError(f"--emotion-map {path}: {err}") from err
    if not isinstance(raw, dict) or not raw:
        raise AnswerFileError(f"--emotion-map {path}: expected a JSON object like {{\"행복\": 2, \"슬픔\": 1}}")
    out = {}
    for label, value in raw.items():
        try:
            out[label_key(label)] = framing.normalize_sentiment(value)
        except ValueError as err:
            raise AnswerFileError(f"--emotion-map {path}: label {label!r}: {err}") from err
    return out


def choose_text_column(frame, wanted: str | None, emotion_column: str | None) -> str:
    columns = [str(c) for c in frame.columns]
    if wanted:
        if wanted not in columns:
            raise AnswerFileError(f"--text-column {wanted!r} is not in the input; its columns are {columns}")
        return wanted
    if DEFAULT_TEXT_COLUMN in columns:
        return DEFAULT_TEXT_COLUMN
    texty = [c for c in columns if c != emotion_column and _is_text(frame[c])]
    if len(texty) == 1:
        return texty[0]
    raise AnswerFileError(
        f"which column holds the sentences? {'several' if texty else 'no'} text columns among {columns}; "
        f"pass --text-column NAME"
    )


def _is_text(series) -> bool:
    values = [v for v in series.map(_cell_text) if v.strip()]
    return bool(values) and sum(not _NUMBER.match(v.strip()) for v in values) > len(values) / 2


def sentiments_for(frame, emotion_column: str | None, mapping: dict[str, str], default: str,
                   unknown: str | None) -> list[str]:
    """One sentiment per row; unknown labels are an error naming rows and values (unless `unknown`)."""
    if emotion_column is None:
        return [default] * len(frame)
    out, bad = [], {}
    for row, label in enumerate(frame[emotion_column].map(_cell_text)):
        key = label_key(label)
        if key in mapping:
            out.append(mapping[key])
        elif unknown is not None:
            out.append(unknown)
        else:
            bad.setdefault(label, []).append(row + 2)  # file line / spreadsheet row, after the header
            out.append("")
    if bad:
        shown = "; ".join(f"{value!r} (rows {', '.join(map(str, rows[:5]))}{'...' if len(rows) > 5 else ''})"
                          for value, rows in list(bad.items())[:10])
        raise AnswerFileError(
            f"unknown emotion label(s) in column {emotion_column!r}: {shown}.\n"
            f"Known: {', '.join(sorted(mapping))}. Pass --emotion-map FILE.json, or --unknown-emotion N to use "
            f"sentiment N for them."
        )
    return out


def _cell_text(value) -> str:
    """A cell as text: empty for a missing value, 3 for 3.0 (spreadsheets store whole numbers so)."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_rows(path: Path):
    """The input as the user has it: CSV/TSV as text, exactly; XLSX and JSONL with their types."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm") and path.exists():
            return pd.read_excel(path, dtype=object)
        if suffix == ".jsonl" and path.exists():
            with open(path, encoding="utf-8-sig") as fh:
                records = [json.loads(line) for line in fh if line.strip()]
            if any(not isinstance(r, dict) for r in records):
                raise AnswerFileError(f"{path}: every line must be a JSON object")
            return pd.DataFrame(records, dtype=object)
    except (ValueError, OSError) as err:
        if isinstance(err, AnswerFileError):
            raise
        raise AnswerFileError(f"could not read {path}: {err}") from err
    try:
        return chatdata.read_table(path)
    except chatdata.DataError as err:
        raise AnswerFileError(str(err)) from err


# --- output ---------------------------------------------------------------------------------

def default_output(input_path) -> Path:
    p = Path(input_path)
    return p.with_name(f"{p.stem}.answered.xlsx")


def _csv_safe(value):
    """A cell Excel would run as a formula gets a leading apostrophe (CSV has no cell types)."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def write_table(frame, path: Path):
    """Write by extension, atomically: a temporary file in the same folder, then a rename."""
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".csv", ".tsv", ".jsonl"):
        raise AnswerFileError(f"--output {path}: unsupported type {suffix!r}; use .xlsx, .csv, .tsv or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        cleaned = 0
        if suffix == ".xlsx":
            cleaned = _write_xlsx(frame, tmp)
        elif suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for record in frame.to_dict(orient="records"):
                    fh.write(json.dumps({k: _json_value(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        else:
            safe = frame.map(_csv_safe)
            safe.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",", index=False, encoding="utf-8-sig")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return cleaned


def _json_value(value):
    import pandas as pd

    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _write_xlsx(frame, path) -> int:
    """Returns how many cells lost characters that .xlsx cannot hold (XML has no control characters)."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    book = Workbook(write_only=True)
    sheet = book.create_sheet()
    sheet.append([str(c) for c in frame.columns])
    cleaned = 0
    for values in frame.itertuples(index=False):
        row = []
        for value in values:
            value = _json_value(value) if not isinstance(value, str) else value
            if isinstance(value, str):
                if ILLEGAL_CHARACTERS_RE.search(value):
                    value, cleaned = ILLEGAL_CHARACTERS_RE.sub("", value), cleaned + 1
                if value.startswith("="):
                    value = WriteOnlyCell(sheet, value=value)
                    value.data_type = "s"  # text, never a formula (openpyxl would store "=..." as one)
            row.append(value)
        sheet.append(row)
    book.save(path)
    return cleaned


# --- the run --------------------------------------------------------------------------------

@dataclass
class Summary:
    rows: int = 0
    answered: int = 0
    blank: int = 0
    resumed: int = 0
    seconds: float = 0.0
    output: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self):
        rate = self.answered / self.seconds if self.seconds else 0.0
        return (f"{self.rows} rows: {self.answered} answered ({self.resumed} from a previous run), "
                f"{self.blank} blank (empty text), {self.seconds:.1f} s ({rate:.1f} rows/s) -> {self.output}")


def _fingerprint(input_path, text_column, sentiments, model_params, decoding) -> str:
    digest = hashlib.sha256()
    digest.update(chatdata.sha256_of(input_path).encode())
    stat = os.stat(model_params) if model_params and os.path.exists(model_params) else None
    digest.update(json.dumps([text_column, sentiments, str(model_params), stat and stat.st_size,
                              stat and stat.st_mtime_ns, decoding], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load_partial(path: Path, fingerprint: str) -> dict[int, str]:
    """Answers saved by an earlier run of the same job; anything else there is ignored."""
    if not path.exists():
        return {}
    done = {}
    with open(path, encoding="utf-8") as fh:
        header = fh.readline()
        try:
            if json.loads(header).get("fingerprint") != fingerprint:
                return {}
        except json.JSONDecodeError:
            return {}
        for line in fh:
            try:
                item = json.loads(line)
                done[int(item["row"])] = item["answer"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break  # a line cut short by the interruption: redo from here
    return done


def answer_file(bot, input_path, output_path=None, text_column=None, emotion_column=None, sentiment=None,
                emotion_map=None, unknown_emotion=None, batch_size: int = 64, model_params=None,
                progress: bool = True, **decoding) -> Summary:
    """Answer every row of `input_path` into `output_path` with `bot` (a Chatbot); see the module doc."""
    from tqdm.auto import tqdm

    from .api import as_chatbot

    bot = as_chatbot(bot)
    input_path = Path(input_path)
    output_path = Path(output_path) if output_path else default_output(input_path)
    if batch_size < 1:
        raise AnswerFileError(f"--batch-size must be >= 1; got {batch_size}")
    if not input_path.exists():
        raise AnswerFileError(f"no such file: {input_path}")
    frame = read_rows(input_path)
    frame.columns = [str(c) for c in frame.columns]
    clash = [c for c in (ANSWER, SENTIMENT) if c in frame.columns]
    if clash:
        raise AnswerFileError(f"the input already has column(s) {clash}; rename them so no input data is overwritten")
    if emotion_column is not None and emotion_column not in frame.columns:
        raise AnswerFileError(f"--emotion-column {emotion_column!r} is not in the input; its columns are {list(frame.columns)}")
    if emotion_column is None and DEFAULT_EMOTION_COLUMN in frame.columns:
        emotion_column = DEFAULT_EMOTION_COLUMN
    column = choose_text_column(frame, text_column, emotion_column)
    mapping = load_emotion_map(emotion_map) if emotion_map else EMOTION_MAP
    sentiments = sentiments_for(frame, emotion_column, mapping, bot.sentiment_of(sentiment),
                                None if unknown_emotion is None else bot.check_sentiment(unknown_emotion))
    dec = bot.decoding_for(**decoding)
    texts = [_cell_text(t).strip() for t in frame[column]]
    # `auto`: the checkpoint's classifier reads each sentence (a blank one stays 0).
    auto = [i for i, s in enumerate(sentiments) if s == "auto" and texts[i]]
    for i, guess in zip(auto, bot.sentiments_for([texts[i] for i in auto], ["auto"] * len(auto))):
        sentiments[i] = guess
    sentiments = ["0" if s == "auto" else s for s in sentiments]
    todo = [i for i, t in enumerate(texts) if t]

    partial = output_path.with_name(output_path.name + ".partial.jsonl")
    fingerprint = _fingerprint(input_path, column, sentiments, model_params, sorted(decoding.items()))
    wanted = set(todo)
    answers = {i: a for i, a in _load_partial(partial, fingerprint).items() if i in wanted}
    summary = Summary(rows=len(frame), blank=len(texts) - len(todo), resumed=len(answers), output=str(output_path))
    remaining = [i for i in todo if i not in answers]
    # Longest prompts first: batches of similar lengths waste little padding.
    prompts = dict(zip(remaining, bot.prompts([texts[i] for i in remaining], [sentiments[i] for i in remaining],
                                              decoding=dec)))
    remaining.sort(key=lambda i: -len(prompts[i]))

    start = time.perf_counter()
    mode = "a" if answers else "w"
    with open(partial, mode, encoding="utf-8") as log, \
            tqdm(total=len(todo), initial=len(answers), unit="row", desc="answering", disable=not progress) as bar:
        if mode == "w":
            log.write(json.dumps({"fingerprint": fingerprint, "input": str(input_path)}) + "\n")
        for at in range(0, len(remaining), batch_size):
            chunk = remaining[at : at + batch_size]
            for i, reply in zip(chunk, bot.complete([prompts[i] for i in chunk], dec, batch_size)):
                answers[i] = reply.text
                log.write(json.dumps({"row": i, "answer": answers[i]}, ensure_ascii=False) + "\n")
            log.flush()
            os.fsync(log.fileno())
            bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    summary.answered = len(answers)

    out = frame.copy()
    out[ANSWER] = [answers.get(i, "") for i in range(len(frame))]
    out[SENTIMENT] = [int(s) for s in sentiments]
    cleaned = write_table(out, output_path)
    if cleaned:
        summary.notes.append(f"{cleaned} cell(s) held control characters that .xlsx cannot store; they were "
                             f"removed in {output_path.name} (write .csv or .jsonl to keep them)")
    partial.unlink(missing_ok=True)
    return summary
