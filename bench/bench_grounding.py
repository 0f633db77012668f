"""Which retriever the grounding index uses: TF-IDF cosine (evaluate's baseline) against BM25
(bm25s, what grounding.Index searches with), both over the character 1-3-grams of the training
questions, answering with the nearest training question's answer. Scored on the validation
rows of both protocols (never their test rows): the default split (seed 42) and KoChatBART's
80/10/10 split's validation part.

    python bench/bench_grounding.py --data Chatbot_data/ChatbotData.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kogpt2_chatbot import data as chatdata  # noqa: E402
from kogpt2_chatbot import evaluate as E  # noqa: E402
from kogpt2_chatbot import grounding as gr  # noqa: E402
from kogpt2_chatbot.__main__ import run_script  # noqa: E402


def bm25_replies(train_rows, questions):
    index = gr.Index.build(train_rows)
    return [index.answers[hits[0].index] for hits in index.search(questions, k=1)]


def tfidf_replies(train_rows, questions):
    return E.RetrievalBaseline(list(train_rows.Q), list(train_rows.A)).reply(questions)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    args = parser.parse_args(argv)
    rows = chatdata.load_chat_table(args.data).rows
    splits = {"default validation (seed 42)": chatdata.split_train_val(rows, 0.05, 42),
              "KoChatBART validation (seed 42)": chatdata.split_kochatbart(rows, 42)[:2]}
    print("| split | retriever | rows | chrF | BLEU-4 (characters) | BLEU-4 (words, KoChatBART's) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for split, (train_rows, val_rows) in splits.items():
        references = list(val_rows.A)
        for name, run in (("TF-IDF cosine, char_wb 1-3", tfidf_replies), ("BM25 (bm25s), char_wb 1-3", bm25_replies)):
            start = time.perf_counter()
            replies = run(train_rows, list(val_rows.Q))
            seconds = time.perf_counter() - start
            words = E.protocol_metrics(replies, references)["bleu4"]
            print(f"| {split} | {name} | {len(references)} | {E.chrf(replies, references):.2f} | "
                  f"{E.bleu(replies, references, 4):.2f} | {words:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
