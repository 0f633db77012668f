"""The Python API under bad input: a ValueError naming the bad item, never a raw error, and
nothing the caller passed is changed."""
import copy

import pytest

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot.framing import Turn


@pytest.fixture(scope="module")
def bot(trained_dir):
    return Chatbot.load(trained_dir / "model_-last.ckpt")


@pytest.mark.parametrize("call, words", [
    (lambda b: b.chat("\ud800"), r"question holds '\\ud800' at character 1, which is not a character"),
    (lambda b: b.chat("안녕\udcff"), r"question holds '\\udcff' at character 3"),
    (lambda b: b.chat(b"bytes"), "question must be text; got bytes"),
    (lambda b: b.chat(None), "question must be text; got NoneType"),
    (lambda b: b.chat("안녕", history=5), "history must be a list of earlier turns"),
    (lambda b: b.chat("안녕", history="배고파"), "history must be a list of earlier turns"),
    (lambda b: b.chat("안녕", history={"question": "a", "answer": "b"}), "history must be a list"),
    (lambda b: b.chat("안녕", history=[("\ud800", "a")]), "history turn 1: its question holds"),
    (lambda b: b.chat("안녕", history=[("a", "b"), ("c", None)]), "history turn 2: its answer must be text"),
    (lambda b: b.chat("안녕", history=[("a", "b", "sad")]), "history turn 1: sentiment must be"),
    (lambda b: b.chat("안녕", history=[5]), r"history turn 1: expected \(question, answer\)"),
    (lambda b: b.chat("안녕", sentiment=True), "sentiment must be .*got True"),
    (lambda b: b.chat("안녕", sentiment=1.0), "sentiment must be .*got 1.0"),
    (lambda b: b.chat_batch("배고파"), "questions must be a list .*for one question use chat"),
    (lambda b: b.chat_batch(5), "questions must be a list"),
    (lambda b: b.chat_batch(["배고파", 3, "안녕"]), "question 2 must be text; got int"),
    (lambda b: b.chat_batch(["배고파", "  "]), "question 2 is empty"),
    (lambda b: b.chat_batch(["배고파", "안녕", "\ud800"]), "question 3 holds"),
    (lambda b: b.chat_batch(["배고파", "안녕"], [0, 9]), "question 2: sentiment must be"),
    (lambda b: b.chat_batch(["배고파", "안녕"], [0]), "got 2 questions but 1 sentiments"),
    (lambda b: b.chat_batch(["배고파", "안녕"], histories=[[], 5]), "history of question 2 must be a list"),
    (lambda b: b.chat_batch(["배고파", "안녕"], histories=[[]]), "got 2 questions but 1 histories"),
    (lambda b: b.conversation(history_turns=-1), "history_turns must be >= 0; got -1"),
    (lambda b: setattr(b, "history_turns", 1.5), "history_turns must be a whole number; got 1.5"),
    (lambda b: setattr(b.conversation(), "history_turns", -2), "history_turns must be >= 0; got -2"),
    (lambda b: b.chat_batch(["배고파", "안녕"], batch_size=0), "batch_size must be >= 1; got 0"),
    (lambda b: b.answer_loss_sum([[("배고파", "밥 먹어요", "0")]], batch_size=0),
     "batch_size must be >= 1; got 0"),
    (lambda b: b.conversation(sentiment="sad"), "sentiment must be"),
    (lambda b: b.conversation(top_p=2.0), "top_p must be > 0"),
])
def test_bad_input_is_a_value_error_naming_the_item(bot, call, words):
    with pytest.raises(ValueError, match=words):
        call(bot)


@pytest.mark.parametrize("options, name", [
    ({"temperature": float("inf"), "do_sample": True}, "temperature"),
    ({"temperature": float("nan"), "do_sample": True}, "temperature"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty"),
    ({"seed": 2 ** 70, "do_sample": True}, "seed"),
])
def test_decoding_values_that_cannot_work_are_refused(bot, options, name):
    with pytest.raises(ValueError, match=name):
        bot.chat("안녕", **options)
    with pytest.raises(ValueError, match=name):
        bot.conversation(**options)


def test_one_bad_item_does_not_cost_the_others(bot):
    with pytest.raises(ValueError, match="question 2"):
        bot.chat_batch(["배고파", ""])
    assert bot.chat_batch(["배고파", "안녕"]) == [bot.chat("배고파"), bot.chat("안녕")]


def test_what_the_caller_passed_is_left_as_it_was(bot):
    history = [("내 이름은 민수야", "반가워요."), ["배고파", "밥 드세요.", "positive"]]
    questions, sentiments = ["  뭐 먹지  ", "안녕"], ["auto", 1]
    kept = copy.deepcopy((history, questions, sentiments))
    replies = bot.replies(questions, sentiments, [history, history])
    assert (history, questions, sentiments) == kept
    # The reply says what it saw: the turns, each with the sentiment it was framed with.
    assert replies[0].history == [Turn("내 이름은 민수야", "반가워요.", replies[0].sentiment),
                                  Turn("배고파", "밥 드세요.", "2")]
    assert replies[0].question == "뭐 먹지" and replies[1].sentiment == "1"


def test_the_history_a_reply_saw_is_what_fit_in_the_prompt(bot):
    long = [(f"아주 긴 질문 {n} " * 6, "긴 답이에요 " * 6) for n in range(12)]
    reply = bot.reply("배고파", 0, long)
    seen = long[len(long) - len(reply.history):]
    assert 0 < len(seen) < len(long) and reply.history == [Turn(q.strip(), a, "0") for q, a in seen]
    assert reply.text == bot.chat("배고파", 0, seen)


def test_history_as_chat_messages_reads_as_the_same_turns(bot):
    messages = [{"role": "system", "content": "친절하게"}, {"role": "user", "content": "배고파", "sentiment": 2},
                {"role": "assistant", "content": "밥 드세요."}]
    assert bot.reply("뭐 먹지", 0, messages).history == [Turn("배고파", "밥 드세요.", "2")]
    assert bot.chat("뭐 먹지", 0, messages) == bot.chat("뭐 먹지", 0, [("배고파", "밥 드세요.", 2)])
    with pytest.raises(ValueError, match="history: the last message is the user's"):
        bot.chat("뭐 먹지", history=messages[:2])
    with pytest.raises(ValueError, match="history: message 2 has role 'tool'"):
        bot.chat("뭐 먹지", history=[messages[1], {"role": "tool", "content": "x"}])
