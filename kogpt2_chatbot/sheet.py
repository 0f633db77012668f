"""A user's sheet as it is: read a table cell for cell, write it back with added columns, nothing changed.

- .xlsx/.xlsm: read with openpyxl, so a formula cell stays a formula (`Formula`, its text) and dates,
  times, numbers and booleans keep their types. The first sheet is the table, its first row the header.
- .csv/.tsv/.txt: every cell is the very text of the file (the csv module; no type guessing), decoded
  and separated by `textfile`'s rule (UTF-8, or the cp949 and UTF-16 of Korean Excel; a .txt is Excel's
  tab-separated text); written back as UTF-8.
- .jsonl: one JSON object a line, values with their JSON types (lists and objects included); a key
  that a record lacks stays absent (`MISSING`).

Writing (`Sheet.write`) goes by the output's extension. An .xlsx written from an .xlsx input is the
input's own workbook with the new columns added, so other sheets, formulas, styles and widths stay.
Types a format cannot hold become text (a list in .xlsx: its JSON; a date in .jsonl: ISO 8601); a CSV
cell that Excel would run as a formula is written with a leading `'` only where the user's file did
not already hold it as CSV text. Every file appears atomically: a temporary file beside it, then a rename.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import textfile

INPUT_SUFFIXES = (".xlsx", ".xlsm", ".csv", ".tsv", ".txt", ".jsonl")
OUTPUT_SUFFIXES = (".xlsx", ".csv", ".tsv", ".txt", ".jsonl")
# OWASP's CSV-injection list: a cell starting with one of these is a formula to Excel/LibreOffice.
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
EXCEL_CELL_CHARS = 32_767  # Excel's limit on the text of one cell
_EXACT_IN_EXCEL = 2**53  # larger integers lose digits as Excel numbers: they are written as text


class SheetError(ValueError):
    """A table that cannot be read or written; the message names the file and what is wrong."""


class Formula(str):
    """A spreadsheet formula cell, as its text ("=SUM(1,2)"); written back to .xlsx as a formula."""


class _Missing:
    def __repr__(self):
        return "MISSING"


MISSING = _Missing()  # a key that a JSONL record lacks: written back absent (empty in a table)


@dataclass
class Sheet:
    path: Path
    kind: str                  # "xlsx", "csv" or "jsonl": where the cells came from
    header: list               # the header cells as they were (None where empty)
    names: list[str]           # unique column names for choosing columns ("Unnamed: 2", "a.1", ...)
    rows: list[list]           # the cells, as read
    book: object = None        # an .xlsx input's workbook (openpyxl), written back with the new columns
    notes: list[str] = field(default_factory=list)  # what an .xlsx written from this workbook cannot keep
    encoding: str | None = None  # how a text input was decoded (textfile's rule); None for a workbook

    def column(self, name: str) -> list:
        at = self.names.index(name)
        return [row[at] for row in self.rows]

    @property
    def frame(self):
        """The cells as a pandas DataFrame of objects, columns by their unique names."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.names, dtype=object)

    def saved_values(self, name: str) -> list:
        """What the program that last saved the workbook computed for each cell of a column (None
        where it saved nothing: openpyxl and some converters write formulas without a value)."""
        if self.book is None:
            return [None] * len(self.rows)
        from openpyxl import load_workbook

        at = self.names.index(name)
        book = load_workbook(self.path, read_only=True, data_only=True)
        try:
            cells = book.worksheets[0].iter_rows(min_row=2, max_row=len(self.rows) + 1, min_col=at + 1,
                                                 max_col=at + 1, values_only=True)
            values = [row[0] if row else None for row in cells]
        finally:
            book.close()
        return values + [None] * (len(self.rows) - len(values))

    def write(self, path, added: dict[str, list]) -> list[str]:
        """Write every cell plus the `added` columns to `path` (by extension); returns notes for the user."""
        from .checkpoint import atomic_path  # the kit's one temporary-file-then-rename (it loads torch)

        path = Path(path)
        suffix = check_output(path)
        rows = [[*row, *extra] for row, extra in zip(self.rows, zip(*added.values()))] if added else self.rows
        header = [*self.header, *added]
        notes = []
        with atomic_path(path) as tmp:
            if suffix == ".xlsx" and self.book is not None:
                notes += self.notes + _add_to_book(self.book, len(self.header), added, tmp).notes(path)
            elif suffix == ".xlsx":
                notes += _write_xlsx(header, rows, tmp).notes(path)
            elif suffix == ".jsonl":
                _write_jsonl([*self.names, *added], rows, tmp)
            else:
                _write_csv(header, rows, tmp, textfile.written_separator(path),
                           verbatim=len(self.header) if self.kind == "csv" else 0)
        others = [s.title for s in self.book.worksheets[1:]] if self.book is not None else []
        if others and suffix != ".xlsx":
            notes.append(f"the workbook's other sheet(s) {', '.join(map(repr, others))} are not in {path.name} "
                         f"({suffix} holds one table); write .xlsx to keep them")
        if self.path.suffix.lower() == ".xlsm" and suffix == ".xlsx":
            notes.append(f"the macros of {self.path.name} are not kept in {path.name} (.xlsx holds no macros)")
        return notes


