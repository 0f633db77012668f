"""Answer a whole table: every row of a spreadsheet/CSV/JSONL gets a reply, nothing is lost.

    python chatbot.py --input EC_data/sample_emotions.csv --output answers.xlsx

- The text column defaults to `Sentence` (the emotion datasets' name), else the only text column.
- The emotion column defaults to `Emotion`; its labels choose the sentiment (EMOTION_MAP), and
  unknown labels stop the run before any generation unless --unknown-emotion says what to use.
- The output holds every input row and column, every cell as it went in (sheet.py reads and writes
  them: formulas, dates, lists...), plus `Answer` and `Sentiment`. No file the user gave is overwritten.
- Progress is saved next to the output after every batch (`<output>.partial.jsonl`); the same
  command after Ctrl-C or a crash continues from there. The output file appears atomically.
- A formula in the text column is answered by the value Excel saved for it; one without a saved
  value is not answered, and the summary says which rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import data as chatdata
from . import engines
from . import sheet, textfile
from .sentiment import EMOTION_MAP, label_key, normalize_sentiment
from .sentiment import check as check_sentiment

DEFAULT_TEXT_COLUMN = "Sentence"
DEFAULT_EMOTION_COLUMN = "Emotion"
ANSWER, SENTIMENT = "Answer", "Sentiment"


class AnswerFileError(ValueError):
    """Bad input for answering a file; the message says what to change."""


def load_emotion_map(path) -> dict[str, str]:
    # Decoded like every text file (textfile); a misread label would match no emotion and stop the run.
    try:
        raw = json.loads(Path(path).read_text(encoding=textfile.encoding_of(path)))
    except textfile.NotText as err:
        raise AnswerFileError(f"--emotion-map {err}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise AnswerFileError(f"--emotion-map {path}: {getattr(err, 'strerror', None) or err}") from err
    if not isinstance(raw, dict) or not raw:
        raise AnswerFileError(f"--emotion-map {path}: expected a JSON object like {{\"행복\": 2, \"슬픔\": 1}}")
    out = {}
    for label, value in raw.items():
        try:
            out[label_key(label)] = normalize_sentiment(value)
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
    return bool(values) and sum(not sheet.NUMBER.match(v.strip()) for v in values) > len(values) / 2


def sentiments_for(frame, emotion_column: str | None, mapping: dict[str, str], unknown=None) -> list:
    """One sentiment per row as its emotion label maps it (`unknown` for a label not in the map;
    None: no emotion column, the run's sentiment), or an error naming rows and values."""
    if emotion_column is None:
        return [None] * len(frame)
    out, bad = [], {}
    for row, label in enumerate(frame[emotion_column].map(_cell_text)):
        key = label_key(label)
        if key in mapping:
            out.append(mapping[key])
        elif unknown is not None:
            out.append(unknown)
        else:
            bad.setdefault(label, []).append(row + 2)  # file line / spreadsheet row, after the header
            out.append(None)
    if bad:
        shown = "; ".join(f"{value!r} (rows {', '.join(map(str, rows[:5]))}{'...' if len(rows) > 5 else ''})"
                          for value, rows in list(bad.items())[:10])
        raise AnswerFileError(
            f"unknown emotion label(s) in column {emotion_column!r}: {shown}; "
            f"known: {', '.join(sorted(mapping))}. Pass --emotion-map FILE.json, or --unknown-emotion N to use "
            f"sentiment N for them."
        )
    return out


def read_rows(path):
    """A sheet's cells as a DataFrame of objects (evaluate's sample sheet reads through here)."""
    return sheet.read(path).frame


_cell_text = sheet.cell_text


def default_output(input_path) -> Path:
    p = Path(input_path)
    return p.with_name(f"{p.stem}.answered.xlsx")


# --- the run --------------------------------------------------------------------------------

@dataclass
class Summary:
    rows: int = 0
    answered: int = 0
    blank: int = 0
    resumed: int = 0
    formulas: int = 0
    seconds: float = 0.0
    output: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self):
        rate = self.answered / self.seconds if self.seconds else 0.0
        formulas = f", {self.formulas} formula(s) without a value" if self.formulas else ""
        return (f"{self.rows} rows: {self.answered} answered ({self.resumed} from a previous run), "
                f"{self.blank} blank (empty text){formulas}, {self.seconds:.1f} s ({rate:.1f} rows/s) -> {self.output}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how many rows are kept and how to go on."""


def answer_file(bot, input_path, output_path=None, text_column=None, emotion_column=None, sentiment=None,
                emotion_map=None, unknown_emotion=None, batch_size: int = engines.DEFAULT_BATCH_SIZE,
                model_params=None, progress: bool = True, **decoding) -> Summary:
    """Answer every row of `input_path` into `output_path` with `bot` (a Chatbot); see the module doc."""
    from .api import as_chatbot

    bot = as_chatbot(bot)
    input_path = Path(input_path)
    output_path = Path(output_path) if output_path else default_output(input_path)
    log_path = output_path.with_name(output_path.name + ".partial.jsonl")
    engines.check_batch_size(batch_size)
    sheet.check_output(output_path)
    refuse_overwriting(output_path, log_path, {"--input": input_path, "--emotion-map": emotion_map,
                                               "--model_params": model_params})
    table = sheet.read(input_path)
    frame = table.frame
    clash = [c for c in (ANSWER, SENTIMENT) if c in frame.columns]
    if clash:
        raise AnswerFileError(f"the input already has column(s) {clash}; rename them so no input data is overwritten")
    if emotion_column is not None and emotion_column not in frame.columns:
        raise AnswerFileError(f"--emotion-column {emotion_column!r} is not in the input; its columns are {list(frame.columns)}")
    if emotion_column is None and DEFAULT_EMOTION_COLUMN in frame.columns:
        emotion_column = DEFAULT_EMOTION_COLUMN
    column = choose_text_column(frame, text_column, emotion_column)
    mapping = load_emotion_map(emotion_map) if emotion_map else EMOTION_MAP
    try:
        sentiment, unknown_emotion = (None if v is None else check_sentiment(v) for v in (sentiment, unknown_emotion))
    except ValueError as err:
        raise AnswerFileError(f"--sentiment / --unknown-emotion: {err}") from None
    labelled = sentiments_for(frame, emotion_column, mapping, unknown_emotion)
    dec = bot.decoding_for(**decoding)
    texts, formulas = texts_of(table, column)
    # Each row's label, else the run's sentiment, else the bot's; `auto`: the classifier reads the sentence.
    sentiments = [s for s, _ in bot.resolve_sentiments(texts, [sentiment if s is None else s for s in labelled])]
    todo = [i for i, t in enumerate(texts) if t]

    summary = Summary(rows=len(frame), blank=len(texts) - len(todo) - len(formulas), formulas=len(formulas),
                      output=str(output_path))
    summary.notes += filter(None, [textfile.note(input_path, table.encoding)])
    if formulas:
        summary.notes.append(f"{_rows_text(formulas)} of column {column!r} hold a formula with no saved value "
                             f"(a program other than Excel wrote the file); they were not answered. Open and save "
                             f"the file in Excel, or put the sentence itself in the cell")
    # The grounding mode is part of how rows were answered: a resumed run in another mode starts over.
    fingerprint = _fingerprint(input_path, column, sentiments, model_params,
                               [*sorted(decoding.items()), ("grounding", bot.grounding)])
    answers = answer_rows(bot, {i: texts[i] for i in todo}, sentiments, dec, log_path, fingerprint,
                          batch_size, progress, summary)
    summary.notes += write_output(table, output_path, log_path, {
        ANSWER: [answers.get(i, "") for i in range(len(texts))], SENTIMENT: [int(s) for s in sentiments]})
    log_path.unlink(missing_ok=True)
    return summary


def write_output(table, output_path: Path, log_path: Path, added: dict) -> list[str]:
    """The output file, or, when it cannot be written, a message saying the answers are safe in the log."""
    again = f"the answers are kept in {log_path}; the same command writes the file without answering again"
    try:
        return table.write(output_path, added)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while writing {output_path}: {again}") from None
    except OSError as err:  # a full disk, a folder taken away: the output is not there, the work is not lost
        raise AnswerFileError(f"could not write {output_path} ({err.strerror or err}); {again}") from None


def refuse_overwriting(output: Path, log: Path, given: dict):
    """No file the user gave (the input, a map, a checkpoint) may become the output or the progress log."""
    for flag, path in given.items():
        if not path or not os.path.isfile(path):
            continue
        for target, what in ((output, "--output"), (log, f"the progress file of --output {output}")):
            if target.exists() and os.path.samefile(path, target):
                raise AnswerFileError(f"{what} is {flag} {path} itself; answering never overwrites a file you "
                                      f"gave: choose another --output")


def texts_of(table, column: str) -> tuple[list[str], list[int]]:
    """The sentence of each row, and the rows whose cell is a formula with no value saved beside it.

    A formula cell is answered by the value Excel saved for it, the text the user sees."""
    cells = table.column(column)
    saved = table.saved_values(column) if any(isinstance(c, sheet.Formula) for c in cells) else None
    texts, formulas = [], []
    for i, cell in enumerate(cells):
        if isinstance(cell, sheet.Formula):
            cell = saved[i]
            if cell is None:
                formulas.append(i)
        texts.append(sheet.cell_text(cell).strip())
    return texts, formulas


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(str(i + 2) for i in rows[:10])  # spreadsheet rows: the header is row 1
    return f"{len(rows)} row(s) ({shown}{', ...' if len(rows) > 10 else ''})"


def _fingerprint(input_path, text_column, sentiments, model_params, decoding) -> str:
    digest = hashlib.sha256()
    digest.update(chatdata.sha256_of(input_path).encode())
    stat = os.stat(model_params) if model_params and os.path.exists(model_params) else None
    digest.update(json.dumps([text_column, sentiments, str(model_params), stat and stat.st_size,
                              stat and stat.st_mtime_ns, decoding], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def answer_rows(bot, texts: dict[int, str], sentiments, dec, log_path: Path, fingerprint: str, batch_size: int,
                progress: bool, summary: Summary) -> dict[int, str]:
    """Answers for `texts` (row -> sentence), saving each batch to the progress log and reusing what it holds."""
    from tqdm.auto import tqdm

    log, answers = open_log(log_path, fingerprint, set(texts))
    summary.resumed = len(answers)
    remaining = [i for i in texts if i not in answers]
    start = time.perf_counter()
    try:
        with log, tqdm(total=len(texts), initial=len(answers), unit="row", desc="answering",
                       disable=not progress) as bar:
            prompts = dict(zip(remaining, bot.prompts([texts[i] for i in remaining],
                                                      [sentiments[i] for i in remaining], decoding=dec)))
            remaining.sort(key=lambda i: -len(prompts[i]))  # longest first: like lengths waste little padding
            for at in range(0, len(remaining), batch_size):
                chunk = remaining[at : at + batch_size]
                made = (bot.complete([prompts[i] for i in chunk], dec, batch_size) if bot.grounding == "generate" else
                        bot.replies([texts[i] for i in chunk], [sentiments[i] for i in chunk], batch_size=batch_size,
                                    **vars(dec)))  # --grounding retrieve|rerank
                for i, reply in zip(chunk, made):
                    answers[i] = reply.text
                    log.write(json.dumps({"row": i, "answer": answers[i]}, ensure_ascii=False) + "\n")
                log.flush()
                os.fsync(log.fileno())
                bar.update(len(chunk))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {len(answers)} of {len(texts)} rows are answered and kept in {log_path}; "
                          f"run the same command again to go on from there") from None
    except OSError as err:  # the progress log's disk is full: stop rather than answer what cannot be kept
        raise AnswerFileError(f"could not save progress in {log_path} ({err.strerror or err}); the rows saved "
                              f"before are kept: make room and run the same command again") from None
    summary.seconds = time.perf_counter() - start
    summary.answered = len(answers)
    return answers


def open_log(path: Path, fingerprint: str, wanted: set[int]):
    """(the progress log open for appending, the answers it already holds for this very job).

    A line cut short by an interruption is cut off before appending, so the rows after it are kept
    however often a run is interrupted; the log of another job (input, model, decoding) starts over."""
    answers, end = read_log(path, fingerprint, wanted)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # only now: a run refused earlier leaves no empty folder
        if end is None:
            log = open(path, "w", encoding="utf-8")
            log.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        else:
            os.truncate(path, end)
            log = open(path, "a", encoding="utf-8")
    except OSError as err:
        raise AnswerFileError(f"--output {path.parent}: cannot write there ({err.strerror or err})") from None
    return log, answers


def read_log(path: Path, fingerprint: str, wanted: set[int]) -> tuple[dict[int, str], int | None]:
    """(row -> answer, the byte length of its whole lines), or ({}, None) when it is not this job's log."""
    if not path.is_file():  # a device or a folder in its place holds no progress
        return {}, None
    try:
        fh = open(path, "rb")
    except OSError:
        return {}, None
    answers = {}
    with fh:
        header = fh.readline()
        try:
            if not header.endswith(b"\n") or json.loads(header).get("fingerprint") != fingerprint:
                return {}, None
        except (ValueError, AttributeError):
            return {}, None
        end = len(header)
        for line in fh:
            if not line.endswith(b"\n"):
                break  # cut short by the interruption: that row is answered again
            end += len(line)
            try:
                item = json.loads(line)
                row, answer = int(item["row"]), item["answer"]
            except (ValueError, KeyError, TypeError):
                continue
            if row in wanted and isinstance(answer, str):
                answers[row] = answer
    return answers, end
