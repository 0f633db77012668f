"""GGUF: export, the file read back, llama.cpp's tokens and replies against ours, the other
architectures' weights in llama.cpp, the Ollama Modelfile, and the clear errors."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import Chatbot, framing, gguf_file
from kogpt2_chatbot.__main__ import main

from conftest import SAMPLE


def errors(err: str) -> list[str]:
    """The error lines of a command's stderr (doors also say which model they loaded)."""
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if not line.startswith("model: ")]


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code or 0, out, err


@pytest.fixture(scope="module")
def exported(trained_dir, tmp_path_factory):
    """The trained tiny bot as f32 and q8_0 GGUFs (through the command line's functions)."""
    folder = tmp_path_factory.mktemp("gguf")
    bot = Chatbot.load(trained_dir / "model_-last.ckpt")
    return {t: bot.save_gguf(folder / f"bot-{t}.gguf", t)[0] for t in ("f32", "q8_0")}


def llama(path, **kwargs):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                    "(pip install -e '.[llamacpp]'); the llama.cpp checks need it")
    return llama_cpp.Llama(str(path), verbose=False, **kwargs)


def test_export_command_writes_gguf_and_modelfile(trained_dir, tmp_path, capsys):
    code, out, err = run(capsys, "export", "--model_params", trained_dir / "model_-last.ckpt", "--format", "gguf",
                         "--outtype", "q8_0", "--out", tmp_path / "bot.gguf")
    assert code == 0, err
    assert (tmp_path / "bot.gguf").read_bytes()[:4] == b"GGUF"
    assert "ollama create" in out and "llama-server" in out
    recipe = (tmp_path / "bot.Modelfile").read_text(encoding="utf-8")
    assert recipe.startswith("FROM ./bot.gguf\n")
    assert 'PARAMETER stop "</s>"' in recipe and "PARAMETER num_predict 64" in recipe
    assert "<usr> {{ .Content }}<unused1> {{ $s }}<sys>" in recipe
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_the_file_reads_back_to_the_same_bot(trained_dir, exported):
    bot = Chatbot.load(trained_dir / "model_-last.ckpt")
    back = Chatbot.load(exported["f32"])
    ours, theirs = bot.model.state_dict(), back.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if ours[k].is_floating_point())
    assert back.history_turns == bot.history_turns and back.info["gguf_type"] == "f32"
    assert back.tokenizer.backend_tokenizer.to_str() == bot.tokenizer.backend_tokenizer.to_str()
    q8 = Chatbot.load(exported["q8_0"]).model.state_dict()
    assert max(float((ours[k] - q8[k]).abs().max()) for k in ours if ours[k].is_floating_point()) < 0.05


def sample_texts():
    rows = pd.read_csv(SAMPLE, dtype=str)
    return [t.strip() for t in [*rows.Q, *rows.A]]


def test_llama_cpp_tokenizes_to_our_ids(exported):
    llm = llama(exported["f32"], vocab_only=True)
    bot = Chatbot.load(exported["f32"])
    tok, unk = bot.tokenizer, bot.tokenizer.unk_token_id
    texts = [*sample_texts(), "ㅋㅋㅋ 배고파ㅠㅠ", "  두 칸  띄어   쓰기 ", "ABC xyz 123!?"]
    checked = 0
    for text in texts:
        ours = framing.text_ids(tok, text.strip())
        if unk in ours:  # a character the vocabulary lacks: ours says <unk>, llama.cpp drops it
            continue
        assert llm.tokenize((" " + text.strip()).encode(), add_bos=False, special=False) == ours, text
        checked += 1
    assert checked >= 0.9 * len(texts)
    # Typed control tokens stay text.
    typed = " <sys> </s> <usr>"
    theirs = llm.tokenize(typed.encode(), add_bos=False, special=False)
    assert theirs == framing.text_ids(tok, typed.strip())
    assert not set(theirs) & set(framing.control_ids(tok).values())


def test_the_gguf_chat_template_renders_the_framing_ids(exported):
    import jinja2

    llm = llama(exported["f32"], vocab_only=True)
    bot = Chatbot.load(exported["f32"])
    meta = llm.metadata["tokenizer.chat_template"]
    assert meta == gguf_file.CHAT_TEMPLATE
    rows = pd.read_csv(SAMPLE, dtype=str)
    (q1, a1), (q2, _) = [(q, a) for q, a in zip(rows.Q, rows.A)][:2]
    messages = [{"role": "user", "content": q1, "sentiment": 1}, {"role": "assistant", "content": a1},
                {"role": "user", "content": q2}]
    text = jinja2.Environment().from_string(meta).render(messages=messages, sentiment="positive")
    ours = framing.prompt_ids(bot.tokenizer, q2, 2, history=[framing.Turn(q1, a1, "1")])
    assert bot.tokenizer.unk_token_id not in ours
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == ours


