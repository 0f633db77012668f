"""Faults during training: a real SIGKILL or SIGINT at a given step of `python -m kogpt2_chatbot train`,
then the same command with --resume; the result must be the uninterrupted run's, weight for weight."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, USER_ENV
from kogpt2_chatbot.__main__ import main

# The command under test, with a callback that sends the process a signal after step FAULT_STEP.
FAULTY = """
import os, signal, sys
import lightning as L
from kogpt2_chatbot.__main__ import main

at, sig = int(os.environ["FAULT_STEP"]), getattr(signal, os.environ["FAULT_SIGNAL"])

class Fault(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == at:
            os.kill(os.getpid(), sig)

original = L.Trainer.__init__
L.Trainer.__init__ = lambda self, *a, callbacks=(), **k: original(self, *a, callbacks=[*callbacks, Fault()], **k)
sys.exit(main(sys.argv[1:]))
"""
STEPS_PER_EPOCH = 13  # 401 training pairs of the sample, batches of 32


def flags(sample_csv, model_dir):
    # dropout 0: a resumed run makes one data iterator more, which draws from the random state, so
    # only a run without randomness after the split can be compared weight for weight.
    return ["train", "--base-model", "scratch-tiny", "--data", str(sample_csv), "--model-dir", str(model_dir),
            "--max_epochs", "3", "--batch-size", "32", "--dropout", "0", "--samples", "0"]


@pytest.fixture(scope="module")
def uninterrupted(sample_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(flags(sample_csv, out)) in (None, 0)
    return torch.load(out / "model_-last.ckpt", weights_only=True)


def run_with_fault(sample_csv, model_dir, step: int, sig: str):
    env = {**USER_ENV, "FAULT_STEP": str(step), "FAULT_SIGNAL": sig}
    return subprocess.run([sys.executable, "-c", FAULTY, *flags(sample_csv, model_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_same_run(resumed: dict, reference: dict):
    assert resumed["global_step"] == reference["global_step"] == 3 * STEPS_PER_EPOCH
    assert resumed["epoch"] == reference["epoch"]
    for name, weight in reference["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], weight, atol=1e-6), name
    assert resumed["lr_schedulers"][0]["last_epoch"] == reference["lr_schedulers"][0]["last_epoch"]


def test_sigkill_then_resume_is_the_uninterrupted_run(sample_csv, tmp_path, uninterrupted, capsys):
    out = tmp_path / "killed"
    killed = run_with_fault(sample_csv, out, STEPS_PER_EPOCH + 5, "SIGKILL")  # in the second epoch
    assert killed.returncode == -signal.SIGKILL
    left = torch.load(out / "model_-last.ckpt", weights_only=True)
    assert left["global_step"] == STEPS_PER_EPOCH  # the end of the first epoch, whole
    assert main([*flags(sample_csv, out), "--resume"]) in (None, 0)
    capsys.readouterr()
    assert_same_run(torch.load(out / "model_-last.ckpt", weights_only=True), uninterrupted)


def test_sigint_saves_the_step_and_resume_is_the_uninterrupted_run(sample_csv, tmp_path, uninterrupted, capsys):
    out = tmp_path / "ctrl-c"
    step = STEPS_PER_EPOCH + 4  # inside the second epoch
    stopped = run_with_fault(sample_csv, out, step, "SIGINT")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert f"interrupted at step {step}: saved {out / 'model_-last.ckpt'}" in last and "--resume" in last
    assert "Traceback" not in stopped.stderr and "Detected KeyboardInterrupt" not in stopped.stderr
    assert torch.load(out / "model_-last.ckpt", weights_only=True)["global_step"] == step
    assert main([*flags(sample_csv, out), "--resume"]) in (None, 0)
    capsys.readouterr()
    assert_same_run(torch.load(out / "model_-last.ckpt", weights_only=True), uninterrupted)


def test_a_second_ctrl_c_still_leaves_a_checkpoint(sample_csv, tmp_path):
    # Ctrl-C twice in a row: the second one does not wait for the step, and the run is still saved.
    out = tmp_path / "twice"
    faulty = FAULTY.replace("os.kill(os.getpid(), sig)", "os.kill(os.getpid(), sig); os.kill(os.getpid(), sig)")
    env = {**USER_ENV, "FAULT_STEP": "3", "FAULT_SIGNAL": "SIGINT"}
    stopped = subprocess.run([sys.executable, "-c", faulty, *flags(sample_csv, out)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert torch.load(out / "model_-last.ckpt", weights_only=True)["global_step"] == 3
    assert os.path.getsize(out / "model_-last.ckpt") > 0
