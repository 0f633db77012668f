"""The chatbot API: loading every kind of source, clear errors, replies, conversations."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot.api import CheckpointError, MissingCheckpoint, pick_device
from kogpt2_chatbot.decoding import Decoding, DecodingError
from kogpt2_chatbot.module import KoGPT2Chat

from conftest import ROOT

QUESTIONS = ["배고파", "헤어졌어", "첫 데이트야", "심심해", "시험 망쳤어"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "kogpt2_chatbot", *args], cwd=ROOT, env=ENV, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ckpt(trained_dir):
    return trained_dir / "model_-last.ckpt"


@pytest.fixture(scope="module")
def bot(ckpt):
    return Chatbot.load(ckpt)


def test_chatbot_replies_as_the_training_module_does(bot, ckpt):
    module = KoGPT2Chat.load_from_checkpoint(ckpt).eval()
    sents = [0, 1, 2, 0, 1]
    assert bot.chat_batch(QUESTIONS, sents) == [module.chat(q, s) for q, s in zip(QUESTIONS, sents)]
    assert "".join(bot.stream("배고파", 2)) == bot.chat("배고파", 2) == module.chat("배고파", 2)
    assert bot.history_turns == 0 and bot.base_model == "scratch-tiny" and bot.split.get("val_groups")


def test_loads_an_exported_folder_and_replies_the_same(bot, tmp_path):
    out = bot.save_pretrained(tmp_path / "hf")
    again = Chatbot.load(out)
    assert again.chat_batch(QUESTIONS) == bot.chat_batch(QUESTIONS)
    assert again.history_turns == bot.history_turns and again.base_model == "scratch-tiny"
    result = cli("ask", "배고파", "--model_params", str(out))
    assert result.returncode == 0 and result.stdout.strip() == bot.chat("배고파")


@pytest.mark.parametrize("kind", ["csv", "truncated", "code", "other-torch-file", "folder"])
def test_a_file_that_is_no_checkpoint_gets_one_clear_line(ckpt, tmp_path, kind):
    path = tmp_path / "model.ckpt"
    if kind == "csv":
        path.write_text("Q,A,label\n안녕,반가워,0\n", encoding="utf-8")
        words = "is not a checkpoint"
    elif kind == "truncated":
        path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        words = "damaged or cut short"
    elif kind == "code":
        torch.save({"state_dict": {}, "hook": os.system}, path)  # pickles a callable: code on load
        words = "holds Python objects"
    elif kind == "other-torch-file":
        torch.save({"weights": torch.zeros(2)}, path)
        words = "not a checkpoint of this kit"
    else:
        path = tmp_path / "empty-folder"
        path.mkdir()
        words = "folder without config.json"
    with pytest.raises(CheckpointError, match=words):
        Chatbot.load(path)
    result = cli("ask", "안녕", "--model_params", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_checkpoint_and_unreachable_hub_id(tmp_path):
    with pytest.raises(MissingCheckpoint, match="Train one first"):
        Chatbot.load(tmp_path / "none.ckpt")
    with pytest.raises(CheckpointError, match="could not load the hub model someone/kogpt2-chatbot"):
        Chatbot.load("someone/kogpt2-chatbot")  # HF_HUB_OFFLINE=1 in tests


def test_cuda_without_cuda_warns_and_uses_the_cpu(capsys, ckpt):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert pick_device(device="cuda") == torch.device("cpu")
    assert "no CUDA GPU here; running on the CPU" in capsys.readouterr().err
    result = cli("ask", "배고파", "--device", "cuda", "--model_params", str(ckpt))
    assert result.returncode == 0 and "warning: --device cuda" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ValueError, match="is not a device"):
        pick_device(device="gpu7")


def test_a_gpu_index_this_machine_lacks_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"^--device cuda:2: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1$"):
        pick_device(device="cuda:2")
    assert pick_device(device="cuda:1") == torch.device("cuda:1")


def test_decoding_bounds_read_the_same_at_every_door(bot, ckpt):
    with pytest.raises(DecodingError) as python_error:
        bot.chat("안녕", top_p=1.5)
    result = cli("ask", "안녕", "--top-p", "1.5", "--model_params", str(ckpt))
    assert result.returncode == 2 and str(python_error.value) in result.stderr
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.serve import create_app

    with TestClient(create_app(bot), base_url="http://localhost") as client:
        r = client.post("/chat", json={"question": "안녕", "top_p": 1.5})
    assert r.status_code == 422 and r.json()["error"]["message"] == str(python_error.value)
    assert str(python_error.value) == "top_p must be > 0 and <= 1; got 1.5"
    with pytest.raises(DecodingError, match="max_new_tokens must be between 1 and 1024; got 0"):
        Decoding(max_new_tokens=0)


def test_history_is_used_when_given_and_a_conversation_keeps_it(bot):
    history = [("내 이름은 민수야", "반가워요.")]
    with_history = bot.prompt("내 이름 알아?", 0, history)
    alone = bot.prompt("내 이름 알아?", 0)
    assert len(with_history) > len(alone) and with_history[-len(alone):] == alone
    talk = bot.conversation(history_turns=1)
    first = talk.say("배고파")
    second = talk.say("뭐 먹지", sentiment=2)
    assert first == bot.chat("배고파") and second == bot.chat("뭐 먹지", 2, [("배고파", first, 0)])
    assert [t[2] for t in talk.turns] == ["0", "2"]
    streamed = "".join(talk.stream("고마워"))
    assert streamed == bot.chat("고마워", 0, [("뭐 먹지", second, 2)])  # only the last turn is kept
    talk.reset()
    assert talk.turns == [] and talk.say("배고파") == first
    # A bot trained on single questions keeps none by default: each question stands alone.
    plain = bot.conversation()
    plain.say("배고파")
    assert plain.say("헤어졌어") == bot.chat("헤어졌어")


@pytest.mark.parametrize("history, words", [
    (["just text"], "history turn 1"),
    ([("", "answer")], "history turn 1"),
    ([("q", 3)], "history turn 1"),
])
def test_bad_history_is_a_clear_error(bot, history, words):
    with pytest.raises(ValueError, match=words):
        bot.chat("안녕", history=history)


def test_pickle_is_never_needed_to_load(ckpt):
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
    assert raw["chatbot"]["history_turns"] == 0
    classifier = raw["chatbot"]["sentiment_classifier"]  # the `auto` classifier: a dict, tensors, lists
    assert isinstance(classifier["vocabulary"], dict) and classifier["coef"].shape[0] == 3
    assert isinstance(pickle.dumps(raw["chatbot_split"]), bytes)


def test_a_clients_history_is_used_as_given_at_every_door(bot):
    """The Python API and both HTTP routes read a caller's history the same way, even for a
    checkpoint trained on single questions (whose own conversations keep no turns)."""
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.serve import create_app

    history = [("배고파", "밥 드세요.")]
    want = bot.reply("뭐 먹지", 0, history)
    assert bot.history_turns == 0 and want.history == [("배고파", "밥 드세요.", "0")]
    with TestClient(create_app(bot), base_url="http://localhost") as client:
        r = client.post("/chat", json={"question": "뭐 먹지", "sentiment": 0,
                                       "history": [{"question": "배고파", "answer": "밥 드세요."}]}).json()
        assert (r["answer"], r["history_used"], r["sentiment_source"]) == (want.text, 1, "given")
        messages = [{"role": "user", "content": "배고파"}, {"role": "assistant", "content": "밥 드세요."},
                    {"role": "user", "content": "뭐 먹지", "sentiment": 0}]
        r = client.post("/v1/chat/completions", json={"messages": messages}).json()
        assert (r["choices"][0]["message"]["content"], r["history_used"]) == (want.text, 1)
        assert client.get("/health").json()["history_turns"] == 0  # what the web page itself keeps
