"""Serving throughput on loopback: requests at a fixed concurrency, with and without micro-batching.

Starts `python -m kogpt2_chatbot serve` on 127.0.0.1 (a free port) once per setting, sends
--requests POST /chat requests from --concurrency workers (questions from --data, cycled),
and reports errors, p50/p95 latency and requests/s. Traffic stays on this machine.

    python bench/bench_serve.py --model_params model_chp/demo/model_-last.ckpt --data data/sample_chats.csv
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_params, port, max_batch):
    cmd = [sys.executable, "-m", "kogpt2_chatbot", "serve", "--model_params", model_params, "--port", str(port),
           "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start")


async def load(url, questions, sentiments, total, concurrency):
    latencies, errors = [], 0
    counter = iter(range(total))

    async def worker(client):
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json={"question": questions[i % len(questions)],
                                                 "sentiment": sentiments[i % len(questions)]})
                if r.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="data/sample_chats.csv")
    p.add_argument("--requests", type=COUNT, default=1000)
    p.add_argument("--concurrency", type=COUNT, default=32)
    p.add_argument("--max-batch", type=COUNT, default=64)
    return p


def main():
    args = build_parser().parse_args()
    rows = chatdata.load_chat_table(args.data).rows
    questions, sentiments = list(rows.Q), [int(s) for s in rows.label]
    results = {}
    for name, max_batch in (("without micro-batching (--max-batch 1)", 1),
                            (f"with micro-batching (--max-batch {args.max_batch})", args.max_batch)):
        port = free_port()
        proc = start_server(args.model_params, port, max_batch)
        try:
            url = f"http://127.0.0.1:{port}/chat"
            asyncio.run(load(url, questions, sentiments, 64, args.concurrency))  # warm-up
            latencies, errors, wall = asyncio.run(load(url, questions, sentiments, args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(30)
        q = statistics.quantiles(latencies, n=100)
        results[name] = (errors, q[49] * 1e3, q[94] * 1e3, len(latencies) / wall)
    print(f"{args.requests} requests, concurrency {args.concurrency}, {os.cpu_count()} CPU cores\n")
    print("| server | errors | p50 | p95 | requests/s |\n| --- | --- | --- | --- | --- |")
    for name, (errors, p50, p95, rps) in results.items():
        print(f"| {name} | {errors} | {p50:.0f} ms | {p95:.0f} ms | {rps:.1f} |")
    (_, _, _, slow), (_, _, _, fast) = results.values()
    print(f"\nmicro-batching: **{fast / slow:.1f}x** requests/s")


if __name__ == "__main__":
    sys.exit(run_script(main))
