"""Bad training input, as a careless user or an attacker gives it: one line on stderr, exit 2, no
traceback, and nothing the user gave is changed. Run in-process (kogpt2_chatbot.__main__.main)."""
import shutil

import pandas as pd
import pytest
import torch

from kogpt2_chatbot.__main__ import legacy_main, main


def train(capsys, *flags, sample_csv=None):
    """(exit code, stderr lines) of `python -m kogpt2_chatbot train ...`."""
    argv = ["train", "--base-model", "scratch-tiny", *(["--data", str(sample_csv)] if sample_csv else []), *flags]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(code, lines, *words):
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines


@pytest.mark.parametrize("flags, words", [
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--lr", "0"], ["--lr", "> 0"]),
    (["--lr=-1e-4"], ["--lr", "> 0"]),
    (["--lr", "fast"], ["--lr", "a number"]),
    (["--max_epochs", "0"], ["--max_epochs", ">= 1"]),
    (["--max-steps", "0"], ["--max_steps", "-1 (no limit)"]),
    (["--accumulate_grad_batches", "0"], ["--accumulate_grad_batches", ">= 1"]),
    (["--dropout", "nan"], ["--dropout", "finite"]),
    (["--dropout", "1.5"], ["--dropout", "< 1"]),
    (["--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--batch-size", "1e9"], ["--batch-size", "whole number"]),
    (["--warmup_ratio", "2"], ["--warmup_ratio", "between 0 and 1"]),
    (["--val-ratio", "1"], ["--val-ratio", "< 1"]),
    (["--weight-decay=-inf"], ["--weight-decay", "finite"]),
    (["--seed", "-1"], ["--seed", "between 0 and 4294967295"]),
    (["--max-len", "2"], ["--max-len", ">= 8"]),
    (["--devices", "0"], ["--devices", "auto, a number"]),
    (["--devices", "many"], ["--devices", "auto, a number"]),
    (["--num_nodes", "0"], ["--num_nodes", ">= 1"]),
    (["--accelerator", "quantum"], ["--accelerator", "one of"]),
    (["--precision", "8-bit"], ["--precision", "one of"]),
    (["--early-stopping", "0"], ["--early-stopping", ">= 1"]),
    (["--lora", "--lora-alpha", "nan"], ["--lora-alpha", "finite"]),
    (["--lora", "--lora-dropout", "1"], ["--lora-dropout", "< 1"]),
    (["--gpus", "-1"], ["--gpus", ">= 0"]),
    (["--samples", "-3"], ["--samples", ">= 0"]),
])
def test_bad_values_stop_at_the_flag(capsys, tmp_path, flags, words):
    code, lines = train(capsys, "--model-dir", str(tmp_path / "m"), *flags)
    assert_one_line(code, lines, *words)
    assert not (tmp_path / "m").exists()  # nothing was started


def test_the_original_script_gets_the_same_one_line(capsys):
    try:
        code = legacy_main(["--train", "--lr", "inf"])
    except SystemExit as stop:
        code = stop.code
    assert_one_line(code, capsys.readouterr().err.strip().splitlines(), "--lr", "finite")


def test_more_cpu_processes_than_cores_are_refused_before_any_start(capsys, tmp_path, sample_csv):
    code, lines = train(capsys, "--accelerator", "cpu", "--devices", "99", "--strategy", "ddp",
                        "--model-dir", str(tmp_path / "m"), sample_csv=sample_csv)
    assert_one_line(code, lines, "--devices 99", "CPU cores")


def test_cuda_without_cuda_is_refused(capsys, tmp_path, sample_csv):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for accelerator in ("cuda", "gpu"):
        code, lines = train(capsys, "--accelerator", accelerator, "--model-dir", str(tmp_path / "m"),
                            sample_csv=sample_csv)
        assert_one_line(code, lines, f"--accelerator {accelerator}", "no CUDA GPU")


def test_a_model_dir_that_is_a_file_is_refused_and_kept(capsys, tmp_path, sample_csv):
    target = tmp_path / "notes.txt"
    target.write_text("my notes", encoding="utf-8")
    code, lines = train(capsys, "--model-dir", str(target), sample_csv=sample_csv)
    assert_one_line(code, lines, "--model-dir", "is a file")
    assert target.read_text(encoding="utf-8") == "my notes"


def test_early_stopping_without_validation_questions_is_refused(capsys, tmp_path):
    data = tmp_path / "one.csv"
    pd.DataFrame({"Q": ["배고파"] * 3, "A": ["밥 먹어요.", "뭐 먹을까요?", "저도요."], "label": ["0"] * 3}).to_csv(
        data, index=False)
    before = data.read_bytes()
    code, lines = train(capsys, "--early-stopping", "2", "--model-dir", str(tmp_path / "m"), sample_csv=data)
    assert_one_line(code, lines, "--early-stopping", "no validation")
    assert data.read_bytes() == before


def test_max_len_beyond_the_model_context_is_refused(capsys, tmp_path, sample_csv):
    code, lines = train(capsys, "--max-len", "100000", "--model-dir", str(tmp_path / "m"), sample_csv=sample_csv)
    assert_one_line(code, lines, "--max-len 100000", "context (256 tokens)")


def test_a_strategy_this_machine_cannot_run_is_one_line(capsys, tmp_path, sample_csv):
    code, lines = train(capsys, "--strategy", "no-such-strategy", "--model-dir", str(tmp_path / "m"),
                        sample_csv=sample_csv)
    assert_one_line(code, lines, "--strategy")


def test_a_five_megabyte_cell_is_cut_with_a_line_and_training_goes_on(capsys, tmp_path, sample_csv):
    data = tmp_path / "big.csv"
    rows = pd.read_csv(sample_csv, dtype=str)
    rows.loc[0, "Q"] = "가" * 5_000_000  # one "word": the tokenizer used to spend minutes on it, silently
    rows.to_csv(data, index=False)
    before = data.read_bytes()
    code = main(["train", "--base-model", "scratch-tiny", "--data", str(data), "--model-dir", str(tmp_path / "m"),
                 "--max_steps", "1", "--samples", "0", "--batch-size", "8"])
    out = capsys.readouterr().out
    assert code in (None, 0)
    assert "1 cell(s) over 4,096 characters cut" in out and "line(s) 2" in out
    assert (tmp_path / "m" / "model_-last.ckpt").exists()
    assert data.read_bytes() == before


def test_resume_from_nowhere_is_one_line(capsys, tmp_path, sample_csv):
    code, lines = train(capsys, "--resume", str(tmp_path / "none.ckpt"), "--model-dir", str(tmp_path / "m"),
                        sample_csv=sample_csv)
    assert_one_line(code, lines, "--resume")
    shutil.rmtree(tmp_path / "m", ignore_errors=True)


def test_data_or_a_base_model_that_is_a_folder_is_one_line(capsys, tmp_path, sample_csv):
    (tmp_path / "folder").mkdir()
    code, lines = train(capsys, "--data", str(tmp_path / "folder"), "--model-dir", str(tmp_path / "m"))
    assert_one_line(code, lines, "is a folder; give the data file in it")
    try:
        code = main(["train", "--base-model", str(tmp_path / "folder"), "--data", str(sample_csv),
                     "--model-dir", str(tmp_path / "m")])
    except SystemExit as stop:
        code = stop.code
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[data]")]
    assert_one_line(code, lines, "this folder has no config.json")
