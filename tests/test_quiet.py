"""Every command prints nothing a user cannot act on: no library warnings, tips or tracebacks.

Every README command that runs offline (the original's training, chat, ask, answer, evaluate, export,
LoRA training) is checked for this in test_readme.py as it runs; here: the server, which that test
cannot start as written."""
import socket
import subprocess
import sys
import time

import httpx

from conftest import ROOT, USER_ENV as ENV, noise


def test_serve_is_quiet(trained_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "kogpt2_chatbot", "serve", "--model_params",
                               str(trained_dir / "model_-last.ckpt"), "--port", str(port)], cwd=ROOT, env=ENV,
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
    assert f"serving on http://127.0.0.1:{port} (Ctrl+C stops)" in stderr  # where to point a browser
