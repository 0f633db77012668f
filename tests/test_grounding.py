"""Grounded replies: the index of training pairs, retrieve and rerank, the index command, bad input."""
import json

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import grounding as gr
from kogpt2_chatbot.__main__ import main


@pytest.fixture(scope="module")
def ckpt(trained_dir):
    return trained_dir / "model_-best.ckpt"


@pytest.fixture(scope="module")
def bot(ckpt):
    return Chatbot.load(ckpt)


@pytest.fixture(scope="module")
def train_rows(bot, sample_csv):
    return chatdata.training_rows(chatdata.load_chat_table(sample_csv).rows, bot.split)


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv]) or 0
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_training_writes_an_index_of_the_training_split_only(bot, train_rows, sample_csv):
    table = chatdata.load_chat_table(sample_csv)
    val = table.rows[chatdata.held_out(table.rows, bot.split)]
    assert bot.index is not None and len(bot.index) == len(train_rows) > 0
    assert sorted(bot.index.rows) == sorted(train_rows["line"]) and not set(bot.index.rows) & set(val["line"])
    assert bot.grounding == gr.DEFAULT_MODE
    assert bot.index.weights.get("fitted_on", 0) >= 10  # the rerank weights were fitted, on training rows


def test_a_training_question_retrieves_that_rows_answer(bot, train_rows):
    unique = train_rows.drop_duplicates("Q", keep=False).head(40)
    replies = bot.replies(list(unique.Q), grounding="retrieve")
    for (_, row), reply in zip(unique.iterrows(), replies):
        assert reply.text == row.A
        assert reply.source == gr.Source("retrieved", int(row.line), row.Q, 1.0)
    assert bot.chat(unique.Q.iloc[0], grounding="retrieve") == unique.A.iloc[0]


def test_every_reply_says_where_it_came_from(bot):
    questions = ["배고파", "우주선을 타고 화성에 가고 싶어", "헤어졌어"]
    generated = bot.replies(questions, grounding="generate")
    assert {r.source.kind for r in generated} == {"generated"}
    assert [r.text for r in generated] == bot.chat_batch(questions, grounding="generate")
    for reply, made, question in zip(bot.replies(questions, grounding="rerank"), generated, questions):
        top = [bot.index.answers[h.index] for h in bot.index.search([question])[0]]
        if reply.source.kind == "retrieved":  # one of the retrieved answers, with its row and closeness
            assert reply.text in top and bot.index.answers[bot.index.rows.index(reply.source.row)] == reply.text
            assert 0 <= reply.source.closeness <= 1
        else:  # or the model's own reply
            assert reply.source == gr.GENERATED and reply.text == made.text


def test_grounded_replies_batch_stream_and_converse_like_single_ones(bot):
    questions = ["배고파", "첫 데이트야", "시험 망쳤어", "심심해"]
    for mode in ("retrieve", "rerank"):
        batch = bot.chat_batch(questions, grounding=mode, batch_size=3)
        assert batch == [bot.chat(q, grounding=mode) for q in questions]
        assert "".join(bot.stream(questions[0], grounding=mode)) == batch[0]
    talk = bot.conversation(grounding="rerank", history_turns=2)
    first, second = talk.say("배고파"), talk.say("뭐 먹을까?")
    assert first and second and len(talk.turns) == 2
    assert bot.chat("뭐 먹을까?", history=[("배고파", first)], grounding="rerank") == second


def test_the_index_is_plain_data_in_the_checkpoint_and_the_export(bot, ckpt, tmp_path):
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["chatbot"]["grounding"]
    assert saved["questions"] == bot.index.questions and saved["rows"] == bot.index.rows
    out = bot.save_pretrained(tmp_path / "hf")
    info = json.loads((out / "chatbot.json").read_text(encoding="utf-8"))
    again = Chatbot.load(out)
    assert info["grounding"]["answers"] == bot.index.answers and again.grounding == gr.DEFAULT_MODE
    questions = ["배고파", "헤어졌어", "우주선을 타고 화성에 가고 싶어"]
    assert again.chat_batch(questions, grounding="rerank") == bot.chat_batch(questions, grounding="rerank")


