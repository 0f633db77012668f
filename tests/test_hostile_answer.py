"""`answer` (chatbot.py) and evaluate's data path against bad input: one line, exit 2, nothing a user gave changed."""
import hashlib
import os

import openpyxl
import pytest

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.__main__ import main
from kogpt2_chatbot.api import Chatbot


@pytest.fixture(scope="module")
def ckpt(trained_dir):
    return str(trained_dir / "model_-last.ckpt")


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as err:
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]


def digest(folder):
    """Every file under `folder` with its bytes' hash: what a run must leave as it was."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def sheet_csv(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("Sentence\n배고파\n\"=SUM(1,2)\"\n", encoding="utf-8")
    return path


def workbook(tmp_path):
    path = tmp_path / "in.xlsx"
    book = openpyxl.Workbook()
    book.active.append(["Sentence"])
    book.active.append(["배고파"])
    book.save(path)
    return path


def case(tmp_path, name):
    """(arguments after `answer`, the text the one error line must hold)."""
    csv_in = sheet_csv(tmp_path)
    if name == "fake xlsx":
        (tmp_path / "fake.xlsx").write_text("Sentence\n배고파\n", encoding="utf-8")
        return ["--input", str(tmp_path / "fake.xlsx")], "is not a readable Excel workbook"
    if name == "cut xlsx":
        whole = workbook(tmp_path).read_bytes()
        (tmp_path / "cut.xlsx").write_bytes(whole[: len(whole) * 2 // 3])
        return ["--input", str(tmp_path / "cut.xlsx")], "cut short"
    if name == "output is the input":
        return ["--input", str(csv_in), "--output", str(csv_in)], "--output is --input"
    if name == "output is the input by another path":
        (tmp_path / "sub").mkdir()
        return ["--input", str(csv_in), "--output", str(tmp_path / "sub" / ".." / "in.csv")], "--output is --input"
    if name == "output is a link to the input":
        os.symlink(csv_in, tmp_path / "link.csv")
        return ["--input", str(csv_in), "--output", str(tmp_path / "link.csv")], "--output is --input"
    if name == "output is a hard link to the input":
        os.link(csv_in, tmp_path / "hard.csv")
        return ["--input", str(csv_in), "--output", str(tmp_path / "hard.csv")], "--output is --input"
    if name == "progress file is the input":
        log = tmp_path / "o.csv.partial.jsonl"
        log.write_text('{"Sentence": "배고파"}\n', encoding="utf-8")
        return ["--input", str(log), "--output", str(tmp_path / "o.csv")], "the progress file of --output"
    if name == "broken jsonl":
        (tmp_path / "in.jsonl").write_text('{"Sentence": "a"}\n\n{"Sentence": "b"\n', encoding="utf-8")
        return ["--input", str(tmp_path / "in.jsonl")], "in.jsonl line 3: not valid JSON"
    if name == "unsupported output":
        return ["--input", str(csv_in), "--output", str(tmp_path / "o.xls")], "unsupported type '.xls'"
    if name == "output is a folder":
        (tmp_path / "folder.csv").mkdir()
        return ["--input", str(csv_in), "--output", str(tmp_path / "folder.csv")], "is a folder"
    if name == "output under a file":
        return ["--input", str(csv_in), "--output", str(csv_in / "o.csv")], "cannot"
    if name == "not text":  # 0xff starts no character in UTF-8 or in cp949
        (tmp_path / "ko.csv").write_bytes("Sentence\n배고파\n".encode() + b"\xff\xfe\xff\n")
        return ["--input", str(tmp_path / "ko.csv")], "ko.csv is not UTF-8 text (invalid start byte at byte 19)"
    if name == "empty csv":
        (tmp_path / "empty.csv").write_bytes(b"")
        return ["--input", str(tmp_path / "empty.csv")], "is empty"
    if name == "ragged csv":
        (tmp_path / "rag.csv").write_text("Sentence\n배고파,덤\n", encoding="utf-8")
        return ["--input", str(tmp_path / "rag.csv")], "line 2: 2 cells but the header has 1"
    if name == "missing input":
        return ["--input", str(tmp_path / "none.csv")], "no such file"
    if name == "missing text column":
        return ["--input", str(csv_in), "--text-column", "utterance"], "--text-column 'utterance' is not in the input"
    if name == "answer column exists":
        (tmp_path / "has.csv").write_text("Sentence,Answer\n배고파,내 답\n", encoding="utf-8")
        return ["--input", str(tmp_path / "has.csv")], "already has column(s) ['Answer']"
    if name == "bad emotion map":
        (tmp_path / "map.json").write_text("[1, 2]", encoding="utf-8")
        return ["--input", str(csv_in), "--emotion-map", str(tmp_path / "map.json")], "expected a JSON object"
    if name == "input is a folder":
        (tmp_path / "sheets").mkdir()
        return ["--input", str(tmp_path / "sheets")], "sheets is a folder; give the file to answer"
    if name == "emotion map not text":
        (tmp_path / "map.json").write_bytes(b'{"\xff": 2}')
        return ["--input", str(csv_in), "--emotion-map", str(tmp_path / "map.json")], "map.json is not UTF-8 text"
    if name == "emotion map not json":
        (tmp_path / "map.json").write_text("행복=2", encoding="utf-8")
        return ["--input", str(csv_in), "--emotion-map", str(tmp_path / "map.json")], "map.json: Expecting value"
    raise KeyError(name)


CASES = ["fake xlsx", "cut xlsx", "output is the input", "output is the input by another path",
         "output is a link to the input", "output is a hard link to the input", "progress file is the input",
         "broken jsonl", "unsupported output", "output is a folder", "output under a file", "not text", "empty csv",
         "ragged csv", "missing input", "missing text column", "answer column exists",
         "bad emotion map", "emotion map not text", "emotion map not json", "input is a folder"]


@pytest.mark.parametrize("name", CASES)
def test_bad_answer_input_is_one_line_and_changes_nothing(ckpt, tmp_path, capsys, name):
    argv, message = case(tmp_path, name)
    before = digest(tmp_path)
    code, out, err = run(["answer", "--model_params", ckpt, "--no-progress", *argv], capsys)
    assert code == 2 and message in one_error_line(err), err
    assert digest(tmp_path) == before  # no input touched, no output or progress file left behind


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(ckpt, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.csv"
    src.write_text("Sentence\n" + "".join(f"질문 {i}\n" for i in range(12)), encoding="utf-8")
    real, calls = Chatbot.complete, {"n": 0}

    def interrupted_on_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Chatbot, "complete", interrupted_on_second_batch)
    argv = ["answer", "--model_params", ckpt, "--no-progress", "--input", str(src), "--output",
            str(tmp_path / "o.csv"), "--batch-size", "4"]
    code, out, err = run(argv, capsys)
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"interrupted: 4 of 12 rows are answered and kept in "
                                            f"{tmp_path / 'o.csv.partial.jsonl'}; run the same command again to "
                                            f"go on from there")
    monkeypatch.setattr(Chatbot, "complete", real)
    code, out, err = run(argv, capsys)
    assert code in (0, None) and "12 rows: 12 answered (4 from a previous run)" in out


def test_evaluate_never_scores_the_default_corpus_in_place_of_a_missing_file(ckpt, tmp_path, capsys, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("the default corpus was fetched")

    monkeypatch.setattr(chatdata, "fetch_default_corpus", no_download)
    code, out, err = run(["evaluate", "--model_params", ckpt, "--data", str(tmp_path / "missing.csv"),
                          "--out", str(tmp_path / "eval")], capsys)
    assert code == 2 and "no such file" in one_error_line(err) and "missing.csv" in err


def test_only_the_default_path_is_downloaded(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(chatdata, "fetch_default_corpus", lambda: fetched.append(1) or tmp_path / "corpus.csv")
    assert chatdata.corpus_path(None) == tmp_path / "corpus.csv"
    assert chatdata.corpus_path("./" + chatdata.DEFAULT_DATA) == tmp_path / "corpus.csv" and len(fetched) == 2
    with pytest.raises(chatdata.DataError, match="no such file: elsewhere.csv"):
        chatdata.corpus_path("elsewhere.csv")


def test_a_full_disk_keeps_the_answers_and_says_so(ckpt, tmp_path, capsys, monkeypatch):
    import errno

    from kogpt2_chatbot import sheet

    src = sheet_csv(tmp_path)
    out, log = tmp_path / "o.csv", tmp_path / "o.csv.partial.jsonl"
    argv = ["answer", "--model_params", ckpt, "--no-progress", "--input", str(src), "--output", str(out)]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sheet, "_write_csv", full)
    code, _, err = run(argv, capsys)
    line = one_error_line(err)
    assert code == 2 and "No space left on device" in line and f"kept in {log}" in line
    assert not out.exists() and log.exists()
    monkeypatch.undo()

    def no_generation(*args, **kwargs):
        raise AssertionError("answered again")

    monkeypatch.setattr(Chatbot, "complete", no_generation)
    code, stdout, _ = run(argv, capsys)
    assert code in (0, None) and "2 rows: 2 answered (2 from a previous run)" in stdout and out.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full, a file whose disk is always full")
def test_a_progress_log_on_a_full_disk_stops_with_one_line(ckpt, tmp_path, capsys):
    src = sheet_csv(tmp_path)
    os.symlink("/dev/full", tmp_path / "o.csv.partial.jsonl")  # every write there fails with ENOSPC, as on a full disk
    code, _, err = run(["answer", "--model_params", ckpt, "--no-progress", "--input", str(src), "--output",
                        str(tmp_path / "o.csv")], capsys)
    assert code == 2 and "No space left on device" in one_error_line(err)
    assert not (tmp_path / "o.csv").exists() and src.read_text(encoding="utf-8").startswith("Sentence\n")
