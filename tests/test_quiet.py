"""Every command prints nothing a user cannot act on: no library warnings, tips or tracebacks."""
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from conftest import ROOT

# No PYTHONWARNINGS here: the commands must be quiet as a user runs them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"HF_HUB_OFFLINE": "1",
                                                                        "PYTHONPATH": str(ROOT)}
NOISE = re.compile(r"warn|deprecat|tip:|traceback|litlogger|available: (true|false)|^\[transformers\]|"
                   r"strongly recommend", re.IGNORECASE)


def noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def run(*args, stdin=""):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, input=stdin, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quiet")
    result = run("train_torch.py", "--train", "--base-model", "scratch-tiny", "--data", "data/sample_chats.csv",
                 "--max_epochs", "2", "--batch-size", "32", "--model-dir", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stderr


def test_train_is_quiet(trained):
    _, stderr = trained
    assert noise(stderr) == [], noise(stderr)


@pytest.fixture(scope="module")
def model_dir(trained):
    return trained[0]


def test_chat_ask_answer_evaluate_are_quiet(model_dir, tmp_path):
    ckpt = str(model_dir / "model_-last.ckpt")
    results = [
        run("-m", "kogpt2_chatbot", "chat", "--model_params", ckpt, stdin="배고파\n헤어졌어\n"),
        run("-m", "kogpt2_chatbot", "ask", "배고파", "--model_params", ckpt),
        run("chatbot.py", "--model_params", ckpt, "--output", str(tmp_path / "a.xlsx"), "--no-progress"),
        run("-m", "kogpt2_chatbot", "evaluate", "--model_params", ckpt, "--out", str(tmp_path / "ev")),
        run("-m", "kogpt2_chatbot", "export", "--model_params", ckpt, "--out", str(tmp_path / "hf")),
    ]
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
        assert noise(result.stderr) == [], (result.args, noise(result.stderr))


def test_serve_is_quiet(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "kogpt2_chatbot", "serve", "--model_params",
                               str(model_dir / "model_-last.ckpt"), "--port", str(port)], cwd=ROOT, env=ENV,
                              stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                       json={"messages": [{"role": "user", "content": "배고파"}]})
        assert r.status_code == 200
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert noise(stderr) == [], noise(stderr)
