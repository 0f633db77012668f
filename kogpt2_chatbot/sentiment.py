"""The question -> sentiment classifier behind `sentiment="auto"`.

Character 1-3-gram TF-IDF and logistic regression (scikit-learn), trained with the chatbot on
the training split's questions. Korean words carry their particles and endings, so character
n-grams do better here than words. A checkpoint stores the classifier as plain data (the
vocabulary as a dict, the idf and the weights as tensors), so loading needs no pickle; the
prediction itself is a sparse TF-IDF vector times the weight matrix.
"""
from __future__ import annotations

import numpy as np

from . import framing

NGRAMS = (1, 3)
MAX_FEATURES = 30000


class SentimentClassifier:
    def __init__(self, vocabulary: dict, idf, coef, intercept, classes, accuracy: float | None = None):
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

        labels = [framing.normalize_sentiment(s) for s in labels]
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
            gold = [framing.normalize_sentiment(s) for s in val_labels]
            out.accuracy = sum(g == t for g, t in zip(guesses, gold)) / len(gold)
        return out

    def predict(self, questions) -> list[str]:
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
        if not state:
            return None

        def array(value):
            return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

        return cls(state["vocabulary"], array(state["idf"]), array(state["coef"]), array(state["intercept"]),
                   state["classes"], state.get("accuracy"))
