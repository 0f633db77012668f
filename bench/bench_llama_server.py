"""The exported GGUF in llama.cpp's own server: does `llama-server --jinja` reply as the bot does?

    python bench/bench_llama_server.py --model_params model_chp/demo/model_-last.ckpt \
        --data data/sample_chats.csv --llama-server /path/to/llama-server

Exports the checkpoint with `export --format gguf` (each --outtypes), starts the llama-server
binary on it, as the README's command does (`--jinja`, so the GGUF's chat template renders the
framing), and asks it, for each of --questions questions of --data (validation questions first):

1. The chat template: the prompt `/apply-template` renders, with the sentiment in
   `chat_template_kwargs` (and, for --key-questions questions of sentiment 1 or 2, as the
   message's own `sentiment` key), tokenized by the server: the framing's prompt ids?
2. `/completion` with the framing's prompt ids (no template): are the new token ids the bot's
   greedy ones? The bot decodes without 3-gram blocking here (llama-server has none), so what
   it is compared with is the original's algorithm, plain greedy; a difference where the bot's
   never-empty rule acted (llama-server has no such rule) is counted apart.
3. `/v1/chat/completions`, temperature 0: is the reply's text the bot's greedy reply?
4. One reply's median latency through the server's HTTP API.

On a CPU whose llama.cpp has AMX kernels (q8_0 crashed in them), the server is started with
`--no-repack`, as the README tells users; --repack starts it without, to see what happens.
Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kogpt2_chatbot import framing
from kogpt2_chatbot.gguf_file import OUTTYPES
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.__main__ import run_script

from bench_chat import GREEDY, questions_for
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--llama-server", dest="llama_server", default="llama-server",
                   help="the llama-server binary (default: the one on PATH)")
    p.add_argument("--outtypes", nargs="+", choices=OUTTYPES, default=list(OUTTYPES))
    p.add_argument("--questions", type=COUNT, default=500)
    p.add_argument("--key-questions", dest="key_questions", type=COUNT, default=100,
                   help="questions also asked with the sentiment as the message's own key")
    p.add_argument("--latency-questions", dest="latency_questions", type=COUNT, default=100)
    p.add_argument("--threads", type=COUNT, default=1)
    p.add_argument("--repack", action="store_true",
                   help="let llama.cpp repack q8_0 weights even on an AMX CPU (the default adds --no-repack there)")
    p.add_argument("--out", default=None, help="folder for the GGUF files (default: a temporary one)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, route: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    """llama-server on one GGUF, on a free loopback port, until the block ends."""

    def __init__(self, binary: str, gguf: Path, threads: int, extra=()):
        self.port = free_port()
        self.argv = [binary, "-m", str(gguf), "--jinja", "--port", str(self.port), "--host", "127.0.0.1",
                     "-t", str(threads), "-np", "1", "--temp", "0", "-n", str(framing.DEFAULT_MAX_NEW_TOKENS),
                     *extra]
        self.log = tempfile.TemporaryFile()

    def __enter__(self):
        self.process = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"llama-server exited with code {self.process.returncode}: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("llama-server did not answer /health within 120 s")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def chat_reply(port: int, question: str, sentiment: str, as_key: bool) -> str:
    message = {"role": "user", "content": question}
    body = {"messages": [message], "temperature": 0, "max_tokens": framing.DEFAULT_MAX_NEW_TOKENS}
    if as_key:
        message["sentiment"] = sentiment
    else:
        body["chat_template_kwargs"] = {"sentiment": sentiment}
    return post(port, "/v1/chat/completions", body)["choices"][0]["message"]["content"]


def completion_ids(port: int, prompt: list[int]) -> list[int]:
    """The new token ids for prompt ids, `</s>` left out (the server does not return it)."""
    out = post(port, "/completion", {"prompt": prompt, "n_predict": framing.DEFAULT_MAX_NEW_TOKENS, "temperature": 0,
                                     "return_tokens": True, "cache_prompt": False})
    return list(out["tokens"])


def template_ids(port: int, question: str, sentiment: str, as_key: bool) -> list[int]:
    """The prompt the server's chat route builds (its Jinja template), as token ids."""
    message = {"role": "user", "content": question}
    body = {"messages": [message]}
    if as_key:
        message["sentiment"] = sentiment
    else:
        body["chat_template_kwargs"] = {"sentiment": sentiment}
    prompt = post(port, "/apply-template", body)["prompt"]
    return post(port, "/tokenize", {"content": prompt, "add_special": False, "parse_special": True})["tokens"]


