"""Every kind of cell comes back as it went in, in every output format (no model needed)."""
import csv
import datetime as dt
import json
import os
import stat

import openpyxl
import pytest

from kogpt2_chatbot import sheet as S

ANSWERS = ["=1+1", "\t=1+1", "\r=1+1", "+82 10", "-5", "안녕"]
ADDED = {"Answer": ANSWERS, "Sentiment": [0, 1, 2, 0, 1, 2]}


def xlsx_input(path):
    """A workbook as Excel users make them: formulas, dates, text that looks like a formula, two sheets."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "talk"
    sheet.append(["Sentence", "formula", "link", "date", "time", "when", "n", "x", "ok", "note", "big"])
    rows = [
        ["배고파", "=SUM(1,2)", '=HYPERLINK("http://x.kr","x")', dt.date(2024, 1, 2), dt.time(12, 30),
         dt.datetime(2024, 1, 2, 3, 4, 5), 3, 0.25, True, "+82 10", 10**15],
        ["심심해", "=A2&\"!\"", None, None, None, None, -1, 1e-9, False, "=not a formula", None],
        ["졸려", None, None, dt.date(1999, 12, 31), None, None, 0, 2.5, None, "@멘션", None],
        ["", None, None, None, None, None, None, None, None, "-불만", None],
        ["잘자", None, None, None, None, None, None, None, None, None, None],
        ["안녕", None, None, None, None, None, None, None, None, None, None],
    ]
    for row in rows:
        sheet.append(row)
    sheet["J3"].data_type = "s"  # text typed as '=not a formula: a string, not a formula
    other = book.create_sheet("notes")
    other["A1"], other["B1"] = "keep me", "=talk!G2*2"
    book.save(path)
    return path


def cells(path, title=None):
    book = openpyxl.load_workbook(path)
    sheet = book[title] if title else book.worksheets[0]
    return [[(c.value, c.data_type if c.value is not None else None) for c in row] for row in sheet.iter_rows()]


def test_xlsx_to_xlsx_keeps_every_cell_formula_and_sheet(tmp_path):
    src = xlsx_input(tmp_path / "in.xlsx")
    before = cells(src)
    table = S.read(src)
    assert isinstance(table.rows[0][1], S.Formula) and table.rows[0][1] == "=SUM(1,2)"
    assert table.rows[1][9] == "=not a formula" and not isinstance(table.rows[1][9], S.Formula)
    notes = table.write(tmp_path / "out.xlsx", ADDED)
    after = cells(tmp_path / "out.xlsx")
    assert [row[:11] for row in after] == before
    assert [row[11] for row in after] == [("Answer", "s"), *[(a, "s") for a in ANSWERS]]  # never formulas
    assert [row[12][0] for row in after] == ["Sentiment", 0, 1, 2, 0, 1, 2]
    assert cells(tmp_path / "out.xlsx", "notes") == cells(src, "notes")
    out = openpyxl.load_workbook(tmp_path / "out.xlsx").worksheets[0]
    assert out["D2"].number_format == "yyyy-mm-dd" and notes == []


def test_xlsx_to_csv_and_jsonl(tmp_path):
    table = S.read(xlsx_input(tmp_path / "in.xlsx"))
    notes = table.write(tmp_path / "out.csv", ADDED)
    with open(tmp_path / "out.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1][:11] == ["배고파", "=SUM(1,2)", '=HYPERLINK("http://x.kr","x")', "2024-01-02", "12:30:00",
                            "2024-01-02 03:04:05", "3", "0.25", "TRUE", "'+82 10", "1000000000000000"]
    # a formula stays a formula; the workbook's text that CSV would turn into one is escaped
    assert rows[2][1] == '=A2&"!"' and rows[2][9] == "'=not a formula" and rows[3][9] == "'@멘션"
    assert [r[11] for r in rows[1:]] == ["'=1+1", "'\t=1+1", "'\r=1+1", "'+82 10", "-5", "안녕"]
    assert "'notes'" in notes[0] and "write .xlsx to keep them" in notes[0]

    table.write(tmp_path / "out.jsonl", ADDED)
    first, second = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[:2]]
    assert first == {"Sentence": "배고파", "formula": "=SUM(1,2)", "link": '=HYPERLINK("http://x.kr","x")',
                     "date": "2024-01-02", "time": "12:30:00", "when": "2024-01-02T03:04:05", "n": 3,
                     "x": 0.25, "ok": True, "note": "+82 10", "big": 10**15, "Answer": "=1+1",
                     "Sentiment": 0}
    assert second["link"] is None and second["ok"] is False and second["note"] == "=not a formula"


JSONL_ROWS = [
    {"Sentence": "배고파", "tags": ["a", "b"], "meta": {"k": [1, {"z": None}]}, "n": 1, "x": 0.5, "ok": True,
     "big": 2**70, "f": "=1+1"},
    {"Sentence": "심심해", "n": None, "x": float("nan"), "ok": False},  # keys absent: they stay absent
    {"Sentence": "졸려", "tags": [], "meta": {}, "n": -3, "x": 1e300, "f": "+82 10"},
]


def test_jsonl_round_trip_and_typed_outputs(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in JSONL_ROWS) + "\n\n", encoding="utf-8")
    table = S.read(src)
    added = {"Answer": ["a", "b", "c"], "Sentiment": [0, 1, 2]}
    table.write(tmp_path / "out.jsonl", added)
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    for line, record, answer, sentiment in zip(lines, JSONL_ROWS, "abc", [0, 1, 2]):
        got = json.loads(line)
        assert list(got) == [*record, "Answer", "Sentiment"]
        assert json.dumps(got) == json.dumps({**record, "Answer": answer, "Sentiment": sentiment})

    table.write(tmp_path / "out.xlsx", added)
    sheet = openpyxl.load_workbook(tmp_path / "out.xlsx").active
    head = [c.value for c in sheet[1]]
    row = dict(zip(head, [c.value for c in sheet[2]]))
    assert row["tags"] == '["a", "b"]' and row["meta"] == '{"k": [1, {"z": null}]}'
    assert row["big"] == str(2**70) and row["n"] == 1 and row["ok"] is True and row["f"] == "=1+1"
    assert sheet.cell(row=2, column=head.index("f") + 1).data_type == "s"
    second = dict(zip(head, [c.value for c in sheet[3]]))
    assert second["x"] == "NaN" and second["tags"] is None

    table.write(tmp_path / "out.csv", added)
    with open(tmp_path / "out.csv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["tags"] == '["a", "b"]' and rows[0]["ok"] == "TRUE" and rows[0]["f"] == "'=1+1"
    assert rows[1]["x"] == "NaN" and rows[1]["n"] == "" and rows[2]["x"] == "1e+300" and rows[2]["f"] == "'+82 10"


def test_csv_cells_come_back_as_the_very_text(tmp_path):
    text = ('a,a,,Sentence\n'
            '"=SUM(1,2)",+82 10,-불만,@멘션\n'
            '007, spaced ,"two\nlines","쉼표, 따옴표 ""x"""\n'
            '\n'
            "'quoted,-5,,\n"
            'short\n')
    src = tmp_path / "in.csv"
    src.write_text(text, encoding="utf-8")
    table = S.read(src)
    assert table.names == ["a", "a.1", "Unnamed: 2", "Sentence"]
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        table.write(tmp_path / f"out{suffix}", {"Answer": ["=x", "y", "z", "w", "v"]})
        with open(tmp_path / f"out{suffix}", encoding="utf-8-sig", newline="") as fh:
            got = list(csv.reader(fh, delimiter=sep))
        with open(src, encoding="utf-8", newline="") as fh:
            want = [row + [""] * (4 - len(row)) for row in csv.reader(fh)]
        assert [row[:4] for row in got] == want  # the user's own cells: not one character changed
        assert [row[4] for row in got] == ["Answer", "'=x", "y", "z", "w", "v"]

    table.write(tmp_path / "out.xlsx", {"Answer": ["=x", "y", "z", "w", "v"]})
    sheet = openpyxl.load_workbook(tmp_path / "out.xlsx").active
    assert [(c.value, c.data_type) for c in sheet[2]] == [("=SUM(1,2)", "s"), ("+82 10", "s"), ("-불만", "s"),
                                                         ("@멘션", "s"), ("=x", "s")]
    assert [c.value for c in sheet[1]] == ["a", "a", None, "Sentence", "Answer"]  # the header as it was


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "is not a readable Excel workbook"),
    (b"PK\x03\x04" + b"\x00" * 40, "is not a readable Excel workbook"),
])
def test_fake_or_cut_workbooks_are_one_line(tmp_path, content, message):
    path = tmp_path / "in.xlsx"
    path.write_bytes(content)
    with pytest.raises(S.SheetError, match=message) as err:
        S.read(path)
    assert "\n" not in str(err.value) and "engine" not in str(err.value)


