import json
from types import SimpleNamespace

import openpyxl
import pandas as pd
import pytest

from kogpt2_chatbot import answer_file as AF
from kogpt2_chatbot import sheet
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.module import KoGPT2Chat

from conftest import ROOT

SAMPLE = ROOT / "EC_data" / "sample_emotions.csv"


@pytest.fixture(scope="module")
def bot(trained_dir):
    return KoGPT2Chat.load_from_checkpoint(trained_dir / "model_-last.ckpt").eval()


def read(path):
    return AF.chatdata.read_table(path)


def test_sample_file_answered_with_emotions_in_both_languages(bot, tmp_path):
    out = tmp_path / "out.xlsx"
    summary = AF.answer_file(bot, SAMPLE, out, progress=False)
    frame = pd.read_excel(out, dtype=str, keep_default_na=False)
    src = pd.read_csv(SAMPLE, dtype=str)
    assert list(frame.columns) == ["Sentence", "Emotion", "Answer", "Sentiment"]
    assert list(frame.Sentence) == list(src.Sentence) and list(frame.Emotion) == list(src.Emotion)
    expected = {"Neutral": "0", "중립": "0", "Surprise": "0", "놀람": "0", "Angry": "1", "분노": "1", "Sadness": "1",
                "슬픔": "1", "Fear": "1", "공포": "1", "Disgust": "1", "혐오": "1", "Happiness": "2", "행복": "2"}
    assert list(frame.Sentiment) == [expected[e] for e in src.Emotion]
    assert list(frame.Answer) == bot.chat_batch(list(src.Sentence), [expected[e] for e in src.Emotion])
    assert summary.rows == summary.answered == 63 and summary.blank == 0


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".xlsx", ".jsonl"])
def test_formats_in_and_out(bot, tmp_path, suffix):
    frame = pd.DataFrame({"id": ["1", "2", "3"], "Sentence": ["배고파", "헤어졌어", "첫 데이트야"],
                          "Emotion": ["neutral", " SADNESS ", "Happi ness"]})
    src = tmp_path / f"in{suffix}"
    {".csv": lambda: frame.to_csv(src, index=False), ".tsv": lambda: frame.to_csv(src, sep="\t", index=False),
     ".txt": lambda: frame.to_csv(src, sep="\t", index=False, encoding="utf-16"),  # Excel's "유니코드 텍스트"
     ".xlsx": lambda: frame.to_excel(src, index=False),
     ".jsonl": lambda: frame.to_json(src, orient="records", lines=True, force_ascii=False)}[suffix]()
    out = tmp_path / f"out{suffix}"
    AF.answer_file(bot, src, out, progress=False)
    got = read(out)
    assert list(got.columns) == ["id", "Sentence", "Emotion", "Answer", "Sentiment"]
    assert list(got.id) == ["1", "2", "3"] and list(got.Sentiment.astype(str)) == ["0", "1", "2"]
    assert list(got.Answer) == bot.chat_batch(list(frame.Sentence), ["0", "1", "2"])


def test_a_korean_excel_csv_is_answered_and_the_summary_says_how_it_was_read(bot, tmp_path):
    """Korean Excel's plain "CSV" is cp949: answered like its UTF-8 twin, emotions in Korean included."""
    text = "Sentence,Emotion\n배고파,중립\n똠방각하 헤어졌어,슬픔\n첫 데이트야,행복\n"
    (tmp_path / "ko.csv").write_bytes(text.encode("cp949"))
    summary = AF.answer_file(bot, tmp_path / "ko.csv", tmp_path / "o.csv", progress=False)
    got = read(tmp_path / "o.csv")
    assert list(got.Sentence) == ["배고파", "똠방각하 헤어졌어", "첫 데이트야"] and list(got.Emotion) == ["중립", "슬픔", "행복"]
    assert list(got.Sentiment) == ["0", "1", "2"]
    assert list(got.Answer) == bot.chat_batch(list(got.Sentence), ["0", "1", "2"])
    assert (tmp_path / "o.csv").read_bytes().startswith("\ufeffSentence".encode())  # written as UTF-8, BOM for Excel
    assert any("read as cp949" in note for note in summary.notes)
    (tmp_path / "utf8.csv").write_text(text, encoding="utf-8")
    plain = AF.answer_file(bot, tmp_path / "utf8.csv", tmp_path / "u.csv", progress=False)
    assert (tmp_path / "u.csv").read_bytes() == (tmp_path / "o.csv").read_bytes()
    assert not any("cp949" in note for note in plain.notes)


