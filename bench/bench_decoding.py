"""Decoding defaults, chosen by measurement: degenerate replies on the validation split.

A reply is degenerate when it hits the cap without `</s>` or repeats a token 3-gram three times
(generation.is_degenerate). Every setting answers every validation question of the checkpoint.

    python bench/bench_decoding.py --model_params runs/scratch-full/model_-best.ckpt --data ../shared/data/ChatbotData.csv
"""
from __future__ import annotations

import argparse
import statistics

import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import framing
from kogpt2_chatbot import generation as G
from kogpt2_chatbot.module import KoGPT2Chat

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
    return p


def main():
    args = build_parser().parse_args()
    bot = KoGPT2Chat.load_from_checkpoint(args.model_params, map_location="cpu").to(args.device).eval()
    rows = chatdata.load_chat_table(args.data).rows
    val = rows[rows.Q.isin(set(bot.split["val_questions"]))].drop_duplicates("Q")
    eos = framing.control_ids(bot.tokenizer)[framing.EOS]
    print(f"{len(val)} validation questions\n")
    print("| decoding | degenerate | capped without </s> | mean reply tokens |\n| --- | --- | --- | --- |")
    for name, options in SETTINGS.items():
        dec = G.Decoding(**options)
        prompts = G.build_prompts(bot.kogpt2, bot.tokenizer, list(val.Q), list(val.label), dec)
        out = G.generate_ids(bot.kogpt2, bot.tokenizer, prompts, dec, batch_size=128)
        bad = sum(G.is_degenerate(ids, eos, dec.max_new_tokens) for ids in out)
        capped = sum(eos not in ids for ids in out)
        mean = statistics.mean(len(ids) for ids in out)
        print(f"| {name} | {bad}/{len(out)} ({100 * bad / len(out):.1f}%) | {capped} | {mean:.1f} |")


if __name__ == "__main__":
    main()