def test_no_index_gets_one_line_and_the_index_command_adds_one(ckpt, tmp_path, capsys, sample_csv):
    plain = torch.load(ckpt, map_location="cpu", weights_only=True)
    del plain["chatbot"]["grounding"]
    old = tmp_path / "old.ckpt"
    torch.save(plain, old)
    assert Chatbot.load(old).grounding == "generate"  # no index: the model answers, as before
    with pytest.raises(ValueError, match="kogpt2_chatbot index"):
        Chatbot.load(old, grounding="rerank")
    code, out, err = run(capsys, "ask", "배고파", "--model_params", old, "--grounding", "retrieve")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"python -m kogpt2_chatbot index --model_params {old}" in err
    code, out, err = run(capsys, "index", "--model_params", old, "--data", sample_csv)
    assert code == 0 and "training pairs" in out and "default grounding generate" in out  # too few to measure
    code, out, err = run(capsys, "ask", "배고파", "--model_params", old, "--grounding", "retrieve")
    assert code == 0 and out.strip() == Chatbot.load(ckpt).chat("배고파", grounding="retrieve")


def test_the_index_command_refuses_other_data(ckpt, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("Q,A,label\n안녕,반가워,0\n뭐해,쉬어요,0\n", encoding="utf-8")
    code, out, err = run(capsys, "index", "--model_params", ckpt, "--data", other)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "SHA-256" in errors[0] and "Traceback" not in err


def test_a_bad_mode_is_refused(bot, capsys, ckpt):
    with pytest.raises(ValueError, match="grounding must be one of generate, retrieve, rerank"):
        bot.chat("배고파", grounding="copy")
    code, _, err = run(capsys, "ask", "배고파", "--model_params", ckpt, "--grounding", "copy")
    assert code == 2 and "invalid choice" in err


def test_empty_and_one_row_training_splits_never_crash(bot, train_rows):
    empty = gr.Index([], [], [])
    assert empty.search(["배고파"]) == [[]] and gr.Index.from_state(empty.to_state()).search([]) == []
    one = gr.fit_index(bot, train_rows.head(1))
    assert len(one) == 1 and "fitted_on" not in one.weights
    bare = Chatbot(bot.model, bot.tokenizer, index=one)
    assert bare.chat("배고파", grounding="retrieve") == train_rows.A.iloc[0]
    assert bare.chat("배고파", grounding="rerank")
    bare.index = empty  # nothing to retrieve: the model's reply
    reply = bare.replies(["배고파"], grounding="retrieve")[0]
    assert reply.source == gr.GENERATED and reply.text == bot.chat("배고파", grounding="generate", sentiment=0)


def test_fitted_weights_follow_what_predicts_the_right_answer():
    import numpy as np

    rng = np.random.default_rng(0)
    cands, refs = [], []
    for _ in range(60):  # three candidates; the one with the highest `votes` is the true answer
        texts = ["맛있는 거 드세요.", "푹 쉬세요.", "좋은 하루 보내요."]
        right = int(rng.integers(3))
        features = rng.normal(size=(3, len(gr.RERANK_FEATURES)))
        features[:, gr.RERANK_FEATURES.index("votes")] = 0.1
        features[right, gr.RERANK_FEATURES.index("votes")] = 3.0
        cands.append(gr.Candidates(texts, [None] * 3, features=features))
        refs.append(texts[right])
    weights = gr.fit_weights(cands, refs)
    assert weights["fitted_on"] == 60 and weights["fitted_chrf"] == pytest.approx(100)
    assert all(texts == c.texts[gr.choose(c, weights)] for c, texts in zip(cands, refs))


def test_counted_once_chrf_is_sacrebleus_sentence_and_corpus_chrf():
    """Fitting sums each text's chrF statistics instead of scoring every trial from scratch: the
    scores must stay sacrebleu's own (as `evaluate` reports them), for any choice of texts."""
    import random

    from sacrebleu.metrics import CHRF

    words = ["맛있는", "거", "드세요.", "푹", "쉬세요", "좋은", "하루", "보내요!", "헤어졌어", "ok", "", " "]
    rng = random.Random(0)
    sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))  # noqa: E731
    for question in ["배고파요", "", "좋은 하루!"]:
        texts = [sentence() for _ in range(8)]
        rows = gr.chrf_statistics(texts, question)
        assert [gr.chrf_score(r) for r in rows] == [CHRF().sentence_score(t, [question]).score for t in texts]
    chosen, refs, rows = [], [], []
    for _ in range(40):
        texts, ref = [sentence() for _ in range(5)], sentence()
        pick = rng.randrange(5)
        chosen.append(texts[pick])
        refs.append(ref)
        rows.append(gr.chrf_statistics(texts, ref)[pick])
    assert gr.chrf_score(sum(rows)) == CHRF().corpus_score(chosen, [refs]).score
    assert gr.closeness("배고파요", "배고파") == CHRF().sentence_score("배고파", ["배고파요"]).score / 100


