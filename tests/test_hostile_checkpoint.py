"""Hostile model files at every door that reads one: a malformed checkpoint gets the same one line
from Chatbot.load, KoGPT2Chat.load_from_checkpoint, ask, evaluate, export and train --resume; a
model that ships its own code is refused before transformers could run it or ask about it."""
import json
import os
import pickle
import shutil
import zipfile

import pytest
import torch

from kogpt2_chatbot import Chatbot
from kogpt2_chatbot.__main__ import main
from kogpt2_chatbot.checkpoint import CheckpointError
from kogpt2_chatbot.module import KoGPT2Chat

from conftest import SAMPLE

KINDS = ["csv", "empty", "truncated", "bit-flipped", "code-pickle", "raw-pickle", "plain-dict", "other-zip", "folder"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def one_line_error(code, err) -> str:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


@pytest.fixture(scope="module")
def good(trained_dir):
    return trained_dir / "model_-last.ckpt"


def make_bad(kind: str, good, folder):
    path = folder / "model.ckpt"
    data = good.read_bytes()
    if kind == "csv":
        path.write_text("Q,A,label\n안녕,반가워,0\n", encoding="utf-8")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "bit-flipped":  # one bit of one weight: a zip CRC fails, torch.load alone would not notice
        with zipfile.ZipFile(good) as archive:
            member = max(archive.infolist(), key=lambda m: m.file_size)
        flipped = bytearray(data)
        flipped[member.header_offset + 30 + len(member.filename) + len(member.extra) + 100] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "code-pickle":
        torch.save({"state_dict": {}, "hook": os.system}, path)
    elif kind == "raw-pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": {}}))
    elif kind == "plain-dict":
        torch.save({"weights": torch.zeros(2), "note": "not a chatbot"}, path)
    elif kind == "other-zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path = folder / "just-a-folder"
        path.mkdir()
        (path / "notes.txt").write_text("x")
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_checkpoint_gets_the_same_line_at_every_door(kind, good, tmp_path, capsys):
    bad = make_bad(kind, good, tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(CheckpointError) as python_error:
        Chatbot.load(bad)
    message = str(python_error.value)
    assert str(bad) in message and "\n" not in message
    with pytest.raises(CheckpointError) as module_error:
        KoGPT2Chat.load_from_checkpoint(bad)
    assert str(module_error.value) == message
    for argv in (["ask", "안녕", "--model_params", bad],
                 ["evaluate", "--model_params", bad, "--out", tmp_path / "eval"],
                 ["export", "--model_params", bad, "--out", tmp_path / "hf"]):
        assert one_line_error(*run(capsys, *argv)[::2]) == message
    resume = ["train", "--base-model", "scratch-tiny", "--data", SAMPLE, "--model-dir", tmp_path / "run", "--resume"]
    assert one_line_error(*run(capsys, *resume, bad)[::2]) == f"--resume: {message}"
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, nothing removed


def test_a_bit_flip_anywhere_in_the_weights_is_refused(good, tmp_path):
    data = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        members = [m for m in archive.infolist() if m.file_size > 64]
    for n, member in enumerate(members[:: max(1, len(members) // 8)]):
        flipped = bytearray(data)
        flipped[member.header_offset + 30 + len(member.filename) + len(member.extra) + member.file_size // 2] ^= 1
        path = tmp_path / f"{n}.ckpt"
        path.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="fails its checksum"):
            Chatbot.load(path)


def test_resume_past_max_epochs_is_one_line(good, tmp_path, capsys):
    epochs = torch.load(good, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    argv = ["train", "--base-model", "scratch-tiny", "--data", SAMPLE, "--model-dir", tmp_path / "run",
            "--resume", good, "--max_epochs", epochs]
    line = one_line_error(*run(capsys, *argv)[::2])
    assert f"already trained {epochs} epoch(s)" in line and "larger --max_epochs" in line
    assert not (tmp_path / "run").exists()


# --- code shipped with a model -------------------------------------------------------------------

@pytest.fixture
def custom_code_folder(trained_dir, tmp_path):
    """Our own export, plus an auto_map naming a module that leaves a marker file when it runs."""
    folder = tmp_path / "custom"
    shutil.copytree(trained_dir / "hf", folder)
    marker = tmp_path / "code-ran"
    (folder / "custom_gpt2.py").write_text(
        f"from transformers import GPT2LMHeadModel\nopen({str(marker)!r}, 'w').write('ran')\n\n\n"
        "class CustomGPT2(GPT2LMHeadModel):\n    pass\n", encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModelForCausalLM": "custom_gpt2.CustomGPT2"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder, marker


def test_a_model_folder_with_its_own_code_is_refused(custom_code_folder, capsys, monkeypatch):
    folder, marker = custom_code_folder
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("transformers asked to run the code"))
    with pytest.raises(CheckpointError, match="ships its own Python code"):
        Chatbot.load(folder)
    line = one_line_error(*run(capsys, "ask", "안녕", "--model_params", folder)[::2])
    assert "auto_map" in line and "--trust-remote-code" in line
    code, _, err = run(capsys, "train", "--base-model", folder, "--data", SAMPLE, "--model-dir", folder.parent / "r")
    assert "ships its own Python code" in one_line_error(code, err)
    assert not marker.exists()


def test_trust_remote_code_is_the_one_way_to_run_it(custom_code_folder, capsys):
    folder, marker = custom_code_folder
    code, out, err = run(capsys, "ask", "배고파", "--model_params", folder, "--trust-remote-code")
    assert code == 0 and out.strip() and marker.exists()


def test_a_lora_checkpoint_over_a_code_base_is_refused_before_the_fingerprint(custom_code_folder, tmp_path):
    folder, marker = custom_code_folder
    spec = {"kind": "lora", "base_model": str(folder), "config_fingerprint": "not checked yet",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": None}, "new_token_ids": [],
            "model_type": "gpt2", "tokenizer_json": "{}", "special_tokens": {}, "extra_special_tokens": []}
    torch.save({"state_dict": {}, "hyper_parameters": {"base_model": str(folder), "backbone": spec}},
               tmp_path / "lora.ckpt")
    with pytest.raises(CheckpointError, match="LoRA adapter over .* ships its own Python code"):
        Chatbot.load(tmp_path / "lora.ckpt")
    assert not marker.exists()
