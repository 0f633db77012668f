"""The benchmark scripts: the prepared GPU run (bench/gpu_run.py), exercised on the CPU with small
settings (it must work the first time it meets a GPU, where device time is short), the CPU
benchmarks' tables, and every script's answer to bad input."""
import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, USER_ENV
from kogpt2_chatbot.__main__ import run_script as under_the_cli_rule

sys.path.insert(0, str(ROOT / "bench"))


def run_script(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_run_measures_every_part_and_prints_the_table(tmp_path, sample_csv):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_run would take its GPU settings")
    out = tmp_path / "gpu"
    # No size flags: without CUDA it picks the small settings itself (the 125M defaults took minutes).
    proc = run_script("--data", sample_csv, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA device: small settings" in proc.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["errors"] == {}
    assert {k: results["args"][k] for k in ("shape", "train_steps", "questions", "sheet_rows")} == \
        {"shape": "small", "train_steps": 5, "questions": [12, 24], "sheet_rows": 30}
    work_bytes = sum(p.stat().st_size for p in (out / "work").rglob("*") if p.is_file())
    assert work_bytes < 250e6  # the small shape writes about 160 MB; the KoGPT2-shape defaults about 0.5 GB
    assert results["training"]["original"] > 0 and results["training"]["ours"] > 0
    assert results["training"]["compiled"] > 0  # the compiled training step, timed
    assert results["train_throughput"]["samples_per_s"] > 0  # and `train`'s own figure, inside Lightning
    assert "ours compiled |" in proc.stdout
    assert set(results["replies"]) == {"12", "24"}
    for figures in results["replies"].values():
        assert figures["ours_replies_per_s"] > 0 and figures["generate_replies_per_s"] > 0
        assert figures["ours_default_decoding_replies_per_s"] > 0
    assert results["original_replies_per_s"] > 0 and results["sheet_rows_per_s"] > 0
    assert results["greedy_agreement"] == 1.0  # on a CPU both engines run fp32: the same replies
    for batch in ("4", "8"):  # 24 questions through 4 and 8 rows: rows are refilled as replies end
        row = results["decoding_at_scale"][batch]
        assert row["questions"] == 24 and row["greedy_agreement"] == 1.0
        assert row["greedy"]["tokens_per_s"] > 0 and row["default"]["tokens_per_s"] > 0 and row["default_over_greedy"] > 0
    assert "| 24 questions, batch 8: tokens/s greedy, default decoding" in proc.stdout
    assert "| 24 replies/s, greedy" in proc.stdout and "30-row sheet" in proc.stdout
    assert "time per part" in proc.stdout and "FAILED" not in proc.stdout
    assert "| lora | 0.17 B |" in results["adapters"] and "| lora |" in proc.stdout  # the adapters part, one layer
    assert (out / "summary.md").read_text(encoding="utf-8").strip() in proc.stdout
    assert (out / "train_metrics.csv").exists() and (out / "work" / "model" / "model_-last.ckpt").exists()

    # One part again, on the model the first run trained.
    again = run_script("--data", sample_csv, "--out", tmp_path / "again", "--work", out / "work", "--parts", "decode")
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((tmp_path / "again" / "results.json").read_text(encoding="utf-8"))
    assert results["errors"] == {} and list(results["seconds"]) == [
        "decode: greedy against the default decoding at large batches, continuously refilled"]
    assert set(results["decoding_at_scale"]) == {"4", "8"} and "training" not in results


def test_a_failed_part_is_recorded_and_the_next_part_still_runs(tmp_path):
    import gpu_run

    run = gpu_run.Run(tmp_path, argparse.Namespace(sheet_rows=10))
    with run.part("1/2 breaks"):
        raise ValueError("boom")
    with run.part("2/2 works"):
        run.results["sheet_rows_per_s"] = 5.0
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert "ValueError: boom" in saved["errors"]["1/2 breaks"] and saved["sheet_rows_per_s"] == 5.0
    summary = gpu_run.table(saved)
    assert "FAILED parts: 1/2 breaks" in summary and "10-row sheet, rows/s | | | 5 |" in summary


def test_what_would_fail_later_stops_it_at_once(tmp_path):
    proc = run_script("--data", tmp_path / "missing.csv", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode == 2 and "no corpus at" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bench_precision_prints_a_row_per_variant(trained_dir, sample_csv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_precision.py"), "--model_params",
                           str(trained_dir / "model_-last.ckpt"), "--data", str(sample_csv), "--questions", "20"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "/20 (" in line]
    assert len(rows) == 8  # 2 decodings x 2 weight types x 2 logits precisions
    kept = [int(r.split("| ")[-1].split("/")[0]) for r in rows if "| float16 | fp32 |" in r]
    assert len(kept) == 2 and min(kept) >= 18  # this kit's choice: fp16 weights, fp32 logits


def test_bench_precision_reports_a_missing_corpus_in_one_line(trained_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_precision.py"), "--model_params",
                           str(trained_dir / "model_-last.ckpt"), "--data", str(tmp_path / "missing.csv")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_soak_counts_every_kind_of_request_and_reads_the_servers_memory(trained_dir, sample_csv):
    model = str(trained_dir / "model_-last.ckpt")
    proc = subprocess.run([sys.executable, "bench/bench_soak.py", "--model_params", model, "--data", str(sample_csv),
                           "--requests", "120", "--concurrency", "6"],
                          cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split(" | ")[1]: line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert [rows[k][0] for k in ("chat", "openai", "stream", "drop", "slow", "bad")] == ["| 60", "| 36", "| 6", "| 6",
                                                                                        "| 6", "| 6"]
    assert all(rows[k][2] == "0" for k in ("chat", "openai", "stream", "drop", "slow", "bad"))
    assert "errors among well-formed requests: **0**" in proc.stdout and "| MB |" in proc.stdout


def test_bench_refill_counts_fewer_steps_for_the_same_replies(trained_dir, sample_csv):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_refill.py"), "--model_params",
                           str(trained_dir / "model_-last.ckpt"), "--data", str(sample_csv), "--questions", "40",
                           "--batch-size", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("the same reply both ways for 40/40 questions") == 2
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")
            for line in proc.stdout.splitlines() if line.startswith("| greedy") or line.startswith("| default")}
    for decoding in ("greedy", "default"):
        refilled, batched = int(rows[decoding, "refilled"][3].replace(",", "")), int(
            rows[decoding, "batch by batch"][3].replace(",", ""))
        # Rows are taken up as replies end: never more steps (this tiny model's replies are all about
        # four tokens long, so here about as many; the corpus model of bench/RESULTS.md needs half).
        assert 0 < refilled <= batched


def test_a_count_below_one_stops_every_benchmark_at_its_flag():
    """Every number flag of the benchmarks is a count (>= 1) or, for an offset or a warm-up, >= 0."""
    import flags

    checked = 0
    for script in sorted((ROOT / "bench").glob("*.py")):
        module = importlib.import_module(script.stem)
        if not hasattr(module, "build_parser"):
            continue
        for action in module.build_parser()._actions:
            if action.type not in (flags.COUNT, flags.FROM_ZERO):
                assert action.type is not int, f"{script.name} {action.option_strings}: a bare int"
                continue
            low = 1 if action.type is flags.COUNT else 0
            with pytest.raises(argparse.ArgumentTypeError, match=f"must be >= {low}; got {low - 1}"):
                action.type(str(low - 1))
            checked += 1
    assert checked >= 40


def test_bench_refill_reports_a_count_below_one_in_one_line(trained_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_refill.py"), "--model_params",
                           str(trained_dir / "model_-last.ckpt"), "--questions", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --questions: must be >= 1; got 0" in proc.stderr


SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if '"--data"' in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_benchmark_names_a_missing_file_in_one_line(script, tmp_path, monkeypatch, capfd):
    """A wrong --data or --model_params is one line and exit code 2, as in the kit's commands."""
    source = script.read_text(encoding="utf-8")
    argv = ["--data", str(tmp_path / "missing.csv")]
    if '"--model_params"' in source:
        argv = ["--model_params", str(tmp_path / "missing.ckpt"), *argv]
    for flag in ("--out", "--model-dir"):  # what a script would write goes to the test's folder
        if f'"{flag}"' in source:
            argv += [flag, str(tmp_path / "out")]
    module = importlib.import_module(script.stem)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    try:
        code = under_the_cli_rule(module.main)
    except SystemExit as exit:
        code = exit.code
    err = capfd.readouterr().err.strip()  # bench_lora's runs are processes of their own
    assert code == 2 and len(err.splitlines()) == 1 and "missing." in err, err