def test_rerank_prefers_the_answer_of_the_sentiment_asked(bot):
    rows = pd.DataFrame({"Q": ["헤어졌어 너무 슬퍼", "헤어졌어요 새로 시작", "배고파", "첫 데이트야", "시험 망쳤어"],
                         "A": ["힘내요.", "새 사랑이 올 거예요.", "밥 드세요.", "설레겠어요.", "다음에 잘해요."],
                         "line": [2, 3, 4, 5, 6], "label": ["1", "2", "0", "2", "0"]})
    index = gr.Index.build(rows)
    assert gr.Index.from_state(index.to_state()).sentiments == index.sentiments == ["1", "2", "0", "2", "0"]
    bare = Chatbot(bot.model, bot.tokenizer, index=index)
    assert bare.chat("헤어졌어", sentiment=1, grounding="rerank") == "힘내요."
    assert bare.chat("헤어졌어", sentiment=2, grounding="rerank") == "새 사랑이 올 거예요."
    assert bare.chat("헤어졌어", sentiment=2, grounding="retrieve") == "힘내요."  # retrieve: the nearest question
    old = {k: v for k, v in index.to_state().items() if k != "sentiments"}  # an index from before sentiments
    assert gr.Index.from_state(old).sentiments == [None] * 5
    assert Chatbot(bot.model, bot.tokenizer, index=gr.Index.from_state(old)).chat("헤어졌어", grounding="rerank")


def test_fitting_asks_whole_groups_the_index_never_saw(train_rows):
    folds = gr.fitting_folds(train_rows, 80, folds=2, seed=1)
    assert len(folds) == 2 and not folds[0] & folds[1] and folds[0] | folds[1] < set(train_rows.group)
    for fold in folds:  # whole groups, about half the questions asked each
        assert 40 <= train_rows.group.isin(fold).sum() < 40 + train_rows.groupby("group").size().max()
    assert gr.fitting_folds(train_rows, 80, 2, seed=1) == folds != gr.fitting_folds(train_rows, 80, 2, seed=2)
    assert len(train_rows[train_rows.group.isin(gr.fitting_folds(train_rows, 10**6, 1)[0])]) <= len(train_rows) // 5 + 5
    assert gr.fitting_folds(train_rows.head(3), 80, 2) == []  # too small to leave anything out