def test_an_output_folder_is_made_when_the_run_starts(bot, tmp_path):
    src = tmp_path / "talk.csv"
    pd.DataFrame({"text": ["안녕"]}).to_csv(src, index=False)
    with pytest.raises(AF.AnswerFileError):
        AF.answer_file(bot, src, tmp_path / "new" / "o.csv", text_column="none", progress=False)
    assert not (tmp_path / "new").exists()
    AF.answer_file(bot, src, tmp_path / "new" / "deeper" / "o.csv", progress=False)
    assert list(read(tmp_path / "new" / "deeper" / "o.csv").text) == ["안녕"]


def test_default_output_is_xlsx_beside_the_input(bot, tmp_path):
    src = tmp_path / "talk.csv"
    pd.DataFrame({"text": ["안녕"]}).to_csv(src, index=False)
    summary = AF.answer_file(bot, src, progress=False)
    assert summary.output == str(tmp_path / "talk.answered.xlsx") and (tmp_path / "talk.answered.xlsx").exists()


def test_column_choice(bot, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"no": ["1", "2"], "utterance": ["배고파", "심심해"], "score": ["0.5", "3"]}).to_csv(src, index=False)
    AF.answer_file(bot, src, tmp_path / "a.csv", sentiment="2", progress=False)  # the only text column
    got = read(tmp_path / "a.csv")
    assert list(got.Answer) == bot.chat_batch(["배고파", "심심해"], "2") and set(got.Sentiment) == {"2"}

    pd.DataFrame({"a": ["배고파"], "b": ["심심해"]}).to_csv(src, index=False)
    with pytest.raises(AF.AnswerFileError, match=r"several text columns among \['a', 'b'\].*--text-column"):
        AF.answer_file(bot, src, tmp_path / "b.csv", progress=False)
    AF.answer_file(bot, src, tmp_path / "b.csv", text_column="b", progress=False)
    assert list(read(tmp_path / "b.csv").Answer) == [bot.chat("심심해")]
    with pytest.raises(AF.AnswerFileError, match="--text-column 'c' is not in the input"):
        AF.answer_file(bot, src, tmp_path / "c.csv", text_column="c", progress=False)
    with pytest.raises(AF.AnswerFileError, match="--emotion-column 'e' is not in the input"):
        AF.answer_file(bot, src, tmp_path / "c.csv", text_column="a", emotion_column="e", progress=False)


def test_unknown_labels_stop_before_any_generation(bot, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["a", "b", "c", "d"], "Emotion": ["행복", "설렘", "Joy", "설렘"]}).to_csv(src, index=False)

    def no_generation(*args, **kwargs):
        raise AssertionError("generation ran")

    monkeypatch.setattr(Chatbot, "complete", no_generation)
    with pytest.raises(AF.AnswerFileError) as err:
        AF.answer_file(bot, src, tmp_path / "o.xlsx", progress=False)
    assert "'설렘' (rows 3, 5)" in str(err.value) and "'Joy' (rows 4)" in str(err.value)
    assert "--unknown-emotion" in str(err.value) and "\n" not in str(err.value)  # one line at the CLI
    assert not (tmp_path / "o.xlsx").exists()