def test_a_truncated_workbook_is_refused(tmp_path):
    whole = xlsx_input(tmp_path / "whole.xlsx").read_bytes()
    path = tmp_path / "in.xlsx"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(S.SheetError, match="cut short"):
        S.read(path)


@pytest.mark.parametrize("name, content, message", [
    ("in.jsonl", '{"Sentence": "a"}\n\n{"Sentence": "b"}\n{"Sentence": "c",}\n', "line 4: not valid JSON"),
    ("in.jsonl", '{"Sentence": "a"}\n["b"]\n', "line 2: expected an object"),
    ("in.csv", "a,b\n1,2\n1,2,3\n", "line 3: 3 cells but the header has 2"),
    ("in.csv", "", "is empty"),
    ("in.xls", "a", "unsupported file type '.xls'"),
])
def test_bad_text_inputs_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(S.SheetError, match=message):
        S.read(path)


@pytest.mark.parametrize("encoding", ["cp949", "utf-16", "utf-8-sig"])
def test_korean_excel_and_unicode_text_are_read_and_written_back_as_utf8(tmp_path, encoding):
    """Korean Excel's plain "CSV" is cp949 and its "Unicode text" UTF-16: the same cells as UTF-8, written as UTF-8."""
    text = "Sentence,Emotion\n배고파,행복\n\"쉼표, 있는 칸\",똠방각하\n"
    (tmp_path / "in.csv").write_bytes(text.encode(encoding))
    table = S.read(tmp_path / "in.csv")
    assert table.encoding == encoding
    assert table.header == ["Sentence", "Emotion"] and table.rows == [["배고파", "행복"], ["쉼표, 있는 칸", "똠방각하"]]
    table.write(tmp_path / "out.csv", {"Answer": ["응", "그래"]})
    assert (tmp_path / "out.csv").read_bytes().decode("utf-8-sig").splitlines() == [
        "Sentence,Emotion,Answer", "배고파,행복,응", '"쉼표, 있는 칸",똠방각하,그래']


