"""Sentiments: their names, the emotion map, `auto`, and resolve(), the one place a request's
sentiment is decided.

A user turn carries a sentiment: `0` (everyday, neutral), `1` (breakup, negative) or `2` (love,
positive). A caller may give one (0|1|2 or a name), leave it to the default, or ask for `auto`:
the checkpoint's classifier reads it from the question. `resolve()` turns what was asked into
the value a prompt is framed with and says where it came from (SOURCES).

The classifier behind `auto`: character 1-3-gram TF-IDF and logistic regression (scikit-learn),
trained with the chatbot on the training split's questions. Korean words carry their particles
and endings, so character n-grams do better here than words. A checkpoint stores the classifier
as plain data (the vocabulary as a dict, the idf and the weights as tensors), so loading needs no
pickle; the prediction itself is a sparse TF-IDF vector times the weight matrix.
"""
from __future__ import annotations

import re

SENTIMENTS = ("0", "1", "2")
SENTIMENT_NAMES = {"neutral": "0", "negative": "1", "positive": "2"}
SENTIMENT_HELP = "0|1|2 or neutral|negative|positive (0 everyday, 1 breakup/negative, 2 love/positive)"
AUTO = "auto"  # the sentiment the checkpoint's classifier reads from the question

# Where a resolved sentiment came from: the caller, the bot's default (also `auto` with no
# classifier or no text to read, which is 0), or the classifier reading the question.
GIVEN, DEFAULT, CLASSIFIER = "given", "default", "classifier"
SOURCES = (GIVEN, DEFAULT, CLASSIFIER)

# Emotion label -> sentiment, for spreadsheets to answer and for conversation tables to train on.
# Keys are compared lower-cased with spaces removed (label_key). The emotional-conversation
# corpus's six 감정_대분류: 기쁨 -> 2; 분노, 불안, 상처, 슬픔 -> 1; 당황 -> 0.
EMOTION_MAP = {
    "neutral": "0", "surprise": "0", "중립": "0", "놀람": "0", "당황": "0",
    "angry": "1", "sadness": "1", "fear": "1", "disgust": "1",
    "분노": "1", "슬픔": "1", "공포": "1", "혐오": "1", "불안": "1", "상처": "1",
    "happiness": "2", "행복": "2", "기쁨": "2",
    "0": "0", "1": "1", "2": "2", "negative": "1", "positive": "2",
}


def normalize_sentiment(value) -> str:
    """'0'|'1'|'2', 0|1|2 or neutral|negative|positive -> '0'|'1'|'2'."""
    if isinstance(value, bool):  # bool is an int; True is no sentiment
        raise ValueError(f"sentiment must be {SENTIMENT_HELP}; got {value!r}")
    if isinstance(value, int) and str(value) in SENTIMENTS:
        return str(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in SENTIMENTS:
            return text
        if text in SENTIMENT_NAMES:
            return SENTIMENT_NAMES[text]
    raise ValueError(f"sentiment must be {SENTIMENT_HELP}; got {value!r}")


def check(value) -> str:
    """'0'|'1'|'2', or 'auto'; ValueError naming what is accepted."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return normalize_sentiment(value)
    except ValueError:
        raise ValueError(f"sentiment must be {SENTIMENT_HELP}, or auto; got {value!r}") from None


def resolve(values, questions, default="0", classifier=None) -> list[tuple[str, str]]:
    """(sentiment '0'|'1'|'2', source) for each question: `values[i]` when it is not None, else
    `default`; `auto` is read from the question by `classifier` (0 without one, or for a blank
    question). A bad value is a ValueError naming it (and its place, for more than one)."""
    values, questions = list(values), list(questions)
    if len(values) != len(questions):
        raise ValueError(f"got {len(questions)} questions but {len(values)} sentiments")
    out = []
    for n, value in enumerate(values, 1):
        try:
            out.append((check(default if value is None else value), DEFAULT if value is None else GIVEN))
        except ValueError as err:
            raise ValueError(f"question {n}: {err}" if len(values) > 1 else str(err)) from None
    auto = [i for i, (s, _) in enumerate(out) if s == AUTO]
    readable = [i for i in auto if classifier is not None and questions[i].strip()]
    guesses = classifier.predict([questions[i] for i in readable]) if readable else []
    for i, guess in zip(readable, guesses):
        out[i] = (guess, CLASSIFIER)
    return [("0", DEFAULT) if s == AUTO else (s, source) for s, source in out]


def label_key(label) -> str:
    return re.sub(r"\s+", "", str(label)).lower()


def sentiment_of_label(label, mapping=None) -> str | None:
    """The sentiment an emotion label or 0/1/2 (1.0 from spreadsheets too) stands for, or None."""
    key = re.sub(r"^([012])\.0$", r"\1", label_key(label))
    return (mapping or EMOTION_MAP).get(key)


# --- the classifier behind `auto` -------------------------------------------------------------

NGRAMS = (1, 3)
MAX_FEATURES = 30000


class SentimentClassifier:
    def __init__(self, vocabulary: dict, idf, coef, intercept, classes, accuracy: float | None = None):
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, sublinear_tf=True,
                                          vocabulary=vocabulary)
        self.vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.classes = [str(c) for c in classes]
        self.accuracy = accuracy

    @classmethod
    def train(cls, questions, labels, val_questions=(), val_labels=()) -> "SentimentClassifier":
        """Fit on (questions, labels); accuracy on the validation pairs when there are any."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        labels = [normalize_sentiment(s) for s in labels]
        if len(set(labels)) < 2:
            raise ValueError("the sentiment classifier needs at least two different labels in the training data")
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS, sublinear_tf=True,
                                     max_features=MAX_FEATURES)
        features = vectorizer.fit_transform(list(questions))
        model = LogisticRegression(C=4.0, max_iter=2000).fit(features, labels)
        vocabulary = {k: int(v) for k, v in vectorizer.vocabulary_.items()}
        out = cls(vocabulary, vectorizer.idf_, model.coef_, model.intercept_, model.classes_)
        if len(val_questions):
            guesses = out.predict(list(val_questions))
            gold = [normalize_sentiment(s) for s in val_labels]
            out.accuracy = sum(g == t for g, t in zip(guesses, gold)) / len(gold)
        return out

    def predict(self, questions) -> list[str]:
        import numpy as np

        if not len(questions):
            return []
        features = self.vectorizer.transform(list(questions))
        scores = features @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # scikit-learn keeps one row of weights for two classes
            return [self.classes[int(s > 0)] for s in np.ravel(scores)]
        return [self.classes[i] for i in np.asarray(scores).argmax(axis=1)]

    # --- plain data, for checkpoints and hf/ exports ------------------------------------------
    def to_state(self) -> dict:
        import torch

        return {"vocabulary": dict(self.vectorizer.vocabulary_), "idf": torch.tensor(self.vectorizer.idf_),
                "coef": torch.tensor(self.coef), "intercept": torch.tensor(self.intercept),
                "classes": list(self.classes), "accuracy": self.accuracy}

    def to_json(self) -> dict:
        return {"vocabulary": dict(self.vectorizer.vocabulary_), "idf": self.vectorizer.idf_.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "classes": list(self.classes),
                "accuracy": self.accuracy}

    @classmethod
    def from_state(cls, state: dict | None) -> "SentimentClassifier | None":
        import numpy as np

        if not state:
            return None

        def array(value):
            return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

        return cls(state["vocabulary"], array(state["idf"]), array(state["coef"]), array(state["intercept"]),
                   state["classes"], state.get("accuracy"))
