"""Grounded replies: answers from the training pairs, chosen by the model.

People who build a bot from their own Q/A data want their own answers back when a question is
close to one they wrote, and the model's words when it is not. Modes (`MODES`):

- `generate`: the model's own reply, as before grounding existed (needs no index)
- `retrieve`: the answer of the nearest training question
- `rerank`:   the answers of the `K` nearest training questions and the model's own reply, each
              scored by `RERANK_FEATURES` (its BM25 score against the best one's, the model's
              log-likelihood of it, its PMI against the answer's prior, how many of the retrieved
              answers say the same, whether its pair has the sentiment asked, how much of the
              question it echoes, how often the training answers say it) with weights fitted on
              the training split only (`fit_weights`)
- `refine`:   the model's reply to the question framed with the nearest training answer as a
              reference (framing.REF); needs a model trained with `--refine` (alpha-blending:
              data.ChatDataset), whose references are retrieved for each training question from
              the other training pairs (`training_references`)

The index (`Index`) is the training split's pairs as plain data: questions, answers, sentiments
and the data file's line of each, plus the fitted rerank weights. A checkpoint carries it in its `chatbot`
dict under "grounding", an hf/ export in chatbot.json; the search structure is rebuilt from the
questions when first needed (deterministic). Search: BM25 (bm25s, its default k1 1.5, b 0.75)
over the character 1-3-grams of the questions (scikit-learn's char_wb analyzer): Korean words
carry their particles and endings, so character n-grams match without a word segmenter. BM25
beat TF-IDF cosine over the same n-grams on both validation splits (bench/RESULTS.md,
"Grounded replies").

A reply says where it came from (`Source`): generated, or retrieved with the training row, the
training question and how close it is to the question asked (`closeness`, chrF / 100).
"""
from __future__ import annotations

import functools
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from .engines import DEFAULT_BATCH_SIZE

GENERATE, RETRIEVE, RERANK, REFINE = "generate", "retrieve", "rerank", "refine"
MODES = (GENERATE, RETRIEVE, RERANK, REFINE)
# The mode a bot with an index answers in unless told: the one its checkpoint measured best on
# its validation split (`measure_default`, as `auto` sentiment is chosen), else the model's own
# reply: a split under MEASURED_FROM replies measures noise.
DEFAULT_MODE = GENERATE
MEASURED_FROM = 200
K = 10             # answers retrieved for rerank
FIT_QUESTIONS = 2000  # training questions the rerank weights are fitted on, in FIT_FOLDS folds
FIT_FOLDS = 2
NGRAMS = (1, 3)
MODEL_FEATURES = ("loglik", "pmi")  # the model's; the rest come from the index (candidates_for)
MEMORISED = (*MODEL_FEATURES, "generated")  # what the model says of questions it trained on: not fitted
RERANK_FEATURES = ("retrieval", *MODEL_FEATURES, "votes", "generated", "sentiment", "echo", "frequency")
# Weights for an index too small to fit on: trust retrieval, then the pair's sentiment.
DEFAULT_WEIGHTS = {"retrieval": 1.0, "loglik": 0.0, "pmi": 0.1, "votes": 0.0, "generated": -0.5,
                   "sentiment": 0.5, "echo": 0.0, "frequency": 0.0}
NOT_REFINE = ("this model was not trained with reference answers, so it cannot refine them; train it with "
              "--refine 0.5, or use --grounding retrieve or rerank")
NO_INDEX = ("this checkpoint has no index of its training pairs, so it cannot ground replies; add one "
            "(no retraining) with: python -m kogpt2_chatbot index --model_params {source}")


def check_mode(mode) -> str:
    if isinstance(mode, str) and mode.strip().lower() in MODES:
        return mode.strip().lower()
    raise ValueError(f"grounding must be one of {', '.join(MODES)}; got {mode!r}")


@dataclass(frozen=True)
class Source:
    """Where a reply came from: "generated", or "retrieved" with the training pair it used."""
    kind: str
    row: int | None = None          # the pair's line in the training data file
    question: str | None = None     # the training question whose answer this is
    closeness: float | None = None  # chrF / 100 of that question against the one asked (1.0: the same)

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}

    def refined(self) -> "Source":
        """The source of a reply the model wrote with this retrieved answer as its reference."""
        return Source("refined", self.row, self.question, self.closeness)