def measure(bot, server: Server, questions, sentiments, args) -> dict:
    greedy = bot.replies(questions, sentiments, **GREEDY)  # the bot loads with grounding="generate"
    prompts = bot.prompts(questions, sentiments)
    eos, port = bot.eos_id, server.port
    template = sum(template_ids(port, q, s, False) == p for q, s, p in zip(questions, sentiments, prompts))
    keyed = [(q, s, p) for q, s, p in zip(questions, sentiments, prompts) if s != "0"][: args.key_questions]
    key = sum(template_ids(port, q, s, True) == p for q, s, p in keyed)
    text_same, differ = 0, None
    for q, s, r in zip(questions, sentiments, greedy):
        theirs = chat_reply(port, q, s, False).strip()
        text_same += theirs == r.text
        differ = differ or (None if theirs == r.text else (q, r.text, theirs))
    ids_same = never_empty = 0
    for prompt, reply in zip(prompts, greedy):
        theirs = [t for t in completion_ids(port, prompt) if t != eos]
        ours = [t for t in reply.token_ids if t != eos]
        if theirs == ours:
            ids_same += 1
        elif len(theirs) < len(ours) and ours[: len(theirs)] == theirs and _invisible(bot, theirs[-1:]):
            never_empty += 1  # the server ended where the bot's never-empty rule forbids </s>
    latency = []
    for q, s in zip(questions[: args.latency_questions], sentiments[: args.latency_questions]):
        t0 = time.perf_counter()
        chat_reply(port, q, s, False)
        latency.append(time.perf_counter() - t0)
    return {"template": template, "key": (key, len(keyed)), "text": text_same, "differ": differ, "ids": ids_same,
            "never_empty": never_empty, "latency_ms": 1e3 * statistics.median(latency)}


def _invisible(bot, ids) -> bool:
    """Nothing shows (no token at all: right after the prompt's closing <sys>)."""
    return not bot.tokenizer.decode(ids, skip_special_tokens=True).strip()


def main():
    args = build_parser().parse_args()
    bot = Chatbot.load(args.model_params, engine="lean", grounding="generate")
    questions, sentiments, n_val = questions_for(bot, args.data, args.questions)
    sentiments = [str(s) for s in sentiments]
    binary = shutil.which(args.llama_server) or (args.llama_server if Path(args.llama_server).is_file() else None)
    if binary is None:
        raise FileNotFoundError(f"no llama-server binary at {args.llama_server!r}; build llama.cpp's server "
                                "(cmake --build build --target llama-server) and pass --llama-server PATH")
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-llama-server-"))
    folder.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stderr.strip().splitlines()
    c = bot.model.config
    from kogpt2_chatbot.engines.llamacpp import has_amx
    import llama_cpp

    amx = has_amx(llama_cpp)
    by_sentiment = ", ".join(f"{sentiments.count(k)} of sentiment {k}" for k in framing.SENTIMENTS)
    print(f"model {c.n_layer}x{c.n_embd}, vocab {c.vocab_size}; {len(questions)} questions of {args.data} "
          f"({min(n_val, len(questions))} validation; {by_sentiment}); {platform.machine()} CPU{' with AMX' if amx else ''}, "
          f"{args.threads} thread(s); llama-server {' '.join(version[:1])}")
    print("\n| GGUF | chat template's prompt = the framing's ids (sentiment in chat_template_kwargs) | the same, "
          "sentiment as the message's key (sentiments 1, 2) | /completion on the framing's ids = the bot's greedy "
          "tokens | chat completion's text = the bot's greedy reply | one reply over HTTP, median |\n"
          "| --- | --- | --- | --- | --- | --- |")
    n = len(questions)
    for outtype in args.outtypes:
        gguf, _ = bot.save_gguf(folder / f"bot-{outtype}.gguf", outtype)
        extra = ["--no-repack"] if amx and outtype == "q8_0" and not args.repack else []
        try:
            with Server(binary, gguf, args.threads, extra) as server:
                m = measure(bot, server, questions, sentiments, args)
        except (RuntimeError, OSError) as err:  # a crash is a result here, not the end of the run
            print(f"| {outtype}{' ' + ' '.join(extra) if extra else ''} | {err} | | | | |")
            continue
        rest = f" (+{m['never_empty']} where only the never-empty rule differs)" if m["never_empty"] else ""
        share = lambda k: f"{m[k]}/{n} ({100 * m[k] / n:.1f}%)"  # noqa: E731
        print(f"| {outtype}{' ' + ' '.join(extra) if extra else ''} | {share('template')} | {m['key'][0]}/{m['key'][1]} | "
              f"{share('ids')}{rest} | {share('text')} | {m['latency_ms']:.1f} ms |")
        if m["differ"]:
            print(f"  first text that differs: {m['differ']}")


if __name__ == "__main__":
    sys.exit(run_script(main))
