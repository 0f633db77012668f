"""Continuous batching in the static engine: decode steps, rows computed and time, against answering
the same prompts batch by batch.

Refilled, a row whose reply ends takes the next waiting prompt, so the batch stays full; batch by
batch, every batch runs until its longest reply ends (rows that end early drop to smaller buckets).
On a GPU each step of a bucket costs about the same whatever its rows hold, so fewer steps is the
saving; on a CPU (eager) the cost follows the rows computed. Both runs give the same replies.

    python bench/bench_refill.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv --questions 1000 --batch-size 256

Prints a Markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import engines
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.decoding import Decoding
from kogpt2_chatbot.engines import static
from kogpt2_chatbot.engines.base import BatchedEngine
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--questions", type=COUNT, default=1000, help="the first questions of --data")
    p.add_argument("--batch-size", type=COUNT, default=256, help="rows at once")
    return p


class Counter:
    """Counts the static loop's steps and the rows each one computes."""

    def __init__(self):
        self.steps = self.rows = 0
        self.advance = static.StaticState.advance

    def __enter__(self):
        counter = self

        def advance(state, cur):
            counter.steps += 1
            counter.rows += len(state.rows)
            return counter.advance(state, cur)

        static.StaticState.advance = advance
        return self

    def __exit__(self, *exc):
        static.StaticState.advance = self.advance


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    args = build_parser().parse_args()
    bot = Chatbot.load(args.model_params, device=args.device, sentiment="0")
    questions = list(chatdata.load_chat_table(args.data).rows.Q)[: args.questions]
    engine = engines.create("static", bot.model, bot.tokenizer)
    print(f"[bench] {len(questions)} questions, {args.batch_size} rows, engine {engine.name}, on {args.device}",
          file=sys.stderr)
    print("| decoding | how | decode steps | rows computed | rows per token | seconds | mean reply tokens |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, decoding in (("greedy", Decoding(no_repeat_ngram_size=0)), ("default", Decoding())):
        prompts = bot.prompts(questions, ["0"] * len(questions), decoding=decoding)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # as generate() sorts them

        def batch_by_batch():
            new = BatchedEngine._answer(engine, [prompts[i] for i in order], decoding, args.batch_size, None, None)
            return [ids for _, ids in sorted(zip(order, new))]

        runs = {"refilled": lambda: engine.generate(prompts, decoding, args.batch_size), "batch by batch": batch_by_batch}
        replies = {}
        for how, run in runs.items():
            with torch.inference_mode():
                run()  # warm-up (on a GPU: every graph captured)
                with Counter() as count:
                    sync(args.device)
                    start = time.perf_counter()
                    replies[how] = run()
                    sync(args.device)
                    seconds = time.perf_counter() - start
            tokens = sum(map(len, replies[how]))
            print(f"| {label} | {how} | {count.steps:,} | {count.rows:,} | {count.rows / tokens:.2f} | {seconds:.2f} | "
                  f"{tokens / len(prompts):.1f} |")
        same = sum(a == b for a, b in zip(replies["refilled"], replies["batch by batch"]))
        print(f"[bench] {label}: the same reply both ways for {same}/{len(prompts)} questions", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_script(main))