GENERATED = Source("generated")


def closeness(question: str, other: str) -> float:
    """How close two questions are: character n-gram F-score (sacrebleu's sentence chrF) / 100."""
    return chrf_score(chrf_statistics([other], question)[0]) / 100


def chrf_statistics(hypotheses, reference: str):
    """sacrebleu's chrF match statistics of each hypothesis against one reference (an int array,
    a row each), the reference's n-grams counted once. A row gives that hypothesis's sentence
    chrF (`chrf_score`); rows summed over any choice of hypotheses give that choice's corpus
    chrF, what `CHRF().corpus_score` computes, without counting the n-grams again. These are the
    steps of sacrebleu 2's own `corpus_score` (tests/test_grounding.py holds the two equal)."""
    import numpy as np

    chrf = _chrf()
    ref = chrf._cache_references([[reference]])[0]
    return np.asarray([chrf._compute_segment_statistics(chrf._preprocess_segment(h), ref) for h in hypotheses],
                      dtype=np.int64).reshape(len(hypotheses), -1)


def chrf_score(statistics) -> float:
    """chrF (0-100) of a row of `chrf_statistics`, or of rows summed."""
    return _chrf()._compute_score_from_stats([int(v) for v in statistics]).score


@functools.cache
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


@dataclass
class Hit:
    index: int      # position in the index
    score: float    # BM25


class Index:
    """The training pairs, searchable by question. See the module doc."""

    def __init__(self, questions, answers, rows, weights: dict | None = None, sentiments=None,
                 measured: dict | None = None):
        self.questions, self.answers = [str(q) for q in questions], [str(a) for a in answers]
        self.rows = [int(r) for r in rows]
        # An index written before sentiments were kept has none: no pair then matches one asked.
        self.sentiments = [str(s) for s in sentiments] if sentiments is not None else [None] * len(self.rows)
        if not len(self.questions) == len(self.answers) == len(self.rows) == len(self.sentiments):
            raise ValueError("an index needs as many answers, rows and sentiments as questions")
        # Weights fitted for other features (an older index) do not carry over: the defaults then.
        fitted = weights if weights and all(f in weights for f in RERANK_FEATURES) else {}
        self.weights = {**DEFAULT_WEIGHTS, **fitted}
        self.measured = dict(measured) if measured and measured.get("mode") in MODES else None
        self._bm25 = self._analyzer = self._said = None

    def __len__(self):
        return len(self.questions)

    @property
    def default_mode(self) -> str:
        """The mode measured best on the checkpoint's validation split (measure_default), else DEFAULT_MODE."""
        return self.measured["mode"] if self.measured else DEFAULT_MODE

    @classmethod
    def build(cls, train_rows) -> "Index":
        """From the training split's rows (Q, A, line and label columns, as data.load_chat_table reads them)."""
        sentiments = list(train_rows["label"]) if "label" in train_rows else None
        return cls(list(train_rows["Q"]), list(train_rows["A"]), list(train_rows["line"]), sentiments=sentiments)

    # --- plain data, for checkpoints and hf/ exports (lists of text and numbers only) --------
    def to_state(self) -> dict:
        return {"version": 1, "retriever": "bm25 char_wb 1-3", "questions": list(self.questions),
                "answers": list(self.answers), "rows": list(self.rows), "weights": dict(self.weights),
                **({"sentiments": list(self.sentiments)} if None not in self.sentiments else {}),
                **({"measured": dict(self.measured)} if self.measured else {})}

    @classmethod
    def from_state(cls, state: dict | None) -> "Index | None":
        if not state:
            return None
        return cls(state["questions"], state["answers"], state["rows"], state.get("weights"), state.get("sentiments"),
                   state.get("measured"))

    # --- search ------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[str]:
        if self._analyzer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._analyzer = TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAMS).build_analyzer()
        return self._analyzer(text)

    def _retriever(self):
        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index([self._tokens(q) for q in self.questions], show_progress=False)
        return self._bm25

    def search(self, questions, k: int = K, exclude=None) -> list[list[Hit]]:
        """The `k` best pairs for each question, best first ([] for an empty index).
        `exclude(i, j)`: leave pair j out of question i's hits (fitting leaves each question's own out)."""
        if not len(self) or not len(questions):
            return [[] for _ in questions]
        retriever = self._retriever()
        want = min(len(self), k + (max(k, 10) if exclude else 0))
        # Each n-gram counts once in a query: a question that repeats a syllable asks no more of it.
        tokens = [sorted(set(self._tokens(q))) or [""] for q in questions]
        docs, scores = retriever.retrieve(tokens, k=want, show_progress=False, n_threads=0)
        out = []
        for i, (row_docs, row_scores) in enumerate(zip(docs, scores)):
            hits = [Hit(int(j), float(s)) for j, s in zip(row_docs, row_scores) if not (exclude and exclude(i, int(j)))]
            out.append(hits[:k])
        return out

    def nearest_answers(self, hits) -> list[str | None]:
        """The answer of each question's best hit (None: no hit), what refine frames as its reference."""
        return [self.answers[h[0].index] if h else None for h in hits]

    def times_said(self, answer: str) -> int:
        """How many training pairs have this answer."""
        if self._said is None:
            self._said = Counter(self.answers)
        return self._said.get(answer, 0)

    def source(self, question: str, hit: Hit) -> Source:
        return Source("retrieved", self.rows[hit.index], self.questions[hit.index],
                      round(closeness(question, self.questions[hit.index]), 4))


