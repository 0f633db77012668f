"""Soak: many mixed requests against one server on loopback, its memory read as they go.

Starts `python -m kogpt2_chatbot serve` on 127.0.0.1 (a free port; traffic never leaves this
machine), then --concurrency clients send --requests requests in all, chosen in a fixed pattern:

    /chat                                                                50%
    /v1/chat/completions                                                 30%
    /v1/chat/completions, stream, read to [DONE]                          5%
    ... stream, client leaves after its first event (a dropped stream)    5%
    slow client: sends its body in pieces with pauses, then reads slowly  5% (half /chat, half a stream)
    malformed body (bad JSON; must get the JSON 400)                      5%

It counts errors among the well-formed requests (anything but a complete 200; a dropped stream
counts when the server had not answered 200), checks every malformed one got its 400, and reads the
server's resident memory (RSS, /proc) at start, after the warm-up (the first 5%), halfway and at
the end. The clients speak plain HTTP/1.1 over asyncio streams (keep-alive, one connection each),
so the client side costs little CPU. Bounded: it stops after --requests or --max-minutes.

    nice -n 10 python bench/bench_soak.py --model_params model_chp/demo/model_-last.ckpt --requests 100000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT

# 20 slots: the mix above. Streams are few because each runs alone on the model thread (about 15x a
# batched reply's cost on 2 cores), as they do in use: most traffic is whole replies.
KINDS = ["chat"] * 10 + ["openai"] * 6 + ["stream", "drop", "slow", "bad"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(model_params: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kogpt2_chatbot", "serve", "--model_params", model_params, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited")
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


class Connection:
    """One keep-alive HTTP/1.1 connection: enough of the protocol for these requests."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, path: str, body: bytes, slow: bool = False):
        if self.writer is None:
            await self.open()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        if not slow:
            self.writer.write(head + body)
            return await self.writer.drain()
        for part in (head, body[: len(body) // 2], body[len(body) // 2 :]):  # a client on a slow link
            self.writer.write(part)
            await self.writer.drain()
            await asyncio.sleep(0.05)

    async def head(self) -> tuple[int, dict]:
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body(self, headers: dict, slow: bool = False, first_event_only: bool = False) -> bytes:
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        out = b""
        while True:  # chunked
            size = int((await self.reader.readline()).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            out += chunk[:-2]
            if size == 0:
                return out
            if first_event_only and b"\n\n" in out:
                return out
            if slow:
                await asyncio.sleep(0.01)


def request_for(kind: str, n: int, questions, sentiments) -> tuple[str, bytes]:
    q, s = questions[n % len(questions)], sentiments[n % len(questions)]
    if kind == "bad":
        return "/chat", b'{"question": "' + q.encode() + b'", '  # cut short: not JSON
    if kind == "chat" or (kind == "slow" and n % 40 < 20):  # slow ones: half /chat, half a stream read slowly
        return "/chat", json.dumps({"question": q, "sentiment": s}, ensure_ascii=False).encode()
    body = {"model": "kogpt2-chatbot", "messages": [{"role": "user", "content": q}], "sentiment": s,
            "stream": kind in ("stream", "drop", "slow")}
    return "/v1/chat/completions", json.dumps(body, ensure_ascii=False).encode()


async def one(conn: Connection, kind: str, n: int, questions, sentiments) -> tuple[bool, float]:
    """(as expected?, seconds) for request n."""
    path, body = request_for(kind, n, questions, sentiments)
    t0 = time.perf_counter()
    await conn.send(path, body, slow=kind == "slow")
    status, headers = await conn.head()
    if kind == "drop":
        await conn.body(headers, first_event_only=True)
        conn.close()  # leaves mid-stream
        return status == 200, time.perf_counter() - t0
    payload = await conn.body(headers, slow=kind == "slow")
    if headers.get("connection") == "close":
        conn.close()
    if kind == "bad":
        return status == 400 and b'"error"' in payload, time.perf_counter() - t0
    ok = status == 200 and (b"[DONE]" in payload if b"data: " in payload[:6] else b'"error"' not in payload)
    return ok, time.perf_counter() - t0


async def soak(port: int, pid: int, total: int, concurrency: int, questions, sentiments, max_s: float):
    counter = iter(range(total))
    lat: dict[str, list[float]] = {k: [] for k in set(KINDS)}
    failures: dict[str, int] = {k: 0 for k in set(KINDS)}
    marks = {int(total * 0.05): "after warm-up", total // 2: "halfway"}
    memory = {"start": rss_mb(pid)}
    deadline = time.perf_counter() + max_s

    async def client():
        conn = Connection(port)
        for n in counter:
            if time.perf_counter() > deadline:
                return
            kind = KINDS[n % len(KINDS)]
            try:
                ok, seconds = await asyncio.wait_for(one(conn, kind, n, questions, sentiments), 120)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
                ok, seconds = False, 0.0
                conn.close()
            lat[kind].append(seconds)
            failures[kind] += not ok
            if n in marks:
                memory[marks[n]] = rss_mb(pid)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    memory["end"] = rss_mb(pid)
    return lat, failures, memory, time.perf_counter() - t0


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="data/sample_chats.csv")
    p.add_argument("--requests", type=COUNT, default=100_000)
    p.add_argument("--concurrency", type=COUNT, default=32)
    p.add_argument("--max-minutes", dest="max_minutes", type=float, default=60.0)
    return p


def quantiles_ms(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100) if len(values) > 1 else [values[0] if values else 0.0] * 99
    return q[49] * 1e3, q[94] * 1e3, q[98] * 1e3


def main():
    args = build_parser().parse_args()
    rows = chatdata.load_chat_table(args.data).rows
    questions, sentiments = list(rows.Q), [int(s) for s in rows.label]
    port = free_port()
    proc = start_server(args.model_params, port)
    try:
        lat, failures, memory, wall = asyncio.run(
            soak(port, proc.pid, args.requests, args.concurrency, questions, sentiments, args.max_minutes * 60))
    finally:
        proc.terminate()
        proc.wait(30)
    report(args, lat, failures, memory, wall)


def report(args, lat, failures, memory, wall):
    done = sum(map(len, lat.values()))
    well_formed = {k: v for k, v in failures.items() if k != "bad"}
    everything = [x for k, v in lat.items() if k not in ("bad", "drop") for x in v]
    print(f"{done:,} requests in {wall:.0f} s ({done / wall:.0f}/s), concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPU cores, model {args.model_params}\n")
    print("| requests | kind | not as expected | p50 | p95 | p99 |\n| --- | --- | --- | --- | --- | --- |")
    for kind in ("chat", "openai", "stream", "drop", "slow", "bad"):
        p50, p95, p99 = quantiles_ms(lat[kind])
        print(f"| {len(lat[kind]):,} | {kind} | {failures[kind]} | {p50:.0f} ms | {p95:.0f} ms | {p99:.0f} ms |")
    p50, p95, p99 = quantiles_ms(everything)
    print(f"| {len(everything):,} | all answered ones | {sum(well_formed.values())} | {p50:.0f} ms | {p95:.0f} ms | "
          f"{p99:.0f} ms |\n")
    print("| server RSS | " + " | ".join(memory) + " |\n| --- |" + " --- |" * len(memory))
    print("| MB | " + " | ".join(f"{v:.0f}" for v in memory.values()) + " |\n")
    base = memory.get("after warm-up", memory["start"])
    print(f"errors among well-formed requests: **{sum(well_formed.values())}**; malformed ones not answered 400: "
          f"{failures['bad']}; memory growth after warm-up: **{(memory['end'] / base - 1) * 100:+.1f}%**")


if __name__ == "__main__":
    sys.exit(run_script(main))