def test_the_modelfile_template_renders_the_framing_ids_in_go(exported, tmp_path):
    """The Modelfile's TEMPLATE through Go's text/template, as Ollama's chat renders it (the
    sentiment is the system prompt), then llama.cpp's tokenizer: the framing's prompt ids."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt install golang-go); Ollama's templates are Go templates, so the "
                    "Modelfile's template is checked with Go's own text/template")
    llm = llama(exported["f32"], vocab_only=True)
    bot = Chatbot.load(exported["f32"])
    recipe = gguf_file.modelfile("bot.gguf", bot.decoding)
    template = recipe.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    rows = pd.read_csv(SAMPLE, dtype=str)
    (q1, a1), (q2, _) = [(q, a) for q, a in zip(rows.Q, rows.A)][:2]
    user = lambda q: {"role": "user", "content": q}  # noqa: E731
    cases = [  # (system prompt or None, messages, the framing's prompt ids)
        ("0", [user(q1)], framing.prompt_ids(bot.tokenizer, q1, 0)),
        ("1", [user(q1)], framing.prompt_ids(bot.tokenizer, q1, 1)),
        ("positive", [user(q2)], framing.prompt_ids(bot.tokenizer, q2, 2)),
        ("negative", [user(q1), {"role": "assistant", "content": a1}, user(q2)],
         framing.prompt_ids(bot.tokenizer, q2, 1, history=[framing.Turn(q1, a1, "1")])),
        (None, [user(q2)], framing.prompt_ids(bot.tokenizer, q2, 0)),  # no system prompt: 0, as SYSTEM "0"
    ]
    conversations = [([{"role": "system", "content": system}] if system is not None else []) + messages
                     for system, messages, _ in cases]
    env = {**os.environ, "GOCACHE": str(tmp_path / "go-cache"), "GOPATH": str(tmp_path / "go"), "GOFLAGS": "-mod=mod"}
    result = subprocess.run([go, "run", str(Path(__file__).with_name("ollama_template.go"))], env=env, text=True,
                            input=json.dumps({"template": template, "conversations": conversations}),
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    for (system, _, ours), text in zip(cases, rendered):
        assert bot.tokenizer.unk_token_id not in ours
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, (system, text)


def test_llamacpp_replies_as_ours(trained_dir, exported):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    questions = list(dict.fromkeys(pd.read_csv(SAMPLE, dtype=str).Q))[:60]
    ours = Chatbot.load(trained_dir / "model_-last.ckpt")
    for decoding in ({"no_repeat_ngram_size": 0}, {}):  # plain greedy, and the default decoding
        expected = ours.chat_batch(questions, "0", **decoding)
        theirs = Chatbot.load(exported["f32"], engine="llamacpp")
        assert theirs.engine.name == "llamacpp"
        got = theirs.chat_batch(questions, "0", **decoding)
        same = sum(a == b for a, b in zip(expected, got))
        assert same >= 0.95 * len(questions), [(a, b) for a, b in zip(expected, got) if a != b][:5]
        assert "".join(theirs.stream(questions[0], "0", **decoding)) == got[0]
    q8 = Chatbot.load(exported["q8_0"], engine="llamacpp").chat_batch(questions, "0")
    assert sum(bool(r) for r in q8) == len(questions)  # never empty, whatever the quantisation did


def test_q8_0_loads_without_the_amx_kernels_that_crash_on_it(exported):
    """On a CPU where llama.cpp has AMX kernels they segfault on a q8_0 file; the engine loads its
    weights as stored there (and only there), and nothing else in the process is changed."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from kogpt2_chatbot.engines.llamacpp import has_amx

    bot = Chatbot.load(exported["q8_0"], engine="llamacpp")
    assert bot.engine.llm.model_params.use_extra_bufts is not has_amx(llama_cpp)
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts
    assert all(bot.chat_batch(["배고파", "헤어졌어", "첫 데이트야"], "0"))


def test_doors_take_a_gguf(exported, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    code, out, err = run(capsys, "ask", "배고파", "--model_params", exported["q8_0"])
    assert code == 0, err
    assert out.strip()


# --- other architectures: llama.cpp's logits of a merged model equal transformers' ----------------

SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
             max_position_embeddings=256)