# --- rerank: candidates, their features, the choice --------------------------------------------

@dataclass
class Candidates:
    """For one question: the texts to choose from (retrieved answers first, the model's reply
    last), the hit behind each (None: the model's), the index's features of each (`known`: a
    value per text for each of RERANK_FEATURES but MODEL_FEATURES) and, once the model has
    scored them, a row of RERANK_FEATURES each."""
    texts: list[str]
    hits: list
    known: dict = field(default_factory=dict)
    features: object = None  # numpy array, RERANK_FEATURES per row


def candidates_for(index: Index, hits: list[Hit], generated: str | None, question: str = "",
                   sentiment: str | None = None) -> Candidates:
    """Distinct answers of `hits` (the best hit of each text kept) plus the model's reply, with
    what the index knows of each: its BM25 score over the best hit's (`retrieval`), the share of
    the hits that say it (`votes`), whether it is the model's (`generated`), whether its pair has
    `sentiment` (`sentiment`), its chrF / 100 against `question` (`echo`) and the log of how many
    training pairs say it (`frequency`). The model's reply scores 0 on what only pairs have."""
    texts, kept, count = [], [], Counter(index.answers[h.index] for h in hits)
    for hit in hits:
        if index.answers[hit.index] not in texts:
            texts.append(index.answers[hit.index])
            kept.append(hit)
    if generated is not None and generated.strip() and generated not in texts:
        texts.append(generated)
        kept.append(None)
    top = max(hits[0].score, 1e-9) if hits else 1.0
    echo = [chrf_score(row) / 100 for row in chrf_statistics(texts, question)] if question else [0.0] * len(texts)
    known = {"retrieval": [h.score / top if h else 0.0 for h in kept],
             "votes": [count[t] / max(1, len(hits)) for t in texts],
             "generated": [float(h is None) for h in kept],
             "sentiment": [float(h is not None and sentiment is not None and index.sentiments[h.index] == str(sentiment))
                           for h in kept],
             "echo": echo,
             "frequency": [math.log(index.times_said(t)) if h else 0.0 for t, h in zip(texts, kept)]}
    return Candidates(texts, kept, known)


def answer_logprobs(bot, pairs, batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[float, int]]:
    """(log p(answer </s> | prompt), tokens) for each (prompt ids, answer ids), teacher-forced."""
    import torch
    import torch.nn.functional as F

    from . import backbone as bb
    from . import framing
    from .data import collate

    examples = [([*p, *a, bot.eos_id], [framing.IGNORE_INDEX] * len(p) + [*a, bot.eos_id]) for p, a in pairs]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out: list = [None] * len(examples)
    with torch.inference_mode(), bot._eval_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([examples[i] for i in chunk], bot.ids[framing.PAD])
            logits, target, keep = bb.answer_logits(bot.model, batch["input_ids"].to(bot.device),
                                                    batch["labels"].to(bot.device))
            logp = -F.cross_entropy(logits.float(), target, reduction="none")
            rows = keep.nonzero()[:, 0]
            sums = torch.zeros(len(chunk), dtype=torch.float64, device=logp.device).index_add_(0, rows, logp.double())
            for i, total, n in zip(chunk, sums.tolist(), keep.sum(1).tolist()):
                out[i] = (total, n)
    return out


