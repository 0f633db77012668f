"""LoRA on bigger bases, offline: tiny random models of each architecture, a BPE tokenizer trained on
the sample chats that lacks the framing tokens, trained a few steps with LoRA, then chat, export,
reload in plain transformers, resume, and the clear errors."""
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot

from conftest import ROOT, SAMPLE

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
             max_position_embeddings=256)
ARCHS = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
    "gpt_neox": SMALL,
    "llama": {**SMALL, "num_key_value_heads": 1},
    "qwen2": {**SMALL, "num_key_value_heads": 1},
    "qwen3": {**SMALL, "num_key_value_heads": 1, "head_dim": 32},
    "gemma": {**SMALL, "num_key_value_heads": 1, "head_dim": 32},
}
QUESTIONS = ["배고파", "헤어졌어", "첫 데이트야"]


def make_base(folder, arch):
    """A random `arch` model and a BPE tokenizer without <usr>, <sys>, <unused1>, <pad>, </s>:
    a base the framing tokens must be added to, as with most hub models."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    rows = pd.read_csv(SAMPLE, dtype=str)
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator([*rows.Q, *rows.A, "0 1 2"], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<|endoftext|>"], show_progress=False,
        initial_alphabet=[chr(c) for c in range(33, 127)]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), bos_token_id=1, eos_token_id=1, pad_token_id=None,
                                  **ARCHS[arch])
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def lora_flags(base, out, *extra, epochs=3):
    return ["train", "--base-model", str(base), "--data", str(SAMPLE), "--lora", "--lora-r", "4", "--lr", "3e-3",
            "--max_epochs", str(epochs), "--batch-size", "32", "--samples", "0", "--model-dir", str(out), *extra]


def train_lora(base, out, *extra, epochs=3):
    """The train command in its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kogpt2_chatbot", *lora_flags(base, out, *extra, epochs=epochs)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def lora_run(request, tmp_path_factory):
    """Each architecture trained by the same command, run in this process (the seconds a process takes
    to import torch and transformers, six times over, test nothing: test_resume_and_the_missing_base
    runs the command in processes of its own)."""
    from kogpt2_chatbot.__main__ import main

    arch = request.param
    root = tmp_path_factory.mktemp(f"lora-{arch}")
    base = make_base(root / "base", arch)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(lora_flags(base, root / "run"))
    assert not code, err.getvalue()[-3000:]
    return arch, base, root / "run"


def test_lora_trains_chats_and_exports_for_each_architecture(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, base, run = lora_run
    ckpt = run / "model_-last.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    keys = list(raw["state_dict"])
    assert keys and all("lora_" in k or "trainable_tokens" in k for k in keys)  # the adapter, not the base
    assert any("trainable_tokens" in k for k in keys)  # the framing tokens the base lacked are trained
    assert raw["hyper_parameters"]["backbone"]["kind"] == "lora"
    bot = Chatbot.load(ckpt)
    assert bot.engine.name == "generate"  # never the lean loop over raw weights without the adapter
    replies = bot.chat_batch(QUESTIONS)
    assert all(r.strip() for r in replies)
    # The merged export in plain transformers: the same next-token scores as the adapter bot.
    out = bot.save_pretrained(tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "배고파", "sentiment": 0}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert ids["input_ids"][0].tolist() == bot.prompt("배고파", 0)
    with torch.no_grad():
        merged = plain(**ids).logits[0, -1]
        adapted = bot.model(**ids).logits[0, -1]
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert Chatbot.load(out).chat_batch(QUESTIONS, 0) == bot.chat_batch(QUESTIONS, 0) or arch != "gpt2"
    # The merged GGUF in llama.cpp: the same next-token scores again.
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        from kogpt2_chatbot.gguf_file import GGUFError

        try:
            path, _ = bot.save_gguf(tmp_path / "bot.gguf", "f32")
        except GGUFError as err:  # transformers gives qwen2 its own byte-level tokenizer: refused in one line
            assert "Metaspace" in str(err) and "\n" not in str(err) and arch == "qwen2", (arch, str(err))
            return
        llm = llama_cpp.Llama(str(path), n_ctx=256, logits_all=True, type_k=0, type_v=0, verbose=False)
        llm.eval(ids["input_ids"][0].tolist())
        theirs = torch.tensor(llm.scores[ids["input_ids"].shape[1] - 1])
        assert (theirs - adapted).abs().max() < 2e-3 * adapted.abs().max() + 1e-4, arch


def test_no_path_ignores_the_adapter(lora_run):
    arch, base, run = lora_run
    bot = Chatbot.load(run / "model_-last.ckpt")
    prompt = torch.tensor([bot.prompt("배고파", 0)])
    with torch.no_grad():
        with bot.model.disable_adapter():
            without = bot.model(input_ids=prompt).logits[0, -1]
        with_adapter = bot.model(input_ids=prompt).logits[0, -1]
        for name, param in bot.model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param))  # another adapter
        changed = bot.model(input_ids=prompt).logits[0, -1]
    assert not torch.allclose(without, with_adapter) and not torch.allclose(with_adapter, changed)
    before = [r.token_ids for r in bot.complete(bot.prompts(QUESTIONS))]
    assert before != [r.token_ids for r in Chatbot.load(run / "model_-last.ckpt").complete(bot.prompts(QUESTIONS))]