def check_output(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise SheetError(f"--output {path}: unsupported type {suffix!r}; use {', '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise SheetError(f"--output {path} is a folder; give a file name such as {path / 'answers.xlsx'}")
    return suffix


# --- reading ---------------------------------------------------------------------------------

def read(path) -> Sheet:
    """The table in `path` as the user has it (see the module doc)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise SheetError(f"{path} is a folder; give the file to answer ({', '.join(INPUT_SUFFIXES)})")
    if suffix not in INPUT_SUFFIXES:
        raise SheetError(f"{path}: unsupported file type {suffix!r}; use {', '.join(INPUT_SUFFIXES)}")
    if not path.is_file():
        raise SheetError(f"no such file: {path}" if not path.exists() else f"{path} is not a file")
    try:
        if suffix in (".xlsx", ".xlsm"):
            return _read_xlsx(path)
        encoding = textfile.encoding_of(path)
        if suffix == ".jsonl":
            return _read_jsonl(path, encoding)
        return _read_csv(path, textfile.separator(path, encoding), encoding)
    except textfile.NotText as err:
        raise SheetError(str(err)) from None
    except OSError as err:
        raise SheetError(f"could not read {path}: {err.strerror or err}") from None


def _read_xlsx(path: Path) -> Sheet:
    from openpyxl import load_workbook

    try:  # not read-only: an .xlsx output is this very workbook with the answers added
        with warnings.catch_warnings(record=True) as dropped:  # parts openpyxl cannot keep, said as notes
            warnings.simplefilter("always")
            book = load_workbook(path, rich_text=True)  # so a rewritten workbook keeps bold words inside a cell
    except Exception as err:  # zipfile, XML and openpyxl each raise their own kind for a damaged file
        raise SheetError(f"{path} is not a readable Excel workbook ({type(err).__name__}: {err}); is it cut "
                         f"short, or another kind of file renamed {path.suffix}?") from None
    grid = [[_xlsx_cell(c) for c in row] for row in book.worksheets[0].iter_rows()]
    while grid and all(v is None for v in grid[-1]):  # formatted but empty rows at the end are not data
        grid.pop()
    width = max((i + 1 for row in grid for i, v in enumerate(row) if v is not None), default=0)
    grid = [row[:width] for row in grid]
    if not grid:
        raise SheetError(f"{path}: the first sheet is empty (no header row)")
    lost = sorted({str(w.message) for w in dropped})
    notes = [f"{path.name}: {', '.join(lost)} (openpyxl, which reads and writes .xlsx, keeps all else)"] if lost else []
    return Sheet(path, "xlsx", grid[0], unique_names(grid[0]), grid[1:], book=book, notes=notes)


def _xlsx_cell(cell):
    from openpyxl.cell.rich_text import CellRichText

    if cell.data_type == "f":  # an array formula is an object holding its text
        return Formula(getattr(cell.value, "text", None) or cell.value)
    if isinstance(cell.value, CellRichText):  # text in runs of fonts: its text, for every other format
        return str(cell.value)
    return cell.value


def _read_csv(path: Path, sep: str, encoding: str) -> Sheet:
    csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**63 - 1)  # a long cell is data, not an error
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        try:
            grid = [(reader.line_num, row) for row in reader]
        except csv.Error as err:
            raise SheetError(f"{path} line {reader.line_num}: {err}") from None
    if not grid:
        raise SheetError(f"{path} is empty (no header row)")
    header = grid[0][1]
    for line, row in grid[1:]:
        if len(row) > len(header):
            raise SheetError(f"{path} line {line}: {len(row)} cells but the header has {len(header)}; "
                             f"a cell holding {sep!r} must be in double quotes")
    rows = [row + [""] * (len(header) - len(row)) for _, row in grid[1:]]
    return Sheet(path, "csv", header, unique_names(header), rows, encoding=encoding)


def _read_jsonl(path: Path, encoding: str) -> Sheet:
    with open(path, encoding=encoding) as fh:
        records = [_record(path, number, line) for number, line in enumerate(fh, 1) if line.strip()]
    names = list(dict.fromkeys(key for record in records for key in record))
    return Sheet(path, "jsonl", list(names), names, [[r.get(k, MISSING) for k in names] for r in records],
                 encoding=encoding)


def _record(path: Path, number: int, line: str) -> dict:
    """One JSONL line as a record; `number` is its line in the file (blank lines count), as an editor shows it."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SheetError(f"{path} line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(record, dict):
        raise SheetError(f"{path} line {number}: expected an object {{\"column\": value, ...}}, "
                         f"got {type(record).__name__}")
    return record


def unique_names(header: list) -> list[str]:
    """Column names to choose by, pandas' way: an empty header cell is `Unnamed: N`, a repeat `a.1`."""
    names, seen = [], set()
    for i, cell in enumerate(header):
        base = cell_text(cell) or f"Unnamed: {i}"
        name, n = base, 0
        while name in seen:
            n += 1
            name = f"{base}.{n}"
        seen.add(name)
        names.append(name)
    return names


def cell_text(value) -> str:
    """A cell as text: empty for an empty cell, 3 for 3.0 (spreadsheets store whole numbers so)."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"  # what Excel writes, and reads back as a boolean
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity: as JSON spells them
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_IN_EXCEL:
        return str(int(value))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _iso(value, " ")
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# --- writing (atomically: checkpoint.atomic_path, the kit's one temporary-file-then-rename) ------

def _csv_cell(value, verbatim: bool):
    if not isinstance(value, str) or isinstance(value, Formula):
        return cell_text(value)
    if not verbatim and value.startswith(CSV_FORMULA_START) and not NUMBER.match(value):
        return "'" + value
    return value


def _write_csv(header, rows, path, sep: str, verbatim: int):
    """`verbatim`: how many leading columns hold a CSV input's own text, written exactly as it was."""
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        out = csv.writer(fh, delimiter=sep)  # RFC 4180 line ends: a lone "\r" in a cell gets quoted too
        out.writerow([_csv_cell(v, i < verbatim) for i, v in enumerate(header)])
        for row in rows:
            out.writerow([_csv_cell(v, i < verbatim) for i, v in enumerate(row)])


def json_value(value):
    """A cell as a JSON value: JSON's own types as they are, dates as ISO 8601 text, a formula as its text."""
    if isinstance(value, Formula):
        return str(value)
    if isinstance(value, (str, bool, int, float, list, dict)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _iso(value, "T")
    return str(value)


def _iso(value, sep: str) -> str:
    """ISO 8601; a spreadsheet's date (a datetime at midnight) as the date alone, as Excel shows it."""
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(sep=sep)
    return value.isoformat()


def _write_jsonl(names, rows, path):
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            record = {k: json_value(v) for k, v in zip(names, row) if v is not MISSING}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _fits_a_cell(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)  # Excel has no NaN or infinity


class _XlsxCells:
    """Turns values into what an .xlsx cell can hold, counting the cells that lost characters."""

    def __init__(self):
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        self.illegal, self.cleaned, self.long = ILLEGAL_CHARACTERS_RE, 0, 0

    def value(self, value):
        """(value, is_text): is_text marks a string that must never become a formula."""
        if value is MISSING or value is None:
            return None, False
        if isinstance(value, Formula):
            return str(value), False
        if isinstance(value, (bool, float, dt.datetime, dt.date, dt.time, dt.timedelta)) and _fits_a_cell(value):
            return value, False
        if isinstance(value, int) and abs(value) < _EXACT_IN_EXCEL:
            return value, False
        value = cell_text(value)  # lists and objects as JSON, numbers no Excel number holds as text
        if self.illegal.search(value):
            value, self.cleaned = self.illegal.sub("", value), self.cleaned + 1
        self.long += len(value) > EXCEL_CELL_CHARS
        return value, True

    def notes(self, path) -> list[str]:
        notes = []
        if self.cleaned:
            notes.append(f"{self.cleaned} cell(s) held control characters that .xlsx cannot store; they were "
                         f"removed in {path.name} (write .csv or .jsonl to keep them)")
        if self.long:
            notes.append(f"{self.long} cell(s) are longer than the {EXCEL_CELL_CHARS:,} characters an Excel cell "
                         f"holds; they were cut to that in {path.name} (write .csv or .jsonl to keep them whole)")
        return notes


def _write_xlsx(header, rows, path) -> _XlsxCells:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    book = Workbook(write_only=True)
    sheet = book.create_sheet()
    cells = _XlsxCells()

    def cell(value):
        value, is_text = cells.value(value)
        out = WriteOnlyCell(sheet, value=value)
        if is_text:
            out.data_type = "s"  # text, never a formula (openpyxl would store "=..." as one)
        return out

    sheet.append([cell(v) for v in header])
    for row in rows:
        sheet.append([cell(v) for v in row])
    book.save(path)
    return cells


def _add_to_book(book, width: int, added: dict[str, list], path) -> _XlsxCells:
    sheet = book.worksheets[0]
    cells = _XlsxCells()
    for j, (name, values) in enumerate(added.items(), start=width + 1):
        for i, value in enumerate([name, *values], start=1):
            value, is_text = cells.value(value)
            cell = sheet.cell(row=i, column=j, value=value)
            if is_text:
                cell.data_type = "s"
    book.save(path)
    return cells