def rerank_candidates(bot, index: Index, prepared, hits, decoding=None,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[list[Candidates], list]:
    """(candidates with their features, the model's replies) for prepared prompts (Chatbot.prepare_batch);
    `hits`: index.search() of their questions."""
    import numpy as np

    from . import framing

    replies = bot.complete(prepared, decoding, batch_size)
    prompts = [p.ids for p in prepared]
    cands = [candidates_for(index, h, r.text, p.question, p.sentiment) for p, h, r in zip(prepared, hits, replies)]
    sentiments = [p.sentiment for p in prepared]
    sentiment_ids = dict(zip(set(sentiments), framing.text_ids_batch(bot.tokenizer, list(set(sentiments)))))
    priors = [framing.framed_prompt(bot.ids, [], [], sentiment_ids[s]) for s in sentiments]
    flat = [(i, t) for i, c in enumerate(cands) for t in c.texts]
    answers = framing.text_ids_batch(bot.tokenizer, [t.strip() for _, t in flat]) if flat else []
    scored = answer_logprobs(bot, [(prompts[i], a) for (i, _), a in zip(flat, answers)]
                             + [(priors[i], a) for (i, _), a in zip(flat, answers)], batch_size)
    cond, prior = scored[: len(flat)], scored[len(flat) :]
    at = 0
    for c in cands:
        model = {"loglik": [], "pmi": []}
        for (lp, n), (lp0, _) in zip(cond[at : at + len(c.texts)], prior[at : at + len(c.texts)]):
            model["loglik"].append(lp / n)
            model["pmi"].append((lp - lp0) / n)
        at += len(c.texts)
        values = {**c.known, **model}
        c.features = np.asarray([values[f] for f in RERANK_FEATURES], dtype=np.float64).T.reshape(-1, len(RERANK_FEATURES))
    return cands, replies


def choose(cands: Candidates, weights: dict) -> int:
    import numpy as np

    return choose_row(cands, np.asarray([weights[f] for f in RERANK_FEATURES]))


def choose_row(cands: Candidates, w) -> int:
    """The text the weights `w` (RERANK_FEATURES' order) score best; the first of equals."""
    import numpy as np

    return int(np.argmax(cands.features @ w))


def fit_weights(cands: list[Candidates], references: list[str], rounds: int = 3, frozen=()) -> dict:
    """Rerank weights whose choices score the best corpus chrF (as evaluate scores) against the
    true answers.

    Coordinate search on a grid, `retrieval` fixed at 1 (only the ratios matter to an argmax)
    and the `frozen` features at their defaults; the grid is coarse on purpose: a few thousand
    questions do not support fine weights. (Against mean sentence chrF, the objective used
    before, corpus chrF chose weights that did better on other training questions.)"""
    import numpy as np

    usable = [(c, r) for c, r in zip(cands, references) if c.texts]
    if len(usable) < 10:
        return dict(DEFAULT_WEIGHTS)
    # Each text's statistics against its reference, counted once: a trial sums the chosen ones.
    statistics = [chrf_statistics(c.texts, r) for c, r in usable]

    def value(weights):
        w = np.asarray([weights[f] for f in RERANK_FEATURES])
        return chrf_score(np.sum([s[choose_row(c, w)] for (c, _), s in zip(usable, statistics)], axis=0))

    weights = dict(DEFAULT_WEIGHTS, retrieval=1.0)
    best = value(weights)
    grid = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    for _ in range(rounds):
        for name in [f for f in RERANK_FEATURES[1:] if f not in frozen]:
            for v in grid:
                trial = dict(weights, **{name: v})
                score = value(trial)
                if score > best + 1e-9:
                    best, weights = score, trial
    return weights | {"fitted_on": len(usable), "fitted_chrf": round(float(best), 3)}


def fitting_folds(train_rows, questions: int = FIT_QUESTIONS, folds: int = FIT_FOLDS, seed: int = 42) -> list[set]:
    """`folds` disjoint sets of whole groups drawn at random, each of about `questions` / `folds`
    rows but never more than a fifth of the rows (a small table keeps most of its pairs to search)."""
    sizes = train_rows.groupby("group", sort=True).size()
    order = list(sizes.index)
    random.Random(seed).shuffle(order)
    per_fold = min(questions // folds, len(train_rows) // 5)
    out, at = [], iter(order)
    for _ in range(folds if per_fold else 0):
        fold, rows = set(), 0
        for group in at:
            fold.add(group)
            rows += int(sizes[group])
            if rows >= per_fold:
                break
        if fold and len(fold) < len(order):
            out.append(fold)
    return out


def fit_index(bot, train_rows, val_rows=None, questions: int = FIT_QUESTIONS, seed: int = 42,
              batch_size: int = DEFAULT_BATCH_SIZE) -> Index:
    """An index of `train_rows` with rerank weights fitted on about `questions` of them, and its
    default mode measured on `val_rows` (measure_default).

    The fitting questions are whole groups (the same question up to spaces and punctuation, or a
    conversation) in FIT_FOLDS folds, each fold asked of an index of the pairs outside it, so that
    each question is as new to the index as a validation question is: its own answer counts
    neither among the hits nor in how often an answer is said. Each is framed with the turns
    before it in its conversation. The model trained on these questions, so its own features
    (`MEMORISED`) keep their default weights: fitted on questions it has learned by heart, they
    trust its memory."""
    from .data import earlier_turns

    index = Index.build(train_rows)
    cands, references = [], []
    for fold in fitting_folds(train_rows, questions, FIT_FOLDS, seed) if len(index) > 1 else []:
        inside = train_rows["group"].isin(fold)
        asked_rows, others = train_rows[inside], Index.build(train_rows[~inside])
        asked = [str(q) for q in asked_rows["Q"]]
        prepared = bot.prepare_batch(asked, [str(s) for s in asked_rows["label"]], earlier_turns(train_rows, asked_rows))
        cands += rerank_candidates(bot, others, prepared, others.search(asked), batch_size=batch_size)[0]
        references += [str(a) for a in asked_rows["A"]]
    if cands:
        index.weights = fit_weights(cands, references, frozen=MEMORISED)
    if val_rows is not None:
        index.measured = measure_default(bot, index, val_rows, batch_size)
    return index


def measure_default(bot, index: Index, val_rows, batch_size: int = DEFAULT_BATCH_SIZE) -> dict | None:
    """{"mode", "rows", "chrf": {mode: corpus chrF}}: every mode `bot` can answer in with `index`,
    scored on the last turn of each validation conversation, the best one first among equals
    in MODES' order; None under MEASURED_FROM replies. The index's `measured` entry."""
    from . import evaluate

    questions, sentiments, references, histories = evaluate.scored_turns(val_rows)
    if len(questions) < MEASURED_FROM:
        return None
    was, bot.index = bot.index, index
    try:
        scores = {m: round(evaluate.chrf(bot.chat_batch(questions, sentiments, histories, batch_size, grounding=m),
                                         references), 2) for m in bot.grounding_modes}
    finally:
        bot.index = was
    return {"mode": max(scores, key=scores.get), "rows": len(questions), "chrf": scores}


def describe_index(index: Index) -> str:
    """Its size, its rerank weights and its default mode, as training and `index` report them."""
    return (f"{len(index)} training pairs; rerank weights: {describe_weights(index.weights)}; "
            f"{describe_default(index)}")


def describe_default(index: Index) -> str:
    if not index.measured:
        return f"default grounding {DEFAULT_MODE} (no validation split of {MEASURED_FROM} replies to measure on)"
    scores = ", ".join(f"{m} {v:g}" for m, v in index.measured["chrf"].items())
    return (f"default grounding {index.measured['mode']} (chrF on {index.measured['rows']} validation replies: "
            f"{scores})")


def training_references(train_rows) -> list[str | None]:
    """A reference answer for each training row, for refine training: the answer of its nearest
    training question outside its own group (the same question up to spaces and punctuation, or
    its conversation), so that references are what retrieval finds for a question never seen."""
    index = Index.build(train_rows)
    groups = list(train_rows["group"])
    return index.nearest_answers(index.search(index.questions, 1, exclude=lambda i, j: groups[i] == groups[j]))


def describe_weights(weights: dict) -> str:
    fitted = f" (fitted on {weights['fitted_on']} training questions)" if "fitted_on" in weights else " (defaults)"
    return ", ".join(f"{k} {weights[k]:+g}" for k in RERANK_FEATURES) + fitted
