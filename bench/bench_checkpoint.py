"""What the safe checkpoint reader and the atomic writer cost, on a KoGPT2-sized checkpoint.

    python bench/bench_checkpoint.py --out runs/bench-checkpoint

Builds the state dict of a KoGPT2-shaped GPT-2 (12 layers x 768, vocabulary 51,200, 125M parameters,
fp32: about 500 MB) at random, then times, best of --repeat, on a warm page cache:
- writing: plain torch.save against checkpoint.write_checkpoint (temporary file, fsync, rename);
- reading: plain torch.load(weights_only=True) against checkpoint.read_checkpoint (the same load
  after checking every zip member's CRC-32, which is what refuses a flipped bit).
Prints a Markdown table for bench/RESULTS.md. The folder is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch
import sys

from kogpt2_chatbot import checkpoint as C
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-checkpoint", help="scratch folder (removed at the end)")
    p.add_argument("--repeat", type=COUNT, default=3)
    return p


def kogpt2_shaped_checkpoint() -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=51200)
    state = {f"kogpt2.{k}": v for k, v in GPT2LMHeadModel(config).state_dict().items()}
    return {"state_dict": state, "hyper_parameters": {"backbone": {"model_type": "gpt2"}}, "chatbot": {}}


def best_of(repeat: int, func) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint = kogpt2_shaped_checkpoint()
        plain, atomic = out / "plain.ckpt", out / "atomic.ckpt"
        rows = [("write", "torch.save", best_of(args.repeat, lambda: torch.save(checkpoint, plain))),
                ("write", "checkpoint.write_checkpoint (temp + fsync + rename)",
                 best_of(args.repeat, lambda: C.write_checkpoint(checkpoint, atomic)))]
        size = os.path.getsize(atomic) / 1e6
        rows += [("read", "torch.load(weights_only=True)",
                  best_of(args.repeat, lambda: torch.load(atomic, map_location="cpu", weights_only=True))),
                 ("read", "checkpoint.read_checkpoint (CRC-32 of every member, then the same load)",
                  best_of(args.repeat, lambda: C.read_checkpoint(atomic)))]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"KoGPT2-shaped checkpoint, {size:,.0f} MB, best of {args.repeat}\n")
    print("| what | how | seconds |\n| --- | --- | --- |")
    for what, how, seconds in rows:
        print(f"| {what} | {how} | {seconds:.2f} |")


if __name__ == "__main__":
    sys.exit(run_script(main))