def test_unknown_emotion_and_custom_map(bot, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["a", "b", "c"], "Emotion": ["행복", "설렘", "Joy"]}).to_csv(src, index=False)
    AF.answer_file(bot, src, tmp_path / "o.csv", unknown_emotion="negative", progress=False)
    assert list(read(tmp_path / "o.csv").Sentiment) == ["2", "1", "1"]

    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"설렘": 2, " JOY ": "positive", "행복": 0}), encoding="utf-8")
    AF.answer_file(bot, src, tmp_path / "p.csv", emotion_map=mapping, progress=False)
    assert list(read(tmp_path / "p.csv").Sentiment) == ["0", "2", "2"]  # replaced, not merged

    mapping.write_text(json.dumps({"설렘": 5}), encoding="utf-8")
    with pytest.raises(AF.AnswerFileError, match="label '설렘'"):
        AF.answer_file(bot, src, tmp_path / "q.csv", emotion_map=mapping, progress=False)
    mapping.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(AF.AnswerFileError, match="expected a JSON object"):
        AF.answer_file(bot, src, tmp_path / "q.csv", emotion_map=mapping, progress=False)


def test_blank_rows_keep_their_place(bot, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["배고파", "", "   ", "심심해"]}).to_csv(src, index=False)
    summary = AF.answer_file(bot, src, tmp_path / "o.csv", progress=False)
    got = read(tmp_path / "o.csv")
    assert list(got.Answer) == [bot.chat("배고파"), "", "", bot.chat("심심해")]
    assert summary.blank == 2 and summary.answered == 2 and "2 blank" in str(summary)


def test_formula_looking_text_is_written_as_text(bot, tmp_path):
    cells = ["=SUM(A1:A3)", "+82 10", "-불만 있어", "@멘션", "=HYPERLINK(\"http://x\")", "-5"]
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": cells}).to_csv(src, index=False)
    AF.answer_file(bot, src, tmp_path / "o.xlsx", progress=False)
    sheet = openpyxl.load_workbook(tmp_path / "o.xlsx").active
    values = [(c.value, c.data_type) for c in sheet["A"][1:]]
    assert values == [(v, "s") for v in cells]  # strings, never formulas
    AF.answer_file(bot, src, tmp_path / "o.csv", progress=False)
    got = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert list(got.Sentence) == cells  # the user's own CSV cells are never altered


def test_answers_that_excel_would_run_are_escaped_in_csv(bot, tmp_path, monkeypatch):
    answers = ["=1+1", "\t=1+1", "\r=1+1", "@x", "+1 2", "-5", "그래"]
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": [f"질문 {i}" for i in range(len(answers))]}).to_csv(src, index=False)

    def replies(self, prompts, *args, **kwargs):
        return [SimpleNamespace(text=a) for a in answers[: len(prompts)]]

    monkeypatch.setattr(Chatbot, "complete", replies)
    AF.answer_file(bot, src, tmp_path / "o.csv", batch_size=len(answers), progress=False)
    got = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert sorted(got.Answer) == sorted(["'=1+1", "'\t=1+1", "'\r=1+1", "'@x", "'+1 2", "-5", "그래"])


def test_formulas_in_an_xlsx_come_back_as_formulas(bot, tmp_path):
    book = openpyxl.Workbook()
    book.active.append(["Sentence", "sum", "link"])
    book.active.append(["배고파", "=SUM(1,2)", '=HYPERLINK("http://x.kr","x")'])
    book.create_sheet("memo")["A1"] = "다른 시트"
    book.save(tmp_path / "in.xlsx")
    summary = AF.answer_file(bot, tmp_path / "in.xlsx", tmp_path / "o.xlsx", progress=False)
    out = openpyxl.load_workbook(tmp_path / "o.xlsx")
    assert [(c.value, c.data_type) for c in out.active[2]][:3] == [
        ("배고파", "s"), ("=SUM(1,2)", "f"), ('=HYPERLINK("http://x.kr","x")', "f")]
    assert out["memo"]["A1"].value == "다른 시트" and summary.notes == []
    AF.answer_file(bot, tmp_path / "in.xlsx", tmp_path / "o.jsonl", progress=False)
    record = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8"))
    assert record["sum"] == "=SUM(1,2)" and record["Answer"] == bot.chat("배고파")


