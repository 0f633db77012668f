import json
import math

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import evaluate as E
from kogpt2_chatbot import framing
from kogpt2_chatbot.module import KoGPT2Chat


def test_distinct_and_entropy_on_known_inputs():
    assert E.distinct(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert E.distinct(["a b a", "b c"], 2) == pytest.approx(1.0)
    assert E.distinct(["a", "b"], 2) == 0.0  # no bigrams at all
    assert E.entropy(["a b c d", "a b c d"], 4) == pytest.approx(0.0)
    assert E.entropy(["a b c d", "e f g h"], 4) == pytest.approx(math.log(2))
    assert E.entropy(["a b c d e"], 4) == pytest.approx(math.log(2))


def test_bleu_and_chrf_on_known_inputs():
    assert E.bleu(["안녕하세요"], ["안녕하세요"], 4) == pytest.approx(100.0)
    # Characters a b c d against a b c e: 1-gram precision 3/4, 2-gram 2/3, no brevity penalty.
    assert E.bleu(["abcd"], ["abce"], 2) == pytest.approx(100 * math.sqrt(0.75 * 2 / 3), abs=1e-6)
    assert E.chrf(["같은 문장"], ["같은 문장"]) == pytest.approx(100.0)
    assert E.chrf(["가나다"], ["라마바"]) == pytest.approx(0.0)


def test_baselines():
    base = E.RetrievalBaseline(["배가 고파요", "헤어졌어요", "첫 데이트 했어"], ["밥 드세요", "힘내요", "좋겠다"])
    assert base.reply(["배고파요", "헤어졌어", "데이트 했어요"]) == ["밥 드세요", "힘내요", "좋겠다"]
    assert E.most_frequent_answer(["a", "b", "b", "c"]) == "b"


@pytest.fixture(scope="module")
def bot(trained_dir):
    return KoGPT2Chat.load_from_checkpoint(trained_dir / "model_-last.ckpt").eval()


def test_perplexity_is_the_token_weighted_mean(bot, sample_csv):
    rows = chatdata.load_chat_table(sample_csv).rows.head(9)
    nll, count = 0.0, 0
    for q, a, s in zip(rows.Q, rows.A, rows.label):
        ids, labels = framing.example_ids(bot.tokenizer, q, s, a, 64)
        with torch.no_grad():
            loss, n = bot.answer_loss(torch.tensor([ids]), torch.tensor([labels]))
        nll += float(loss) * int(n)
        count += int(n)
    assert E.perplexity(bot, rows, batch_size=4) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_default_split_is_the_checkpoints_validation_split(bot, sample_csv):
    rows, train_rows, what = E.select_rows(bot, sample_csv, "val")
    assert set(rows.Q.map(chatdata.question_key)) == set(bot.split["val_groups"])
    assert not set(rows.Q) & set(train_rows.Q)
    assert len(rows) + len(train_rows) == len(chatdata.load_chat_table(sample_csv).rows)
    assert "validation split" in what


def test_report_files(bot, sample_csv, tmp_path):
    metrics = E.evaluate(bot, sample_csv, "val", tmp_path, batch_size=8, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    table = chatdata.load_chat_table(sample_csv).rows
    assert saved["rows"] == metrics["rows"] == int(chatdata.held_out(table, bot.split).sum())
    for system in ("model", "retrieval (TF-IDF nearest question)", "most frequent answer"):
        assert set(E.TEXT_METRICS) <= set(saved[system])
    assert {"ppl", "degenerate", "replies_per_s"} <= set(saved["model"])
    samples = pd.read_csv(tmp_path / "samples.csv")
    assert list(samples.columns) == ["question", "sentiment", "reference", "reply", "retrieval",
                                     "grounding: retrieve", "grounding: rerank", "closeness"]
    # every grounding mode beside generation and retrieval, on the same rows, and by closeness
    assert set(E.TEXT_METRICS) <= set(saved["grounding: retrieve"]) and "grounding: rerank" in saved
    bands = saved["closeness"]["bands"]
    assert sum(b["rows"] for b in bands.values()) == saved["rows"] and saved["closeness"]["novel_below"] == E.NOVEL
    assert all(set(b["systems"]) == {"model", "retrieval (TF-IDF nearest question)", "grounding: retrieve",
                                     "grounding: rerank"} for b in bands.values())
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "By closeness to a training question" in report and "| grounding: rerank |" in report
    assert len(samples) == metrics["rows"]
    assert list(samples.reply.fillna("")) == bot.chat_batch(list(samples.question), [str(s) for s in samples.sentiment])
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| model |" in report and "| retrieval (TF-IDF nearest question) |" in report
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scoring_a_file_and_bad_splits(bot, sample_csv, tmp_path):
    test_file = tmp_path / "test.csv"
    pd.DataFrame({"Q": ["배고파", "헤어졌어"], "A": ["밥 드세요", "힘내요"], "label": [0, 1]}).to_csv(test_file, index=False)
    metrics = E.evaluate(bot, sample_csv, str(test_file), tmp_path / "out", progress=False)
    assert metrics["rows"] == 2
    bot_without_split = KoGPT2Chat(base_model="scratch-tiny", backbone=bot.backbone_spec())
    with pytest.raises(ValueError, match="records no validation split"):
        E.select_rows(bot_without_split, sample_csv, "val")


def test_evaluate_command(trained_dir, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "evaluate", "--model_params",
                             str(trained_dir / "model_-last.ckpt"), "--out", str(tmp_path / "ev")], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| model |" in result.stdout and (tmp_path / "ev" / "report.png").exists()


def test_report_has_bits_per_character_and_diversity(bot, sample_csv, tmp_path):
    metrics = E.evaluate(bot, sample_csv, "val", tmp_path, batch_size=8, progress=False)
    assert 0 < metrics["model"]["bpc"] < 20
    div = metrics["diversity"]
    assert div["scored rows"]["replies"] == metrics["rows"]
    sample = div["EC_data/sample_emotions.csv"]
    assert sample["replies"] == 63 and 1 <= sample["distinct"] <= 63 and 0 < sample["top_share"] <= 1
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Diversity" in report and "bits per answer character" in report


def test_protocol_metrics_follow_the_reference_definitions():
    refs = ["나는 밥을 먹었다 오늘"]
    assert E.protocol_metrics(refs, refs)["bleu4"] == pytest.approx(100)
    assert E.protocol_metrics(["완전히 다른 말"], refs)["bleu3"] == 0  # no smoothing, like theirs
    m = E.protocol_metrics(["a b a b", "a c"], ["x", "y"])
    assert m["dist1"] == pytest.approx(100 * 3 / 6) and m["dist2"] == pytest.approx(100 * 3 / 4)


def test_kochatbart_protocol_needs_its_split(bot, sample_csv, tmp_path):
    with pytest.raises(ValueError, match="--protocol kochatbart"):
        E.evaluate(bot, sample_csv, "val", tmp_path, protocol="kochatbart", progress=False)


def test_kochatbart_protocol_end_to_end(sample_csv, tmp_path):
    from kogpt2_chatbot.train import TrainConfig, train

    module = train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(tmp_path / "m"),
                               max_epochs=2, batch_size=32, lr=3e-3, protocol="kochatbart", samples=0, progress=False))
    assert len(module.split["test_lines"]) == 43 and len(module.split["val_lines"]) == 42  # 423 rows: 338/42/43
    metrics = E.evaluate(module, sample_csv, out_dir=tmp_path / "ev", protocol="kochatbart", progress=False)
    assert metrics["rows"] == 43
    # The default split of such a checkpoint is its validation part alone, never its test part.
    assert E.evaluate(module, sample_csv, out_dir=tmp_path / "val", progress=False)["rows"] == 42
    systems = metrics["protocol"]["systems"]
    assert {"model", "KoChatBART (published)", "KoBART (published)"} <= set(systems)
    report = (tmp_path / "ev" / "report.md").read_text(encoding="utf-8")
    assert "| KoChatBART (published) | 12.97 | 11.23 | 19.64 | 44.53 |" in report
