"""The `auto` sentiment: a classifier trained with the model, stored as plain data, at every door."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.sentiment import SentimentClassifier

from conftest import ROOT


def test_classifier_learns_and_round_trips_as_plain_data(sample_csv, tmp_path):
    rows = chatdata.load_chat_table(sample_csv).rows
    train, val = chatdata.split_train_val(rows, 0.2, seed=0)
    clf = SentimentClassifier.train(train.Q, train.label, val.Q, val.label)
    assert clf.accuracy > 0.6  # three labels: chance is about a third
    torch.save({"c": clf.to_state()}, tmp_path / "c.pt")
    again = SentimentClassifier.from_state(torch.load(tmp_path / "c.pt", weights_only=True)["c"])
    assert again.predict(list(val.Q)) == clf.predict(list(val.Q)) and again.accuracy == clf.accuracy
    with pytest.raises(ValueError, match="at least two different labels"):
        SentimentClassifier.train(["a", "b"], ["0", "0"])


@pytest.fixture(scope="module")
def bot(trained_dir):
    return Chatbot.load(trained_dir / "model_-last.ckpt")


def test_auto_is_the_default_and_accepted_everywhere(bot):
    assert bot.classifier is not None and bot.sentiment == "auto" and bot.classifier.accuracy is not None
    questions = ["헤어졌어", "첫 데이트야", "배고파"]
    guesses = bot.classifier.predict(questions)
    assert bot.chat_batch(questions) == bot.chat_batch(questions, guesses)
    assert bot.chat("헤어졌어", "auto") == bot.chat("헤어졌어", guesses[0])
    with pytest.raises(ValueError, match="or auto"):
        bot.chat("안녕", "sad")


def test_a_checkpoint_without_a_classifier_answers_with_0(trained_dir):
    plain = Chatbot.load(trained_dir / "model_-last.ckpt", classifier=None)
    assert plain.sentiment == "0" and plain.chat("헤어졌어", "auto") == plain.chat("헤어졌어", 0)


def test_server_says_which_sentiment_it_used(bot):
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.serve import create_app

    guess = bot.classifier.predict(["헤어졌어"])[0]
    with TestClient(create_app(bot), base_url="http://localhost") as c:
        r = c.post("/chat", json={"question": "헤어졌어"}).json()
        assert (r["sentiment"], r["sentiment_source"]) == (int(guess), "auto")
        assert r["answer"] == bot.chat("헤어졌어", guess)
        r = c.post("/chat", json={"question": "헤어졌어", "sentiment": 2}).json()
        assert (r["sentiment"], r["sentiment_source"]) == (2, "given")
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "헤어졌어"}],
                                                  "sentiment": "auto"}).json()
        assert r["sentiment"] == int(guess) and r["choices"][0]["message"]["content"] == bot.chat("헤어졌어", guess)
        assert c.get("/health").json()["sentiment"]["classifier"] is True


def test_answer_with_auto_and_the_emotion_column_still_wins(bot, tmp_path):
    from kogpt2_chatbot.answer_file import answer_file

    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": ["헤어졌어", "첫 데이트야"]}).to_csv(src, index=False)
    answer_file(bot, src, tmp_path / "o.csv", sentiment="auto", progress=False)
    out = pd.read_csv(tmp_path / "o.csv", dtype=str)
    assert list(out.Sentiment) == bot.classifier.predict(["헤어졌어", "첫 데이트야"])
    pd.DataFrame({"Sentence": ["헤어졌어"], "Emotion": ["행복"]}).to_csv(src, index=False)
    answer_file(bot, src, tmp_path / "o2.csv", sentiment="auto", progress=False)
    assert list(pd.read_csv(tmp_path / "o2.csv", dtype=str).Sentiment) == ["2"]


def test_training_reports_the_classifier(trained_dir):
    raw = torch.load(trained_dir / "model_-last.ckpt", weights_only=True)
    assert 0 <= raw["chatbot"]["sentiment_classifier"]["accuracy"] <= 1


def test_repl_pipe_and_sent_auto(trained_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    ckpt = str(trained_dir / "model_-last.ckpt")
    bot = Chatbot.load(ckpt)
    r = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "chat", "--model_params", ckpt, "--sentiment", "auto"],
                       input="헤어졌어\n배고파\n", capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.stdout.splitlines() == bot.chat_batch(["헤어졌어", "배고파"])