@pytest.mark.parametrize("encoding", ["utf-16", "cp949"])
def test_excel_text_exports_are_read_tab_separated(tmp_path, encoding):
    """Excel's "유니코드 텍스트" (UTF-16) and "텍스트 (탭으로 분리)" (cp949) save a tab-separated .txt."""
    text = 'Sentence\tEmotion\r\n배고파\t행복\r\n"쉼표, 있는\t칸"\t똠방각하\r\n'
    (tmp_path / "in.txt").write_bytes(text.encode(encoding))
    table = S.read(tmp_path / "in.txt")
    assert table.encoding == encoding and table.header == ["Sentence", "Emotion"]
    assert table.rows == [["배고파", "행복"], ["쉼표, 있는\t칸", "똠방각하"]]
    table.write(tmp_path / "out.txt", {"Answer": ["응", "그래"]})
    assert (tmp_path / "out.txt").read_bytes().decode("utf-8-sig").splitlines() == [
        "Sentence\tEmotion\tAnswer", "배고파\t행복\t응", '"쉼표, 있는\t칸"\t똠방각하\t그래']
    assert S.read(tmp_path / "out.txt").rows == [["배고파", "행복", "응"], ["쉼표, 있는\t칸", "똠방각하", "그래"]]


def test_a_txt_without_tabs_is_comma_separated(tmp_path):
    (tmp_path / "in.txt").write_text("Sentence,Emotion\n배고파,행복\n", encoding="utf-8")
    assert S.read(tmp_path / "in.txt").rows == [["배고파", "행복"]]