def with_saved_values(path, values: dict):
    """Give formula cells the value Excel saves beside them (openpyxl writes none)."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as zin:
        parts = {name: zin.read(name) for name in zin.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    for ref, value in values.items():
        xml = re.sub(rf'<c r="{ref}"([^>]*)><f>(.*?)</f><v\s*/?>(</v>)?',
                     rf'<c r="{ref}" t="str"><f>\2</f><v>{value}</v>', xml)
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in parts.items():
            zout.writestr(name, data)


def test_a_formula_in_the_text_column_is_answered_by_its_value_or_reported(bot, tmp_path):
    book = openpyxl.Workbook()
    for row in (["Sentence"], ["배고파"], [None], ['="심심"&"해"'], ['=CONCAT("졸","려")']):
        book.active.append(row)
    src = tmp_path / "in.xlsx"
    book.save(src)
    with_saved_values(src, {"A4": "심심해"})
    summary = AF.answer_file(bot, src, tmp_path / "o.xlsx", progress=False)
    out = openpyxl.load_workbook(tmp_path / "o.xlsx").active
    assert [c.value for c in out["A"]] == ["Sentence", "배고파", None, '="심심"&"해"', '=CONCAT("졸","려")']
    assert [c.value for c in out["B"]] == ["Answer", bot.chat("배고파"), None, bot.chat("심심해"), None]
    assert summary.answered == 2 and summary.blank == 1 and summary.formulas == 1
    assert "1 formula(s) without a value" in str(summary)
    assert "1 row(s) (5) of column 'Sentence' hold a formula with no saved value" in summary.notes[0]


def test_control_characters_are_noted_for_xlsx(bot, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"Sentence": "벨\x07소리"}, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = AF.answer_file(bot, src, tmp_path / "o.xlsx", progress=False)
    assert "control characters" in summary.notes[0]
    AF.answer_file(bot, src, tmp_path / "o.jsonl", progress=False)
    assert read(tmp_path / "o.jsonl").Sentence[0] == "벨\x07소리"  # kept where the format can hold it


def test_output_is_atomic(bot, tmp_path, monkeypatch):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["배고파"]}).to_csv(src, index=False)
    out = tmp_path / "o.xlsx"
    out.write_bytes(b"previous result")

    def broken(header, rows, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(sheet, "_write_xlsx", broken)
    with pytest.raises(AF.AnswerFileError, match=r"could not write .*o.xlsx \(disk full\); the answers are kept in"):
        AF.answer_file(bot, src, out, progress=False)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "o.xlsx", "o.xlsx.partial.jsonl"]


def test_clashing_columns_are_refused(bot, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["배고파"], "Answer": ["mine"]}).to_csv(src, index=False)
    with pytest.raises(AF.AnswerFileError, match="already has column"):
        AF.answer_file(bot, src, tmp_path / "o.csv", progress=False)


def test_resume_after_a_crash_equals_an_uninterrupted_run(bot, tmp_path, monkeypatch):
    sentences = [f"{q} {i}" for i, q in enumerate(["배고파", "헤어졌어", "첫 데이트야", "심심해", "졸려"] * 8)]
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": sentences, "Emotion": ["행복", "슬픔", "중립", "Fear"] * 10}).to_csv(src, index=False)
    AF.answer_file(bot, src, tmp_path / "whole.csv", batch_size=8, progress=False)

    real = Chatbot.complete
    calls = {"n": 0, "rows": 0}

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.csv"
    monkeypatch.setattr(Chatbot, "complete", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        AF.answer_file(bot, src, out, batch_size=8, progress=False)
    assert not out.exists() and (tmp_path / "resumed.csv.partial.jsonl").exists()

    def counting(self, prompts, *args, **kwargs):
        calls["rows"] += len(prompts)
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(Chatbot, "complete", counting)
    summary = AF.answer_file(bot, src, out, batch_size=8, progress=False)
    assert summary.resumed == 16 and calls["rows"] == 40 - 16  # only the batch in flight is redone
    assert read(out).equals(read(tmp_path / "whole.csv"))
    assert not (tmp_path / "resumed.csv.partial.jsonl").exists()


def test_progress_of_another_job_is_not_reused(bot, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["배고파", "심심해"]}).to_csv(src, index=False)
    partial = tmp_path / "o.csv.partial.jsonl"
    partial.write_text(json.dumps({"fingerprint": "another job"}) + "\n" + json.dumps({"row": 0, "answer": "X"}) + "\n")
    AF.answer_file(bot, src, tmp_path / "o.csv", progress=False)
    assert "X" not in list(read(tmp_path / "o.csv").Answer)


def test_chatbot_py_without_a_checkpoint_says_how_to_train(tmp_path):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "chatbot.py", "--model_params", str(tmp_path / "none.ckpt")], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Train one first" in result.stderr


def test_chatbot_py_end_to_end(trained_dir, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "answers.xlsx"
    result = subprocess.run([sys.executable, "chatbot.py", "--model_params", str(trained_dir / "model_-last.ckpt"),
                             "--output", str(out), "--batch-size", "16"], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "63 rows: 63 answered" in result.stdout and "rows/s" in result.stdout
    assert len(pd.read_excel(out)) == 63


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".jsonl"])
def test_values_and_types_survive_in_every_format(bot, tmp_path, suffix):
    frame = pd.DataFrame({"id": [1, 2, 3], "score": [0.5, 2.25, -1.0], "code": ["007", "08", "9"],
                          "Sentence": ["배고파", "헤어졌어", "첫 데이트야"]})
    src, out = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    if suffix == ".csv":
        frame.to_csv(src, index=False)
    elif suffix == ".xlsx":
        frame.to_excel(src, index=False)
    else:
        frame.to_json(src, orient="records", lines=True, force_ascii=False)
    AF.answer_file(bot, src, out, progress=False)
    if suffix == ".csv":  # text stays the very text ("007" keeps its zeros)
        assert out.read_text(encoding="utf-8-sig").splitlines()[1].startswith("1,0.5,007,배고파,")
    elif suffix == ".xlsx":
        sheet = openpyxl.load_workbook(out).active
        row = [c.value for c in sheet[2]]
        assert row[:4] == [1, 0.5, "007", "배고파"] and isinstance(row[0], int) and row[5] == 0
    else:
        first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
        assert first["id"] == 1 and first["score"] == 0.5 and first["code"] == "007" and first["Sentiment"] == 0
    assert read(out).Answer.tolist() == bot.chat_batch(list(frame.Sentence))


def test_an_id_column_is_never_taken_for_the_text(bot, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"id": i, "text": t}, ensure_ascii=False)
                             for i, t in enumerate(["배고파", "졸려"])), encoding="utf-8")
    summary = AF.answer_file(bot, src, tmp_path / "o.jsonl", progress=False)
    assert summary.answered == 2


def log_lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_resume_survives_two_interruptions_with_a_cut_last_line(bot, tmp_path, monkeypatch):
    sentences = [f"{q} {i}" for i, q in enumerate(["배고파", "헤어졌어", "심심해", "졸려"] * 6)]
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": sentences}).to_csv(src, index=False)
    AF.answer_file(bot, src, tmp_path / "whole.csv", batch_size=4, progress=False)
    out, log = tmp_path / "o.csv", tmp_path / "o.csv.partial.jsonl"
    real = Chatbot.complete

    def interrupt_after(batches):
        calls = {"n": 0}

        def complete(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > batches:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        return complete

    for batches in (2, 3):  # each run dies with its last line cut in half, as a kill mid-write leaves it
        monkeypatch.setattr(Chatbot, "complete", interrupt_after(batches))
        with pytest.raises(AF.Interrupted, match=r"rows are answered and kept in .*o.csv.partial.jsonl"):
            AF.answer_file(bot, src, out, batch_size=4, progress=False)
        lines = log_lines(log)
        log.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    kept = len(log_lines(log)) - 2  # the header and the cut line
    assert kept == 2 * 4 - 1 + 3 * 4 - 1
    monkeypatch.setattr(Chatbot, "complete", real)
    summary = AF.answer_file(bot, src, out, batch_size=4, progress=False)
    assert summary.resumed == kept and read(out).equals(read(tmp_path / "whole.csv"))
