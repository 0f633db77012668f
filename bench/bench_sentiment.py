"""Which sentiment should a reply use when the user gives none? Measured on the validation split.

For every validation question the bot answers three times: with the gold label of the data
(what a user who always picks the right sentiment gets), always with 0 (the original's
default), and with `auto` (the checkpoint's classifier). chrF against the reference answer,
overall and per gold label, says which default serves users best.

    python bench/bench_sentiment.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv

Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.evaluate import chrf, scored_turns
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=COUNT, default=128)
    return p


def main():
    args = build_parser().parse_args()
    bot = Chatbot.load(args.model_params, device=args.device, grounding="generate")
    if bot.classifier is None:
        raise ValueError("this checkpoint has no sentiment classifier; train it again with this version of the kit")
    rows = chatdata.load_chat_table(args.data).rows
    val = rows[chatdata.held_out(rows, bot.split)]
    questions, gold, references, histories = scored_turns(val)
    guesses = bot.classifier.predict(questions)
    accuracy = sum(g == t for g, t in zip(guesses, gold)) / len(gold)
    print(f"{len(questions)} validation questions; classifier right on {100 * accuracy:.1f}%\n", file=sys.stderr)
    modes = {"gold label": gold, "always 0": ["0"] * len(questions), "auto (classifier)": guesses}
    print("| sentiment used | chrF all | chrF on label 0 | chrF on label 1 | chrF on label 2 |")
    print("| --- | --- | --- | --- | --- |")
    for name, sentiments in modes.items():
        print(f"[bench] answering with {name}", file=sys.stderr, flush=True)
        replies = bot.chat_batch(questions, sentiments, histories, batch_size=args.batch_size)
        cells = [f"{chrf(replies, references):.2f}"]
        for label in "012":
            idx = [i for i, g in enumerate(gold) if g == label]
            cells.append(f"{chrf([replies[i] for i in idx], [references[i] for i in idx]):.2f}" if idx else "-")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