def test_jsonl_in_cp949_is_read(tmp_path):
    (tmp_path / "in.jsonl").write_bytes('{"Sentence": "배고파", "n": 1}\n'.encode("cp949"))
    table = S.read(tmp_path / "in.jsonl")
    assert table.encoding == "cp949" and table.rows == [["배고파", 1]]


def test_not_text_and_missing(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"Sentence\n\x80\x80\n")  # 0x80 starts no character in UTF-8 or in cp949
    with pytest.raises(S.SheetError, match=r"in.csv is not UTF-8 text \(invalid start byte at byte 9\), nor Korean"):
        S.read(path)
    with pytest.raises(S.SheetError, match="no such file"):
        S.read(tmp_path / "none.csv")


def test_output_appears_atomically_with_the_umask_mode(tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    src.write_text("Sentence\n배고파\n", encoding="utf-8")
    table = S.read(src)
    out = tmp_path / "out.xlsx"
    out.write_bytes(b"previous result")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(S, "_write_xlsx", broken)
    with pytest.raises(OSError, match="disk full"):
        table.write(out, {"Answer": ["x"]})
    assert out.read_bytes() == b"previous result" and sorted(os.listdir(tmp_path)) == ["in.csv", "out.xlsx"]
    monkeypatch.undo()
    old = os.umask(0o022)
    try:
        table.write(tmp_path / "new.csv", {"Answer": ["x"]})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.csv").st_mode) == 0o644


def test_cells_longer_than_excel_holds_are_noted(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"Sentence": "가" * 40_000}) + "\n", encoding="utf-8")
    table = S.read(src)
    notes = table.write(tmp_path / "out.xlsx", {"Answer": ["x"]})
    assert len(notes) == 1 and "1 cell(s) are longer than the 32,767 characters" in notes[0] and "out.xlsx" in notes[0]
    assert openpyxl.load_workbook(tmp_path / "out.xlsx").active["A2"].value == "가" * 32_767
    assert table.write(tmp_path / "out.csv", {"Answer": ["x"]}) == []
    assert S.read(tmp_path / "out.csv").rows[0][0] == "가" * 40_000


def test_what_openpyxl_cannot_keep_is_noted(tmp_path):
    import zipfile

    path = xlsx_input(tmp_path / "in.xlsx")
    with zipfile.ZipFile(path) as zin:
        parts = {name: zin.read(name) for name in zin.namelist()}
    ext = ('<extLst><ext uri="{CCE6A557-97BC-4b89-ADB6-D9C93CAAB3DF}" '
           'xmlns:x14="http://schemas.microsoft.com/office/spreadsheetml/2009/9/main">'
           '<x14:dataValidations count="0"/></ext></extLst></worksheet>')
    parts["xl/worksheets/sheet1.xml"] = parts["xl/worksheets/sheet1.xml"].replace(b"</worksheet>", ext.encode())
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in parts.items():
            zout.writestr(name, data)
    notes = S.read(path).write(tmp_path / "out.xlsx", ADDED)
    assert len(notes) == 1 and notes[0].startswith("in.xlsx: Data Validation extension is not supported")


def test_rich_text_stays_rich_in_the_workbook_and_is_text_elsewhere(tmp_path):
    from openpyxl.cell.rich_text import CellRichText, TextBlock
    from openpyxl.cell.text import InlineFont

    book = openpyxl.Workbook()
    book.active["A1"] = "Sentence"
    book.active["A2"] = CellRichText(["배", TextBlock(InlineFont(b=True), "고파")])
    book.save(tmp_path / "in.xlsx")
    table = S.read(tmp_path / "in.xlsx")
    assert table.rows == [["배고파"]]
    table.write(tmp_path / "out.xlsx", {"Answer": ["x"]})
    kept = openpyxl.load_workbook(tmp_path / "out.xlsx", rich_text=True).active["A2"].value
    assert isinstance(kept, CellRichText) and kept[1].font.b and str(kept) == "배고파"
