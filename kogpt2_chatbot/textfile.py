"""How text a user gives is decoded: the one rule for every CSV, TSV, TXT, JSONL, JSON (the emotion map)
and piped line the kit reads.

- UTF-8, with or without a byte-order mark (Notepad's and Excel's "CSV UTF-8"), is read as it is.
- A UTF-16 byte-order mark (Excel's "유니코드 텍스트") means UTF-16.
- Any other file is tried as cp949, the superset of EUC-KR that Korean Windows writes: Excel's plain
  "CSV (쉼표로 분리)" and Notepad's "ANSI" save it. Reading it is lossless, and `note()` says it was
  done, so that a file of another encoding that happens to decode is not taken as Korean silently.
- A file that is none of these is refused with the byte where it stops being UTF-8.

A text table's cells are separated by a comma in .csv and by a tab in .tsv. A .txt is what Excel's
"텍스트 (탭으로 분리)" (cp949) and "유니코드 텍스트" (UTF-16) save: tab-separated, so a .txt whose first
line holds a tab is read so, any other .txt as comma-separated (`separator`).

Files the kit writes are UTF-8 (CSV with a byte-order mark, which Excel needs to open it as UTF-8).
"""
from __future__ import annotations

import codecs
from pathlib import Path

UTF8, UTF16, KOREAN_WINDOWS = "utf-8-sig", "utf-16", "cp949"
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
_CHUNK = 1 << 20


class NotText(ValueError):
    """Bytes that no encoding the kit reads can decode; the message says where and what to do."""


def encoding_of(path) -> str:
    """The encoding to open `path` with: UTF8, UTF16 or KOREAN_WINDOWS (see the module doc)."""
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return UTF16
    failure = _first_error(path, UTF8)
    if failure is None:
        return UTF8
    if _first_error(path, KOREAN_WINDOWS) is None:
        return KOREAN_WINDOWS
    reason, at = failure
    raise NotText(f"{path} is not UTF-8 text ({reason} at byte {at:,}), nor Korean Windows text (cp949, "
                  f"EUC-KR); save it as UTF-8")


def separator(path, encoding: str) -> str:
    """The cell separator of the text table `path`, opened with `encoding` (see the module doc)."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        with open(path, encoding=encoding, newline="") as fh:
            return "\t" if "\t" in fh.readline() else ","
    return written_separator(path)


def written_separator(path) -> str:
    """The separator the kit writes a text table with: a tab in .tsv and in .txt (as Excel's text exports)."""
    return "\t" if Path(path).suffix.lower() in (".tsv", ".txt") else ","


def decode(raw: bytes) -> tuple[str, str]:
    """One piece of text that comes without a file (a line of a pipe) by the same rule: (text, encoding).
    Raises UTF-8's UnicodeDecodeError when cp949 cannot read it either."""
    try:
        return raw.decode("utf-8"), UTF8
    except UnicodeDecodeError as err:
        try:
            return raw.decode(KOREAN_WINDOWS), KOREAN_WINDOWS
        except UnicodeDecodeError:
            raise err from None


def note(path, encoding: str) -> str | None:
    """What a user should be told about how `path` was read, or None when it was plain UTF-8."""
    if encoding == KOREAN_WINDOWS:
        return (f"{Path(path).name} is not UTF-8; it was read as cp949 (EUC-KR), the encoding of Korean "
                f"Windows and Excel's plain CSV. If its letters look wrong, save it as UTF-8")
    return None


def _first_error(path: Path, encoding: str) -> tuple[str, int] | None:
    """(reason, byte offset) of the first byte `encoding` cannot decode, read in chunks; None if it all decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of a character the last chunk cut in two
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                return err.reason, offset - pending + err.start
            if not chunk:
                return None
            offset += len(chunk)
