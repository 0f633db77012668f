import json

import openpyxl
import pandas as pd
import pytest

from kogpt2_chatbot import answer_file as AF
from kogpt2_chatbot.engines.base import BatchedEngine
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


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx", ".jsonl"])
def test_formats_in_and_out(bot, tmp_path, suffix):
    frame = pd.DataFrame({"id": ["1", "2", "3"], "Sentence": ["배고파", "헤어졌어", "첫 데이트야"],
                          "Emotion": ["neutral", " SADNESS ", "Happi ness"]})
    src = tmp_path / f"in{suffix}"
    {".csv": lambda: frame.to_csv(src, index=False), ".tsv": lambda: frame.to_csv(src, sep="\t", index=False),
     ".xlsx": lambda: frame.to_excel(src, index=False),
     ".jsonl": lambda: frame.to_json(src, orient="records", lines=True, force_ascii=False)}[suffix]()
    out = tmp_path / f"out{suffix}"
    AF.answer_file(bot, src, out, progress=False)
    got = read(out)
    assert list(got.columns) == ["id", "Sentence", "Emotion", "Answer", "Sentiment"]
    assert list(got.id) == ["1", "2", "3"] and list(got.Sentiment.astype(str)) == ["0", "1", "2"]
    assert list(got.Answer) == bot.chat_batch(list(frame.Sentence), ["0", "1", "2"])


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

    monkeypatch.setattr(BatchedEngine, "generate", no_generation)
    with pytest.raises(AF.AnswerFileError) as err:
        AF.answer_file(bot, src, tmp_path / "o.xlsx", progress=False)
    assert "'설렘' (rows 3, 5)" in str(err.value) and "'Joy' (rows 4)" in str(err.value)
    assert "--unknown-emotion" in str(err.value)
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
    text = (tmp_path / "o.csv").read_text(encoding="utf-8-sig")
    assert "'=SUM(A1:A3)" in text and "'@멘션" in text and "\n-5," in text


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

    def broken(frame, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(AF, "_write_xlsx", broken)
    with pytest.raises(OSError, match="disk full"):
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

    real = BatchedEngine.generate
    calls = {"n": 0, "rows": 0}

    def crash_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "resumed.csv"
    monkeypatch.setattr(BatchedEngine, "generate", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        AF.answer_file(bot, src, out, batch_size=8, progress=False)
    assert not out.exists() and (tmp_path / "resumed.csv.partial.jsonl").exists()

    def counting(engine, prompts, *args, **kwargs):
        calls["rows"] += len(prompts)
        return real(engine, prompts, *args, **kwargs)

    monkeypatch.setattr(BatchedEngine, "generate", counting)
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