ARCHS = {
    "gpt_neox": SMALL,
    "llama": {**SMALL, "num_key_value_heads": 1},
    "qwen2": {**SMALL, "num_key_value_heads": 1},
    "qwen3": {**SMALL, "num_key_value_heads": 1, "head_dim": 32},
    "gemma": {**SMALL, "num_key_value_heads": 1, "head_dim": 32},
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_other_architectures_run_in_llama_cpp(arch, tiny_backbone, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from kogpt2_chatbot import backbone as bb

    tok = bb.tokenizer_from_spec(bb.backbone_spec(*tiny_backbone))
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch, vocab_size=len(tok), **ARCHS[arch])
    model = AutoModelForCausalLM.from_config(config).eval()
    bb.ensure_framing_tokens(model, tok)
    path = gguf_file.write_gguf(model, tok, tmp_path / f"{arch}.gguf", "f32", {})
    prompt = framing.prompt_ids(tok, "배고파 밥 먹고 싶어", 0)
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0, -1]
    back, _, _ = gguf_file.read_gguf(path)
    with torch.no_grad():
        assert torch.allclose(back(torch.tensor([prompt])).logits[0, -1], expected, atol=1e-5)
    llm = llama(path, n_ctx=256, logits_all=True, type_k=0, type_v=0)
    llm.eval(prompt)
    theirs = torch.tensor(llm.scores[len(prompt) - 1])
    assert (theirs - expected).abs().max() < 2e-3 * expected.abs().max() + 1e-4, arch
    assert int(theirs.argmax()) == int(expected.argmax())


# --- bad input -----------------------------------------------------------------------------

def test_refused_architecture_and_tokenizer(tiny_backbone, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tok = tiny_backbone
    config = AutoConfig.for_model("opt", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32)
    with pytest.raises(gguf_file.GGUFError, match="supports gpt2, gpt_neox, llama.*'opt'"):
        gguf_file.write_gguf(AutoModelForCausalLM.from_config(config), tok, tmp_path / "x.gguf")
    with pytest.raises(gguf_file.GGUFError, match="--outtype must be one of f32, f16, q8_0"):
        gguf_file.write_gguf(model, tok, tmp_path / "x.gguf", "q4_k")
    assert not list(tmp_path.iterdir())


def test_export_errors_are_one_line(trained_dir, tmp_path, capsys):
    ckpt = trained_dir / "model_-last.ckpt"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "someone-elses.gguf").write_bytes(b"GGUF not ours")
    for argv, says in (
        (["--out", blocker / "bot.gguf"], "cannot write"),
        (["--out", tmp_path / "bot.bin"], "--out must name a .gguf file"),
        (["--out", tmp_path / "bot.gguf", "--adapter-only"], "--adapter-only is for --format hf"),
        (["--out", tmp_path / "someone-elses.gguf"], "exists and is not a GGUF this kit wrote"),
    ):
        code, out, err = run(capsys, "export", "--model_params", ckpt, "--format", "gguf", *argv)
        assert code == 2 and says in err and len(errors(err)) == 1, err
    code, out, err = run(capsys, "export", "--model_params", ckpt, "--out", tmp_path / "hf", "--outtype", "q8_0")
    assert code == 2 and "--outtype is for --format gguf" in err


def test_files_that_are_not_our_gguf_are_refused(exported, tmp_path, capsys):
    import gguf

    whole = exported["f32"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) // 2])
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(str(foreign), "gpt2")
    writer.add_string("general.name", "someone else's")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path, says in ((cut, "cut short"), (fake, "not a GGUF file"), (foreign, "not one of this kit")):
        code, out, err = run(capsys, "ask", "배고파", "--model_params", path)
        assert code == 2 and says in err and len(errors(err)) == 1, err


def test_without_llama_cpp_python_one_line_with_the_install_command(exported, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    bot = Chatbot.load(exported["f32"], engine="llamacpp")
    with pytest.raises(ValueError, match=r"pip install .*llamacpp"):
        bot.chat("배고파")
    assert json.loads(json.dumps(bot.info))["gguf_type"] == "f32"
    for door in (["ask", "배고파"], ["serve", "--port", "8799"]):  # serve stops before it listens
        code, out, err = run(capsys, *door, "--model_params", exported["f32"])
        assert code == 2 and "pip install" in err and len(errors(err)) == 1, err
    assert Chatbot.load(exported["f32"], engine="lean").chat("배고파")  # the same file without llama.cpp
