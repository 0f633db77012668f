"""Empty replies from an under-trained model, with and without the rule that `</s>` cannot come
right after a token that shows nothing (the prompt's `<sys>` included), so a reply holds visible text.

A `scratch-tiny` model trained 10 epochs on the first 1,500 corpus rows learns to stop early.
Every validation question and every sentence of EC_data/sample_emotions.csv is answered twice,
by the lean loop and by generate(): once with the rule switched off (as before it existed), once
with it.

    python bench/bench_empty.py --data Chatbot_data/ChatbotData.csv --model-dir runs/tiny-1500

Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import pandas as pd

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.decoding import NeverEmpty
from kogpt2_chatbot.train import TrainConfig, train
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--rows", type=COUNT, default=1500)
    p.add_argument("--epochs", type=COUNT, default=10)
    p.add_argument("--model-dir", default="runs/tiny-1500")
    return p


def main():
    args = build_parser().parse_args()
    ckpt = Path(args.model_dir) / "model_-last.ckpt"
    if not ckpt.exists():
        subset = Path(args.model_dir) / f"first-{args.rows}.csv"  # kept: the checkpoint's split refers to it
        subset.parent.mkdir(parents=True, exist_ok=True)
        pd.read_csv(args.data, dtype=str, keep_default_na=False).head(args.rows).to_csv(subset, index=False)
        train(TrainConfig(data=str(subset), base_model="scratch-tiny", model_dir=args.model_dir,
                          max_epochs=args.epochs, samples=0, progress=False))
    questions = {}
    bot = Chatbot.load(ckpt, sentiment="0", grounding="generate")
    rows = chatdata.load_chat_table(bot.split["data"]).rows if Path(bot.split.get("data", "")).exists() else None
    if rows is not None:
        questions["validation questions"] = list(rows[chatdata.held_out(rows, bot.split)].Q)
    sample = Path("EC_data/sample_emotions.csv")
    if sample.exists():
        questions["EC_data/sample_emotions.csv"] = list(pd.read_csv(sample, dtype=str).Sentence)
    print("| questions | engine | empty replies without the rule | with it |\n| --- | --- | --- | --- |")
    for name, qs in questions.items():
        for kind in ("lean", "hf"):
            engine_bot = Chatbot.load(ckpt, sentiment="0", engine=kind, grounding="generate")
            with mock.patch.object(NeverEmpty, "__call__", lambda self, ids, scores: scores), \
                    mock.patch.object(NeverEmpty, "bad_words_ids", lambda self, vocab: None):  # the rule off
                before = sum(not r.strip() for r in engine_bot.chat_batch(qs))
            after = sum(not r.strip() for r in engine_bot.chat_batch(qs))
            print(f"| {name} ({len(qs)}) | {kind} | {before} ({100 * before / len(qs):.1f}%) | {after} |", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
