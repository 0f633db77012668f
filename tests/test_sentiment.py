"""The `auto` sentiment: a classifier trained with the model, stored as plain data, at every door."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import sentiment
from kogpt2_chatbot.sentiment import SentimentClassifier

from conftest import ROOT


@pytest.mark.parametrize("value, expected", [
    ("0", "0"), (1, "1"), (" 2 ", "2"), ("neutral", "0"), ("Negative", "1"), ("POSITIVE", "2"),
])
def test_sentiment_forms(value, expected):
    assert sentiment.normalize_sentiment(value) == expected
    assert sentiment.check(value) == expected


@pytest.mark.parametrize("value", ["3", -1, "happy", "", None, 1.0, True, "1.0"])
def test_bad_sentiment_lists_what_is_accepted(value):
    with pytest.raises(ValueError, match="neutral\\|negative\\|positive"):
        sentiment.normalize_sentiment(value)
    with pytest.raises(ValueError, match="or auto; got"):
        sentiment.check(value)


class Fixed:
    """A classifier that answers "1" for every question, counting its calls."""
    calls = 0

    def predict(self, questions):
        Fixed.calls += 1
        return ["1"] * len(questions)


def test_resolve_says_where_each_sentiment_came_from():
    got = sentiment.resolve([None, 2, "auto", None, "auto"], ["a", "b", "c", "d", "  "], "auto", Fixed())
    assert got == [("1", "classifier"), ("2", "given"), ("1", "classifier"), ("1", "classifier"), ("0", "default")]
    assert Fixed.calls == 1  # one classifier call for the whole batch; a blank question is not read
    assert sentiment.resolve([None, "auto"], ["a", "b"], "positive") == [("2", "default"), ("0", "default")]
    with pytest.raises(ValueError, match="question 2: sentiment must be"):
        sentiment.resolve([0, 7], ["a", "b"])
    with pytest.raises(ValueError, match="^sentiment must be"):  # one question: no position to name
        sentiment.resolve([True], ["a"])
    with pytest.raises(ValueError, match="2 questions but 1 sentiments"):
        sentiment.resolve([0], ["a", "b"])


def test_emotion_labels_map_to_sentiments():
    assert [sentiment.sentiment_of_label(x) for x in ("Happiness", " 슬 픔 ", "1.0", "2", "놀람", "행복하다")] == \
        ["2", "1", "1", "2", "0", None]
    assert chatdata.EMOTION_MAP is sentiment.EMOTION_MAP  # one map, for training tables and spreadsheets


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
    reply = plain.reply("헤어졌어", "auto")
    assert (reply.sentiment, reply.sentiment_source) == ("0", "default")


def test_the_reply_carries_its_sentiment_and_source(bot):
    guess = bot.classifier.predict(["헤어졌어"])[0]
    auto, given, default = bot.reply("헤어졌어"), bot.reply("헤어졌어", "positive"), Chatbot(
        bot.model, bot.tokenizer, sentiment=1).reply("헤어졌어")
    assert (auto.sentiment, auto.sentiment_source, auto.text) == (guess, "classifier", bot.chat("헤어졌어", guess))
    assert (given.sentiment, given.sentiment_source) == ("2", "given")
    assert (default.sentiment, default.sentiment_source) == ("1", "default")
    replies = bot.replies(["헤어졌어", "배고파"], [None, 0])
    assert [(r.sentiment_source, r.question) for r in replies] == [("classifier", "헤어졌어"), ("given", "배고파")]


def test_server_says_which_sentiment_it_used(bot):
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.serve import create_app

    guess = bot.classifier.predict(["헤어졌어"])[0]
    with TestClient(create_app(bot), base_url="http://localhost") as c:
        r = c.post("/chat", json={"question": "헤어졌어"}).json()
        assert (r["sentiment"], r["sentiment_source"]) == (int(guess), "classifier")
        assert r["answer"] == bot.chat("헤어졌어", guess)
        r = c.post("/chat", json={"question": "헤어졌어", "sentiment": 2}).json()
        assert (r["sentiment"], r["sentiment_source"]) == (2, "given")
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "헤어졌어"}],
                                                  "sentiment": "auto"}).json()
        assert r["sentiment"] == int(guess) and r["choices"][0]["message"]["content"] == bot.chat("헤어졌어", guess)
        assert r["sentiment_source"] == "classifier" and r["history_used"] == 0
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
