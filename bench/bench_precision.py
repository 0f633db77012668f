"""Greedy agreement of 16-bit decoding with fp32: which 16-bit weights, and why the logits stay fp32.

    python bench/bench_precision.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv

The static loop (what CUDA graphs replay on a GPU; run eagerly here) with fp16 or bf16 weights, its
logits kept fp32 (this kit) or rounded to 16 bits (what an output layer with a 16-bit result gives),
against the fp32 lean loop, on --questions corpus questions from row --start, with plain greedy and
with the default decoding. Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys

import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.decoding import Decoding
from kogpt2_chatbot import engines
from kogpt2_chatbot.engines.gpt2 import LeanGPT2
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT, FROM_ZERO


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--questions", type=COUNT, default=1000)
    p.add_argument("--start", type=FROM_ZERO, default=0)
    return p


def variant(bot, dtype, logits16: bool):
    engine = engines.create("static", bot.model, bot.tokenizer)
    engine.static_dtype = dtype
    loop = engine.static_engine().lean
    if logits16:  # fp32 accumulation rounded to 16 bits at the end, as a 16-bit matrix product returns it
        loop.logits = lambda last: LeanGPT2.logits(loop, last).to(dtype).float()
    return engine


def main():
    args = build_parser().parse_args()
    bot = Chatbot.load(args.model_params, sentiment="0")
    rows = chatdata.load_chat_table(args.data).rows
    questions = list(rows.Q)[args.start : args.start + args.questions]
    sentiments = [str(i % 3) for i in range(len(questions))]
    name = f"{bot.parameters / 1e6:.1f}M, rows {args.start}-{args.start + len(questions) - 1}"
    print("| model, questions | decoding | weights | logits | greedy replies equal to fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for label, decoding in (("plain greedy", Decoding(no_repeat_ngram_size=0)), ("default", Decoding())):
        prompts = bot.prompts(questions, sentiments, decoding=decoding)
        reference = engines.create("lean", bot.model, bot.tokenizer).generate(prompts, decoding, 250)
        for dtype in (torch.float16, torch.bfloat16):
            for logits16 in (True, False):
                replies = variant(bot, dtype, logits16).generate(prompts, decoding, 250)
                same = sum(a == b for a, b in zip(replies, reference))
                print(f"| {name} | {label} | {str(dtype)[6:]} | {'16-bit' if logits16 else 'fp32'} | "
                      f"{same}/{len(prompts)} ({100 * same / len(prompts):.1f}%) |", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
