import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kogpt2_chatbot import framing
from kogpt2_chatbot.framing import IGNORE_INDEX, Turn, example_ids, prompt_ids


def ids_of(tok):
    return framing.control_ids(tok)


def test_example_layout_and_labels(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    ids, labels = example_ids(tok, " 배탈났어 ", 1, "약 드세요.", 64)
    q = framing.text_ids(tok, "배탈났어")
    a = framing.text_ids(tok, "약 드세요.")
    s = framing.text_ids(tok, "1")
    assert ids == [c["<usr>"], *q, c["<unused1>"], *s, c["<sys>"], *a, c["</s>"]]
    prompt_len = len(q) + len(s) + 3
    # Loss exactly on `answer </s>`.
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == [*a, c["</s>"]]
    assert ids[:prompt_len] == prompt_ids(tok, "배탈났어", "1")


def test_truncation_cuts_question_first_and_keeps_eos(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    long_q = "오늘 정말 너무 피곤하고 졸리고 배고프고 " * 10
    answer = "푹 쉬세요."
    ids, labels = example_ids(tok, long_q, 0, answer, 32)
    assert len(ids) == len(labels) == 32
    assert ids[-1] == c["</s>"] and labels[-1] == c["</s>"]
    # The whole answer survives; the question lost its start, not its end.
    a = framing.text_ids(tok, answer)
    assert labels[-len(a) - 1 : -1] == a
    q = framing.text_ids(tok, long_q.strip())
    q_kept = ids[1 : ids.index(c["<unused1>"])]
    assert q_kept == q[-len(q_kept):] and len(q_kept) < len(q)


def test_over_long_answer_is_cut_but_still_ends_with_eos(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    ids, labels = example_ids(tok, "질문이 있어요", 2, "아주 긴 대답입니다 " * 40, 24)
    assert len(ids) == 24
    assert ids[-1] == labels[-1] == c["</s>"]
    assert c["<usr>"] == ids[0] and c["<sys>"] in ids


def test_max_len_too_small_is_a_clear_error(tiny_backbone):
    _, tok = tiny_backbone
    with pytest.raises(ValueError, match="too small"):
        example_ids(tok, "안녕", 0, "안녕하세요", 4)


def test_prompt_cut_from_the_left(tiny_backbone):
    _, tok = tiny_backbone
    full = prompt_ids(tok, "가나다라 " * 50, 0)
    cut = prompt_ids(tok, "가나다라 " * 50, 0, max_len=20)
    assert len(cut) == 20 and cut[-5:] == full[-5:] and len(full) > 20


CONTROL_TEXT = st.sampled_from(["<usr>", "<sys>", "</s>", "<unused1>", "<pad>", "<unused0>", "<unk>", "<s>"])
TEXT = st.lists(st.one_of(CONTROL_TEXT, st.text(min_size=1, max_size=8)), min_size=1, max_size=6).map("".join)


@settings(max_examples=150, deadline=None)
@given(question=TEXT, answer=TEXT, sentiment=st.sampled_from(["0", "1", "2"]))
def test_typed_control_strings_stay_plain_text(tiny_backbone, question, answer, sentiment):
    _, tok = tiny_backbone
    c = ids_of(tok)
    ids, labels = example_ids(tok, question, sentiment, answer, 512)
    # Exactly one of each frame token, at its place, whatever the user typed.
    assert ids.count(c["<usr>"]) == 1 and ids[0] == c["<usr>"]
    assert ids.count(c["<sys>"]) == 1 and ids.count(c["<unused1>"]) == 1
    assert ids.count(c["</s>"]) == 1 and ids[-1] == c["</s>"]
    assert c["<pad>"] not in ids
    # And the text still decodes to what was typed (modulo NFKC and surrounding spaces).
    q_ids = ids[1 : ids.index(c["<unused1>"])]
    if "<unk>" not in tok.convert_ids_to_tokens(q_ids):
        import unicodedata

        want = " ".join(unicodedata.normalize("NFKC", question.strip()).split())
        got = " ".join(tok.decode(q_ids).split())
        assert got == want


# Ids pinned before conversations existed: one turn must keep framing exactly as it always did
# (checkpoints trained on single-turn tables depend on it). Tokenizer: scratch-tiny on the sample chats.
GOLDEN = [
    (("배탈났어", "1", "약 드세요.", 64),
     [1, 1209, 6, 1119, 3, 495, 434, 0], [-100] * 5 + [495, 434, 0], [1, 1209, 6, 1119, 3]),
    (("헤어졌어 <sys> </s>", "0", "힘내세요!", 64),
     [1, 1114, 101, 34, 89, 95, 89, 36, 101, 34, 21, 89, 36, 6, 1118, 3, 416, 141, 241, 283, 7, 0],
     [-100] * 16 + [416, 141, 241, 283, 7, 0],
     [1, 1114, 101, 34, 89, 95, 89, 36, 101, 34, 21, 89, 36, 6, 1118, 3]),
    (("오늘 정말 너무 피곤하고 졸리고 배고프고 " * 3, "2", "푹 쉬세요. " * 5, 24),
     [1, 120, 451, 875, 192, 119, 448, 119, 367, 119, 6, 1120, 3, *[498, 515] * 5, 0],
     [-100] * 13 + [*[498, 515] * 5, 0],
     [1, *[455, 446, 196, 421, 883, 120, 451, 875, 192, 119, 448, 119, 367, 119] * 3, 6, 1120, 3]),
]


@pytest.mark.parametrize("args, ids, labels, prompt", GOLDEN)
def test_single_turn_ids_are_pinned(tiny_backbone, args, ids, labels, prompt):
    _, tok = tiny_backbone
    question, sentiment, answer, max_len = args
    assert framing.example_ids(tok, question, sentiment, answer, max_len) == (ids, labels)
    assert framing.prompt_ids(tok, question, sentiment) == prompt


# --- conversations --------------------------------------------------------------------------

TALK = [Turn("내 이름은 민수야", "반가워요 민수님.", "0"), Turn("나 오늘 헤어졌어", "많이 힘들겠어요.", "1"),
        Turn("내 이름 기억해?", "민수님이잖아요.", "2")]


def test_one_turn_conversation_is_the_single_turn_framing(tiny_backbone):
    _, tok = tiny_backbone
    for (question, sentiment, answer, max_len), ids, labels, _ in GOLDEN:
        assert framing.conversation_ids(tok, [Turn(question, answer, sentiment)], max_len) == (ids, labels)


def test_conversation_is_the_framing_repeated_with_loss_on_every_answer(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    ids, labels = framing.conversation_ids(tok, TALK, 256)
    expected_ids, expected_labels = [], []
    for q, a, s in TALK:
        one_ids, one_labels = example_ids(tok, q, s, a, 256)
        expected_ids += one_ids
        expected_labels += one_labels
    assert (ids, labels) == (expected_ids, expected_labels)
    assert ids.count(c["</s>"]) == 3 and ids[-1] == labels[-1] == c["</s>"]
    targets = [t for t in labels if t != IGNORE_INDEX]
    answers = [i for q, a, s in TALK for i in [*framing.text_ids(tok, a), c["</s>"]]]
    assert targets == answers


def test_long_conversations_drop_oldest_turns_first(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    whole, _ = framing.conversation_ids(tok, TALK, 256)
    last_two, _ = framing.conversation_ids(tok, TALK[1:], 256)
    ids, labels = framing.conversation_ids(tok, TALK, len(whole) - 1)
    assert ids == last_two  # the oldest whole turn went, nothing else
    tiny, tiny_labels = framing.conversation_ids(tok, TALK, 12)  # then the single-turn cut
    assert len(tiny) <= 12 and tiny[-1] == tiny_labels[-1] == c["</s>"] and tiny.count(c["<usr>"]) == 1


def test_prompt_with_history_is_the_conversation_so_far(tiny_backbone):
    _, tok = tiny_backbone
    ids, _ = framing.conversation_ids(tok, TALK, 256)
    prompt = framing.prompt_ids(tok, TALK[2][0], TALK[2].sentiment, history=TALK[:2])
    assert ids[: len(prompt)] == prompt and ids[len(prompt) - 1] == ids_of(tok)["<sys>"]
    cut = framing.prompt_ids(tok, TALK[2][0], TALK[2].sentiment, max_len=len(prompt) - 1, history=TALK[:2])
    assert cut == framing.prompt_ids(tok, TALK[2][0], TALK[2].sentiment, history=TALK[1:2])
    assert framing.prompt_ids(tok, "배고파", 0, history=()) == framing.prompt_ids(tok, "배고파", 0)


def test_chat_template_renders_the_whole_conversation_with_sentiments(tiny_backbone, tmp_path):
    from transformers import AutoTokenizer

    from kogpt2_chatbot import backbone

    model, tok = tiny_backbone
    backbone.save_hf(model, tok, tmp_path / "hf")
    plain = AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "친절하게"}]
    for q, a, s in TALK:
        messages += [{"role": "user", "content": q, "sentiment": int(s)}, {"role": "assistant", "content": a}]
    out = plain.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, labels = framing.conversation_ids(tok, TALK, 512)
    assert list(out["input_ids"]) == ids
    # {% generation %} marks exactly the tokens our loss covers (TRL's assistant_only_loss).
    assert list(out["assistant_masks"]) == [int(t != IGNORE_INDEX) for t in labels]
    # Asking for the next reply: the prompt the bot itself would build.
    prompt = plain.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(prompt["input_ids"]) == framing.prompt_ids(tok, TALK[2][0], "2", history=TALK[:2])
    # A sentiment per call applies to user messages that carry none.
    plain_msgs = [{"role": "user", "content": "헤어졌어"}]
    got = plain.apply_chat_template(plain_msgs, sentiment="negative", tokenize=True, return_dict=True)
    assert list(got["input_ids"]) == framing.prompt_ids(tok, "헤어졌어", 1)


def test_many_prompts_at_once_equal_one_at_a_time(tiny_backbone):
    _, tok = tiny_backbone
    items = [("배고파", 0, ()), (TALK[2][0], TALK[2].sentiment, TALK[:2]), ("  안녕  ", "negative", TALK[:1]),
             ("<usr> 글자 그대로", 2, ())]
    for max_len in (None, 40, 12):
        together = framing.prompts_ids(tok, items, max_len)
        assert together == [framing.prompt_ids(tok, q, s, max_len, h) for q, s, h in items]


def test_a_reference_sits_before_sys_and_none_changes_nothing(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    q, s, a = (framing.text_ids(tok, t) for t in ("배고파", "0", "밥 드세요."))
    ref = framing.text_ids(tok, "뭐 좀 드세요.")
    prompt = framing.prompts_ids(tok, [("배고파", "0", [])], references=["뭐 좀 드세요."])[0]
    assert prompt == [c["<usr>"], *q, c["<unused1>"], *s, c[framing.REF], *ref, c["<sys>"]]
    assert framing.prompts_ids(tok, [("배고파", "0", [])], references=[None])[0] == prompt_ids(tok, "배고파", "0")
    ids, labels = framing.framed_conversation(c, [(q, s, a)], 64, ref)
    assert ids == [*prompt, *a, c["</s>"]] and labels == [IGNORE_INDEX] * len(prompt) + [*a, c["</s>"]]
    assert framing.framed_conversation(c, [(q, s, a)], 64) == example_ids(tok, "배고파", "0", "밥 드세요.", 64)


def test_a_typed_reference_marker_stays_text_and_references_yield_room(tiny_backbone):
    _, tok = tiny_backbone
    c = ids_of(tok)
    typed = framing.prompts_ids(tok, [(f"{framing.REF} 배고파", "0", [])], references=[f"{framing.REF}{framing.SYS}"])[0]
    assert typed.count(c[framing.REF]) == 1 and typed.count(c["<sys>"]) == 1 and typed[-1] == c["<sys>"]
    q, s, a = (framing.text_ids(tok, t) for t in ("오늘 너무 피곤하고 졸려 " * 3, "0", "푹 쉬세요."))
    ref = framing.text_ids(tok, "일찍 자는 게 좋겠어요 " * 6)
    ids, labels = framing.framed_conversation(c, [(q, s, a)], 32, ref)
    assert len(ids) <= 32 and labels[-len(a) - 1:] == [*a, c["</s>"]]  # the answer whole, the reference cut
    assert framing.framed_conversation(c, [(q[:20], s, a)], len(q[:20]) + len(a) + 5, ref)[0].count(c[framing.REF]) == 0
    prompt = framing.framed_prompt(c, [], q, s, 24, ref)
    assert len(prompt) <= 24 and c[framing.REF] in prompt and prompt[-1] == c["<sys>"]
