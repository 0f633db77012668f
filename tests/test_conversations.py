"""Conversations end to end: history is really used, and every door carries it."""
import json
import os
import random
import subprocess
import sys

import pandas as pd
import pexpect
import pytest

from kogpt2_chatbot import Chatbot

from conftest import ROOT

DIALOGUES = ROOT / "data" / "sample_dialogues.csv"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
COLOURS = ["빨강", "파랑", "노랑", "초록", "보라", "주황"]
OPENERS = ["내가 제일 좋아하는 색은 {c}이야", "나는 {c}을 좋아해", "요즘 {c}이 좋더라"]
ASKS = ["내가 좋아하는 색이 뭐였지?", "내 최애 색 기억나?", "내가 무슨 색 좋아한다고 했지?"]


def colour_chats(n: int, seed: int) -> list[dict]:
    """Two-turn chats whose second answer can only come from the first turn."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        c = rng.choice(COLOURS)
        chats.append({"messages": [
            {"role": "user", "content": rng.choice(OPENERS).format(c=c)},
            {"role": "assistant", "content": f"{c} 멋지네요."},
            {"role": "user", "content": rng.choice(ASKS)},
            {"role": "assistant", "content": f"{c}이요."},
        ]})
    return chats


@pytest.fixture(scope="module")
def colour_bot(tmp_path_factory):
    from kogpt2_chatbot.train import TrainConfig, train

    out = tmp_path_factory.mktemp("colours")
    data = out / "colours.jsonl"
    data.write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in colour_chats(600, 0)), encoding="utf-8")
    train(TrainConfig(data=str(data), base_model="scratch-tiny", model_dir=str(out), max_epochs=12, batch_size=32,
                      lr=5e-3, val_ratio=0.05, samples=0, progress=False))
    return Chatbot.load(out / "model_-last.ckpt")


def test_history_is_what_answers_the_second_turn(colour_bot):
    """Asked for the colour said a turn ago, the bot is right far more often with the history."""
    assert colour_bot.history_turns == 1  # recorded by training: two-turn chats
    tests = colour_chats(60, 99)
    first = [t["messages"][0]["content"] for t in tests]
    said = [t["messages"][1]["content"] for t in tests]
    asks = [t["messages"][2]["content"] for t in tests]
    wanted = [t["messages"][3]["content"] for t in tests]
    with_history = colour_bot.chat_batch(asks, histories=[[(q, a)] for q, a in zip(first, said)])
    without = colour_bot.chat_batch(asks)
    right_with = sum(got == want for got, want in zip(with_history, wanted)) / len(tests)
    right_without = sum(got == want for got, want in zip(without, wanted)) / len(tests)
    print(f"second-turn colour right: {right_with:.0%} with history, {right_without:.0%} without")
    assert right_with >= 0.8 and right_without <= 0.4


@pytest.fixture(scope="module")
def dialogue_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dialogues")
    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "train", "--data", str(DIALOGUES),
                             "--base-model", "scratch-tiny", "--max-epochs", "30", "--batch-size", "8", "--lr", "3e-3",
                             "--model-dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "conversations" in result.stdout and "(up to 3 a conversation)" in result.stdout
    return out


def test_repl_keeps_the_conversation_and_reset_forgets_it(dialogue_dir):
    ckpt = dialogue_dir / "model_-last.ckpt"
    bot = Chatbot.load(ckpt)
    assert bot.history_turns == 2
    first = bot.chat("내일 면접이 있어서 떨려.", 1)
    second = bot.chat("잘할 수 있을까?", 1, [("내일 면접이 있어서 떨려.", first)])
    child = pexpect.spawn(sys.executable, ["-m", "kogpt2_chatbot", "chat", "--model_params", str(ckpt), "--sentiment",
                                           "1"], cwd=str(ROOT), env=ENV, encoding="utf-8", timeout=120)
    try:
        child.expect_exact("최근 2턴 기억")
        for question, reply in (("내일 면접이 있어서 떨려.", first), ("잘할 수 있을까?", second)):
            child.expect_exact("user > ")
            child.sendline(question)
            child.expect_exact("Simsimi > ")
            child.expect_exact("user > ")
            assert child.before.strip() == reply
            child.sendline("")
        child.sendline("/reset")
        child.expect_exact("대화 기록을 지웠습니다")
        child.expect_exact("user > ")
        child.sendline("잘할 수 있을까?")
        child.expect_exact("Simsimi > ")
        child.expect_exact("user > ")
        assert child.before.strip() == bot.chat("잘할 수 있을까?", 1)
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_pipe_and_history_flag(dialogue_dir):
    ckpt = str(dialogue_dir / "model_-last.ckpt")
    bot = Chatbot.load(ckpt)
    lines = ["지갑을 잃어버렸어.", "어디서 잃어버렸는지 모르겠어."]
    run = lambda *flags: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "kogpt2_chatbot", "chat", "--model_params", ckpt, *flags], cwd=ROOT, env=ENV,
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    talk = bot.conversation()
    assert run().stdout.splitlines() == [talk.say(q) for q in lines]
    assert run("--history", "0").stdout.splitlines() == [bot.chat(q) for q in lines]
    bad = run("--history", "-1")
    assert bad.returncode == 2 and "argument --history: history_turns must be >= 0; got -1" in bad.stderr


def test_server_uses_the_openai_messages_and_chat_history(dialogue_dir):
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.serve import create_app

    bot = Chatbot.load(dialogue_dir / "model_-last.ckpt")
    openai = pytest.importorskip("openai")
    history = [("강아지를 입양했어.", "강아지라니 정말 귀엽겠어요!")]
    with TestClient(create_app(bot), base_url="http://localhost") as client:
        api = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=client)
        messages = [{"role": "user", "content": history[0][0]}, {"role": "assistant", "content": history[0][1]},
                    {"role": "user", "content": "이름을 뭐로 지을까?"}]
        reply = api.chat.completions.create(model="kogpt2", messages=messages, extra_body={"sentiment": 2})
        assert reply.choices[0].message.content == bot.chat("이름을 뭐로 지을까?", 2, history)
        streamed = api.chat.completions.create(model="kogpt2", messages=messages, stream=True,
                                               extra_body={"sentiment": 2})
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == bot.chat("이름을 뭐로 지을까?", 2, history)
        r = client.post("/chat", json={"question": "이름을 뭐로 지을까?", "sentiment": 2,
                                       "history": [{"question": history[0][0], "answer": history[0][1]}]})
        assert r.json()["answer"] == bot.chat("이름을 뭐로 지을까?", 2, history) and r.json()["history_used"] == 1
        for bad, words in (([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "both user"),
                           ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "role 'tool'")):
            r = client.post("/v1/chat/completions", json={"messages": bad})
            assert r.status_code == 422 and words in r.json()["error"]["message"]


def test_export_replies_the_same_through_plain_transformers(dialogue_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bot = Chatbot.load(dialogue_dir / "model_-last.ckpt")
    out = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "export", "--model_params",
                          str(dialogue_dir / "model_-last.ckpt"), "--out", str(tmp_path / "hf")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    frame = pd.read_csv(DIALOGUES, dtype=str, keep_default_na=False)
    for row in frame.head(5).itertuples():
        history = [(row.사람문장1, row.시스템문장1)]
        messages = [{"role": "user", "content": row.사람문장1, "sentiment": 0},
                    {"role": "assistant", "content": row.시스템문장1},
                    {"role": "user", "content": row.사람문장2 or "고마워", "sentiment": 0}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():  # the export's own generation defaults, plus the bot's 3-gram rule
            new = model.generate(**ids, no_repeat_ngram_size=3)[0, ids["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True).strip()
        assert text == bot.chat(row.사람문장2 or "고마워", 0, history)


def test_messages_read_as_turns_the_same_for_every_door():
    from kogpt2_chatbot.framing import Turn, messages_to_turns

    messages = [{"role": "system", "content": "친절하게"}, {"role": "assistant", "content": "무엇이든 물어보세요"},
                {"role": "user", "content": " 배고파 ", "sentiment": 1}, {"role": "assistant", "content": "밥 드세요."},
                {"role": "user", "content": [{"type": "text", "text": "뭐 먹지"}]}]
    talk = messages_to_turns(messages, sentiment="positive")
    assert talk.turns == [Turn("배고파", "밥 드세요.", 1)] and talk.question == Turn("뭐 먹지", "", "positive")
    assert talk.skipped == ("system", "greeting")
    assert messages_to_turns(messages[:4]).question is None
    for bad, words in ((messages[2:3] * 2, "messages 1 and 2 are both user"), ([messages[2], messages[3]] + messages[3:4],
                       "messages 2 and 3 are both assistant"), ([{"role": "tool", "content": "x"}], "role 'tool'"),
                       ([{"role": "user", "content": None}], r"message 1 \(user\) is empty"), (["hi"], "not an object")):
        with pytest.raises(ValueError, match=words):
            messages_to_turns(bad)
