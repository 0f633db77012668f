"""Answering a spreadsheet: `answer_file()` end to end against the original's row-by-row loop.

The original chatbot.py answered one row at a time with its reply loop (no KV cache, the whole
sequence through the model for every new token). Here both run on the same weights: ours on
--rows sentences written to an .xlsx (read, answer, write .xlsx), the original's loop on the
first --original-rows of them (it is slow; its rows/s is what is compared).

    python bench/bench_answer_file.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat import original_reply  # noqa: E402

from kogpt2_chatbot import answer_file as AF  # noqa: E402
from kogpt2_chatbot import data as chatdata  # noqa: E402
from kogpt2_chatbot import framing  # noqa: E402
from kogpt2_chatbot.api import Chatbot  # noqa: E402
from kogpt2_chatbot.decoding import Decoding  # noqa: E402
from kogpt2_chatbot.engines.text import reply_text  # noqa: E402
from kogpt2_chatbot.__main__ import run_script  # noqa: E402
from flags import COUNT  # noqa: E402

EMOTIONS = ["Neutral", "Sadness", "Happiness", "Angry", "Fear", "Surprise", "Disgust"]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv", help="sentences come from its Q column")
    p.add_argument("--rows", type=COUNT, default=10000)
    p.add_argument("--original-rows", type=COUNT, default=1000)
    p.add_argument("--batch-size", type=COUNT, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main():
    args = build_parser().parse_args()
    device = torch.device(args.device)
    bot = Chatbot.load(args.model_params, device=args.device, grounding="generate")
    questions = list(chatdata.load_chat_table(args.data).rows.Q)
    sentences = (questions * (args.rows // len(questions) + 1))[: args.rows]
    frame = pd.DataFrame({"Sentence": sentences, "Emotion": [EMOTIONS[i % 7] for i in range(args.rows)]})
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.xlsx", Path(tmp) / "out.xlsx"
        frame.to_excel(src, index=False)
        bot.chat_batch(sentences[: args.batch_size], batch_size=args.batch_size)  # warm-up
        t0 = time.perf_counter()
        # Plain greedy, the original's algorithm, so replies can be compared (the default adds 3-gram blocking).
        summary = AF.answer_file(bot, src, out, batch_size=args.batch_size, progress=False, no_repeat_ngram_size=0)
        ours = time.perf_counter() - t0
        answers = list(pd.read_excel(out, dtype=str, keep_default_na=False).Answer)

    n = min(args.original_rows, args.rows)
    sents = [AF.EMOTION_MAP[AF.label_key(e)] for e in frame.Emotion[:n]]
    prompts = bot.prompts(sentences[:n], sents, decoding=Decoding(no_repeat_ngram_size=0))
    eos = framing.control_ids(bot.tokenizer)[framing.EOS]
    t0 = time.perf_counter()
    original = [original_reply(bot.model, p, eos, framing.DEFAULT_MAX_NEW_TOKENS) for p in prompts]
    if device.type == "cuda":
        torch.cuda.synchronize()
    orig = time.perf_counter() - t0
    same = sum(reply_text(bot.tokenizer, ids, eos) == a for ids, a in zip(original, answers[:n]))
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    cfg = bot.model.config
    print(f"model {cfg.n_layer}x{cfg.n_embd}, vocab {cfg.vocab_size}; {hw}; torch {torch.__version__}")
    print("| what | rows | time | rows/s |\n| --- | --- | --- | --- |")
    print(f"| original row-by-row loop | {n} | {orig:.1f} s | {n / orig:.1f} |")
    print(f"| `answer_file()` (xlsx in, xlsx out, batch {args.batch_size}) | {summary.rows} | {ours:.1f} s | "
          f"{summary.rows / ours:.1f} |")
    print(f"\n**{(summary.rows / ours) / (n / orig):.1f}x** rows/s; the original would take about "
          f"{args.rows / (n / orig) / 60:.0f} min for {args.rows} rows. Same replies on {same}/{n} compared rows.")


if __name__ == "__main__":
    sys.exit(run_script(main))
