import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from kogpt2_chatbot import data as chatdata

from conftest import ROOT
from kogpt2_chatbot import framing
from kogpt2_chatbot.train import Interrupted, TrainConfig, train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_outputs(model_dir):
    for name in ("model_-last.ckpt", "model_-best.ckpt", "metrics.csv", "training_curves.png",
                 "hf/config.json", "hf/model.safetensors", "hf/tokenizer.json", "hf/chat_template.jinja"):
        assert (model_dir / name).exists(), name


def test_the_original_command_on_the_real_corpus_offline(tmp_path, corpus_csv):
    out = tmp_path / "M"
    result = run("train_torch.py", "--train", "--base-model", "scratch-tiny", "--data", str(corpus_csv),
                 "--max_epochs", "1", "--model-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_outputs(out)
    assert "Simsimi > " in result.stdout  # a first look at replies
    check = run("-c", f"""
from test_torch import KoGPT2Chat
from transformers import AutoModelForCausalLM, AutoTokenizer
m = KoGPT2Chat.load_from_checkpoint({str(out / 'model_-last.ckpt')!r})
AutoModelForCausalLM.from_pretrained({str(out / 'hf')!r}); AutoTokenizer.from_pretrained({str(out / 'hf')!r})
print('loaded', m.hparams.base_model, len(m.split["val_groups"]))
""")
    assert check.returncode == 0, check.stderr[-3000:]
    assert "loaded scratch-tiny" in check.stdout


def test_outputs_checkpoint_contents_and_split(trained_dir, sample_csv):
    assert_outputs(trained_dir)
    ckpt = torch.load(trained_dir / "model_-last.ckpt", weights_only=True)  # no pickled objects
    hp = ckpt["hyper_parameters"]
    assert hp["base_model"] == "scratch-tiny" and "tokenizer_json" in hp["backbone"]
    assert hp["lr"] == 3e-3
    split = ckpt["chatbot_split"]
    rows = pd.read_csv(sample_csv, dtype=str)
    assert split["val_groups"] and set(split["val_groups"]) <= set(rows.Q.map(chatdata.question_key))
    metrics = pd.read_csv(trained_dir / "metrics.csv")
    assert {"train_loss", "val_loss", "val_ppl"} <= set(metrics.columns)
    val = metrics["val_loss"].dropna()
    assert len(val) == 30 and val.min() < val.iloc[0] - 1  # it learns


def test_loaded_checkpoint_matches_hf_export(trained_dir):
    from transformers import AutoModelForCausalLM

    from kogpt2_chatbot.module import KoGPT2Chat

    best = KoGPT2Chat.load_from_checkpoint(trained_dir / "model_-best.ckpt").eval()
    hf = AutoModelForCausalLM.from_pretrained(trained_dir / "hf").eval()
    ids = torch.tensor([framing.prompt_ids(best.tokenizer, "배고파요", 0)])
    with torch.no_grad():
        assert torch.allclose(best(ids), hf(ids).logits, atol=1e-5)


def test_resume_continues_with_optimizer_state(trained_dir, sample_csv, tmp_path):
    import shutil

    run_dir = tmp_path / "resume"
    shutil.copytree(trained_dir, run_dir)
    before = torch.load(run_dir / "model_-last.ckpt", weights_only=True)
    # A different --val-ratio on resume does not move questions between the sides.
    train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(run_dir), max_epochs=31,
                      batch_size=16, lr=3e-3, val_ratio=0.3, samples=0, progress=False, resume="last"))
    after = torch.load(run_dir / "model_-last.ckpt", weights_only=True)
    assert after["epoch"] == before["epoch"] + 1
    steps_per_epoch = before["global_step"] // 30
    assert after["global_step"] == before["global_step"] + steps_per_epoch
    # The schedule went on from where it was (not restarted from warm-up).
    assert after["lr_schedulers"][0]["last_epoch"] == before["lr_schedulers"][0]["last_epoch"] + steps_per_epoch
    assert after["chatbot_split"]["val_groups"] == before["chatbot_split"]["val_groups"]
    # The tokenizer is the one the run started with.
    assert after["hyper_parameters"]["backbone"]["tokenizer_json"] == before["hyper_parameters"]["backbone"]["tokenizer_json"]