def test_checkpoint_is_a_fraction_of_the_base(lora_run):
    arch, base, run = lora_run
    weights = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    assert (run / "model_-last.ckpt").stat().st_size < weights  # tiny bases: the tokenizer and split dominate


def test_resume_and_the_missing_base(tmp_path, capsys):
    base = make_base(tmp_path / "base", "llama")
    first = train_lora(base, tmp_path / "run", epochs=1)
    assert first.returncode == 0, first.stderr[-2000:]
    again = train_lora(base, tmp_path / "run", "--resume", epochs=2)
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.load(tmp_path / "run" / "model_-last.ckpt", weights_only=True)["epoch"] == 1
    exported = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "export", "--model_params",
                               str(tmp_path / "run" / "model_-last.ckpt"), "--out", str(tmp_path / "adapter"),
                               "--adapter-only"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    shutil.move(base, tmp_path / "moved")
    with pytest.raises(Exception, match="LoRA adapter over the folder") as err:
        Chatbot.load(tmp_path / "run" / "model_-last.ckpt")
    assert str(base) in str(err.value)
    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "ask", "배고파", "--model_params",
                             str(tmp_path / "run" / "model_-last.ckpt")], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "LoRA adapter over" in result.stderr and "Traceback" not in result.stderr
    from kogpt2_chatbot.__main__ import main

    capsys.readouterr()
    code = main(["export", "--model_params", str(tmp_path / "run" / "model_-last.ckpt"), "--format", "gguf",
                 "--out", str(tmp_path / "bot.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and "LoRA adapter over" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bot.gguf").exists()


@pytest.mark.parametrize("flags, words", [
    (["--quantize", "nf4"], "add --lora"),
    (["--lora", "--quantize", "nf4"], "needs an NVIDIA GPU"),
    (["--lora", "--lora-r", "0"], "--lora-r: must be >= 1"),
])
def test_bad_lora_flags_stop_at_once(tmp_path, flags, words):
    if "needs an NVIDIA GPU" in words and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "train", "--base-model", str(tmp_path / "none"),
                             "--data", str(SAMPLE), *flags], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr


def test_lora_on_a_scratch_preset_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "train", "--base-model", "scratch-tiny",
                             "--data", str(SAMPLE), "--lora"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "drop --lora" in result.stderr


@pytest.mark.parametrize("lora_run", ["llama"], indirect=True)  # one architecture is enough for the doors
def test_every_door_takes_an_adapter_checkpoint(lora_run, tmp_path):
    from fastapi.testclient import TestClient

    from kogpt2_chatbot.answer_file import answer_file
    from kogpt2_chatbot.evaluate import evaluate
    from kogpt2_chatbot.serve import create_app

    arch, base, run = lora_run
    bot = Chatbot.load(run / "model_-last.ckpt", sentiment="0")
    expected = bot.chat_batch(QUESTIONS)
    with TestClient(create_app(bot), base_url="http://localhost") as client:
        assert [client.post("/chat", json={"question": q}).json()["answer"] for q in QUESTIONS] == expected
    src = tmp_path / "in.csv"
    pd.DataFrame({"Sentence": QUESTIONS}).to_csv(src, index=False)
    answer_file(bot, src, tmp_path / "out.csv", progress=False)
    assert list(pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False).Answer) == expected
    metrics = evaluate(bot, SAMPLE, "val", tmp_path / "ev", progress=False)
    assert metrics["rows"] > 0 and metrics["model"]["bpc"] > 0