def test_the_default_mode_is_the_one_measured_best_on_validation(bot, train_rows):
    assert gr.measure_default(bot, bot.index, train_rows.head(gr.MEASURED_FROM - 1)) is None  # too few to tell
    asked = pd.concat([train_rows] * (gr.MEASURED_FROM // len(train_rows) + 1)).head(gr.MEASURED_FROM)
    measured = gr.measure_default(bot, bot.index, asked)  # training questions: retrieval answers them all
    assert measured["rows"] == gr.MEASURED_FROM and set(measured["chrf"]) == {"generate", "retrieve", "rerank"}
    best = measured["mode"]
    assert best != "generate" and measured["chrf"][best] == max(measured["chrf"].values()) > measured["chrf"]["generate"]
    index = gr.Index.from_state({**bot.index.to_state(), "measured": measured})
    assert Chatbot(bot.model, bot.tokenizer, index=index).grounding == best
    assert Chatbot(bot.model, bot.tokenizer, index=index, grounding="generate").grounding == "generate"
    assert f"default grounding {best}" in gr.describe_default(index)


def test_index_search_prefers_the_closest_question():
    rows = pd.DataFrame({"Q": ["배고파", "헤어졌어", "첫 데이트야"], "A": ["밥 드세요.", "힘내요.", "설레겠어요."],
                         "line": [2, 3, 4]})
    index = gr.Index.build(rows)
    hits = index.search(["배고파요", "데이트 첫날이야"], k=2)
    assert [index.answers[h[0].index] for h in hits] == ["밥 드세요.", "설레겠어요."]
    assert len(hits[0]) == 2 and hits[0][0].score >= hits[0][1].score
    assert index.source("배고파", hits[0][0]) == gr.Source("retrieved", 2, "배고파", 1.0)


@pytest.fixture(scope="module")
def refine_bot(tmp_path_factory, sample_csv):
    """The conftest model's recipe, trained with references (alpha-blending)."""
    from kogpt2_chatbot.train import TrainConfig, train

    out = tmp_path_factory.mktemp("refine")
    train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(out), max_epochs=30,
                      batch_size=16, lr=3e-3, val_ratio=0.1, samples=0, progress=False, refine=0.5))
    return Chatbot.load(out / "model_-best.ckpt")


def test_refine_writes_with_the_nearest_answer_as_its_reference(refine_bot, train_rows):
    from kogpt2_chatbot import framing

    assert refine_bot.info["refine"] == {"refine": 0.5, "alpha": 0.5}
    questions = ["배고파", "첫 데이트야", "시험 망쳤어", f"심심해 {framing.REF}"]
    replies = refine_bot.replies(questions, grounding="refine", batch_size=3)
    ref_id = refine_bot.ids[framing.REF]
    for question, reply in zip(questions, replies):
        hit = refine_bot.index.search([question])[0][0]
        assert reply.source == refine_bot.index.source(question, hit).refined() and reply.source.kind == "refined"
        prompt = refine_bot.prepare(question)
        reference = framing.text_ids(refine_bot.tokenizer, refine_bot.index.answers[hit.index])
        assert prompt.ids.count(ref_id) == 0  # typed "<unused0>" stays text; the slot is refine's alone
        framed = framing.prompts_ids(refine_bot.tokenizer, [(prompt.question, prompt.sentiment, [])],
                                     references=[refine_bot.index.answers[hit.index]])[0]
        assert framed.count(ref_id) == 1 and framed[framed.index(ref_id) + 1 : -1] == reference
        unblocked = refine_bot.decoding.replace(no_repeat_ngram_size=0)  # blocking would forbid copying
        assert reply.text == refine_bot.complete([framed], unblocked)[0].text
    assert [r.text for r in replies] == [refine_bot.chat(q, grounding="refine") for q in questions]
    assert "".join(refine_bot.stream(questions[0], grounding="refine")) == replies[0].text
    talk = refine_bot.conversation(grounding="refine", history_turns=2)
    assert talk.say("배고파") and talk.say("뭐 먹을까?") and len(talk.turns) == 2
    # Training questions: the reference is their own answer, which a model trained to copy a fitting one brings back.
    unique = train_rows.drop_duplicates("Q", keep=False).head(60)
    copied = sum(r.text == a for r, a in zip(refine_bot.replies(list(unique.Q), grounding="refine"), unique.A))
    assert copied >= 0.5 * len(unique)


def test_refine_needs_a_model_trained_with_references(bot, ckpt, capsys):
    with pytest.raises(ValueError, match="--refine 0.5"):
        bot.chat("배고파", grounding="refine")
    code, out, err = run(capsys, "ask", "배고파", "--model_params", ckpt, "--grounding", "refine")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--refine" in err
    code, _, err = run(capsys, "train", "--refine", "1.5", "--base-model", "scratch-tiny")
    assert code == 2 and "--refine" in err and "Traceback" not in err