def test_ctrl_c_leaves_a_usable_last_checkpoint(sample_csv, tmp_path):
    import lightning as L

    from kogpt2_chatbot.module import KoGPT2Chat

    class CtrlC(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    cfg = TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(out), max_epochs=3,
                      batch_size=16, samples=0, progress=False)
    original = L.Trainer.__init__

    def with_ctrl_c(self, *args, callbacks=(), **kwargs):
        original(self, *args, callbacks=[*callbacks, CtrlC()], **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L.Trainer, "__init__", with_ctrl_c)
        with pytest.raises(Interrupted, match="interrupted at step 5: saved .*model_-last.ckpt.*--resume"):
            train(cfg)
    ckpt = torch.load(out / "model_-last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    model = KoGPT2Chat.load_from_checkpoint(out / "model_-last.ckpt")
    assert model.hparams.base_model == "scratch-tiny"
    train(TrainConfig(**{**cfg.__dict__, "resume": "last", "max_epochs": 1}))
    assert torch.load(out / "model_-last.ckpt", weights_only=True)["global_step"] > 5


def test_two_process_cpu_ddp(sample_csv, tmp_path):
    out = tmp_path / "ddp"
    result = run("-m", "kogpt2_chatbot", "train", "--base-model", "scratch-tiny", "--data", str(sample_csv),
                 "--max_epochs", "1", "--model-dir", str(out), "--accelerator", "cpu", "--devices", "2",
                 "--strategy", "ddp", "--batch-size", "16", "--samples", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(out / "model_-last.ckpt", weights_only=True)
    train_rows = 423 - len(ckpt["chatbot_split"]["val_groups"])  # every val question is unique here
    # Two processes share each epoch: half the steps a single process would take.
    assert ckpt["global_step"] == -(-train_rows // 32)
    assert (out / "hf" / "model.safetensors").exists()
    # Both processes' samples count (the shorter share is padded by one to keep them even).
    trained = int(result.stdout.split(" pairs -> ")[1].split(" train")[0])
    line = next(line for line in result.stdout.splitlines() if "samples in" in line)
    assert int(line.split("] ")[1].split(" samples")[0].replace(",", "")) in (trained, trained + 1)


def test_training_reports_its_samples_per_second(sample_csv, tmp_path, capsys):
    module = train(TrainConfig(data=str(sample_csv), base_model="scratch-tiny", model_dir=str(tmp_path / "m"),
                               max_epochs=2, batch_size=32, samples=0, progress=False))
    out = capsys.readouterr().out
    train_rows = int(out.split(" pairs -> ")[1].split(" train")[0])
    speed = module.throughput
    assert speed["samples"] == 2 * train_rows and speed["seconds"] > 0
    assert speed["samples_per_s"] > 0 and speed["after_first_epoch_samples_per_s"] > 0
    line = next(line for line in out.splitlines() if "samples in" in line)
    assert line.startswith(f"[train] {2 * train_rows:,} samples in ") and "samples/s (" in line
    assert "after the first epoch)" in line


def test_gpus_without_a_gpu_says_so_in_one_line_and_uses_the_cpu(capsys):
    from kogpt2_chatbot.train import resolve_hardware

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    hw = resolve_hardware(TrainConfig(gpus=1))
    assert hw == {"accelerator": "cpu", "devices": 1, "precision": "32-true", "on_gpu": False}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--gpus 1: no GPU found" in lines[0] and "training on the CPU" in lines[0]
    assert "warn" not in lines[0].lower() and ".py:" not in lines[0]  # not warnings.warn's source line


def test_missing_data_file_is_a_clear_cli_error(tmp_path):
    result = run("-m", "kogpt2_chatbot", "train", "--base-model", "scratch-tiny", "--data", str(tmp_path / "no.csv"),
                 "--model-dir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_scratch_presets_default_to_a_larger_learning_rate(sample_csv, tmp_path):
    from kogpt2_chatbot.train import build_module

    rows = pd.read_csv(sample_csv, dtype=str)
    cfg = TrainConfig(base_model="scratch-tiny", model_dir=str(tmp_path))
    assert build_module(cfg, rows, None).hparams.lr == 2e-3
    assert build_module(TrainConfig(**{**cfg.__dict__, "lr": 2e-4}), rows, None).hparams.lr == 2e-4


def test_export_command_writes_a_loadable_folder(trained_dir, tmp_path):
    result = run("-m", "kogpt2_chatbot", "export", "--model_params", str(trained_dir / "model_-best.ckpt"),
                 "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-2000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template
