"""Decoding defaults, chosen by measurement: degenerate replies on the validation split, and what
each setting costs in replies/s.

A reply is degenerate when it hits the cap without `</s>`, repeats a token 3-gram three times, or
is junk of lone syllables and spaces (engines/text.py, is_degenerate). Every setting answers every
validation question of the checkpoint (batches of 128, once to warm up, then timed --repeats times).

    python bench/bench_decoding.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import sys

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.decoding import Decoding
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT

SETTINGS = {
    "greedy (the original's)": {"no_repeat_ngram_size": 0},
    "greedy, cap 32": {"max_new_tokens": 32, "no_repeat_ngram_size": 0},
    "greedy, no_repeat_ngram_size 3 (default)": {"no_repeat_ngram_size": 3},
    "greedy, repetition_penalty 1.2": {"repetition_penalty": 1.2, "no_repeat_ngram_size": 0},
    "sampling top_p 0.9, T 0.8": {"do_sample": True, "top_p": 0.9, "temperature": 0.8, "seed": 0,
                                  "no_repeat_ngram_size": 0},
    "sampling top_k 50, T 1.0": {"do_sample": True, "top_k": 50, "seed": 0, "no_repeat_ngram_size": 0},
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=COUNT, default=1, help="timed runs per setting; the fastest counts")
    p.add_argument("--questions", type=COUNT, default=None,
                   help="answer this many (the validation questions cycled), for steadier timings")
    return p


def main():
    args = build_parser().parse_args()
    bot = Chatbot.load(args.model_params, device=args.device)
    rows = chatdata.load_chat_table(args.data).rows
    val = rows[chatdata.held_out(rows, bot.split)].drop_duplicates("Q")
    if args.questions:
        val = val.iloc[[i % len(val) for i in range(args.questions)]]
    print(f"{len(val)} validation questions\n")
    print(f"engine {bot.engine_name}, {torch.get_num_threads()} threads\n")
    print("| decoding | degenerate | capped without </s> | mean reply tokens | replies/s |\n| --- | --- | --- | --- | --- |")
    for name, options in SETTINGS.items():
        dec = Decoding(**options)
        prompts = bot.prompts(list(val.Q), list(val.label), decoding=dec)
        bot.complete(prompts[:128], dec, batch_size=128)  # warm-up
        seconds = []
        for _ in range(args.repeats):  # the fastest of a few: other work on the machine only slows a run
            start = time.perf_counter()
            out = bot.complete(prompts, dec, batch_size=128)
            seconds.append(time.perf_counter() - start)
        rate = len(out) / min(seconds)
        bad = sum(bot.is_degenerate(r, dec) for r in out)
        capped = sum(not r.finished for r in out)
        mean = statistics.mean(r.completion_tokens for r in out)
        print(f"| {name} | {bad}/{len(out)} ({100 * bad / len(out):.1f}%) | {capped} | {mean:.1f} | {rate:,.0f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
