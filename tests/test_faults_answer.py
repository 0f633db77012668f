"""SIGKILL and SIGINT while a sheet is answered, then the same command: the output equals an uninterrupted run."""
import datetime as dt
import os
import signal
import subprocess
import sys
import time

import openpyxl
import pandas as pd
import pytest

from kogpt2_chatbot.__main__ import main

from conftest import ROOT, USER_ENV

ROWS = 600  # room after the first answers: a tiny model answers a few hundred rows within a second


def workbook(path):
    sentences = pd.read_csv(ROOT / "EC_data" / "sample_emotions.csv", dtype=str)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Sentence", "Emotion", "sum", "day"])
    for i in range(ROWS):
        row = sentences.iloc[i % len(sentences)]
        sheet.append([f"{row.Sentence} {i}", row.Emotion, f"=ROW()*{i}", dt.date(2024, 1, 1) + dt.timedelta(days=i)])
    book.create_sheet("memo")["A1"] = "그대로"
    book.save(path)
    return path


def cells(path):
    book = openpyxl.load_workbook(path)
    return {sheet.title: [[c.value for c in row] for row in sheet.iter_rows()] for sheet in book.worksheets}


def answer_argv(ckpt, src, out):
    return ["answer", "--model_params", str(ckpt), "--input", str(src), "--output", str(out), "--no-progress"]


def answered_lines(log):
    return len(log.read_bytes().splitlines()) - 1 if log.exists() else 0


def start_and_signal(argv, log, sig, after_lines):
    """Run `answer` in its own process and send `sig` once the progress log holds `after_lines` more answers."""
    before = answered_lines(log)
    # Ctrl-C as at a terminal: a suite started in the background (nohup, `&`) has SIGINT ignored,
    # and a child would inherit that and never see the signal.
    proc = subprocess.Popen([sys.executable, "-m", "kogpt2_chatbot", *argv], cwd=ROOT, env=USER_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while answered_lines(log) < before + after_lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: give it more rows"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_killed_and_interrupted_runs_resume_to_the_uninterrupted_output(trained_dir, tmp_path, capsys):
    ckpt = trained_dir / "model_-last.ckpt"
    src = workbook(tmp_path / "in.xlsx")
    assert main(answer_argv(ckpt, src, tmp_path / "whole.xlsx")) in (0, None)
    capsys.readouterr()

    out, log = tmp_path / "out.xlsx", tmp_path / "out.xlsx.partial.jsonl"
    argv = [*answer_argv(ckpt, src, out), "--batch-size", "2"]
    code, err = start_and_signal(argv, log, signal.SIGKILL, after_lines=6)
    assert code == -signal.SIGKILL and not out.exists()
    killed_at = answered_lines(log)

    code, err = start_and_signal(argv, log, signal.SIGINT, after_lines=6)
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: ")
    assert "run the same command again" in err and answered_lines(log) >= killed_at + 6

    assert main(argv) in (0, None)
    assert f"{ROWS} rows: {ROWS} answered" in capsys.readouterr().out
    assert cells(out) == cells(tmp_path / "whole.xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xlsx", "out.xlsx", "whole.xlsx"]
