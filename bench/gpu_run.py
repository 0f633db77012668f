"""Every GPU figure in one prepared run: training, replies, a sheet, greedy agreement.

    python bench/gpu_run.py --data Chatbot_data/ChatbotData.csv --out runs/gpu        # on an NVIDIA GPU

1. A KoGPT2-shape model (12 x 768, vocabulary 51,200, random init, a BPE tokenizer trained on the
   corpus) is trained briefly (--train-steps, bf16) with this kit's `train`, so its replies end.
2. Training samples/s at batch 96: this kit's step against the original's algorithm (bench_train).
3. Replies/s for 1,000 and 10,000 questions: the original's loop (one question at a time, the whole
   sequence re-run for every token; timed on --original-questions and given as a rate), plain
   `generate()` (bf16, batch 1,000, prompts sorted by length) and this kit's engine (static KV cache,
   CUDA graphs, bf16). Plain greedy everywhere (the original's algorithm).
4. A 10,000-row sheet answered end to end (`answer_file`: read xlsx, answer, write xlsx), rows/s.
5. Greedy agreement: the bf16 graph engine's replies against the fp32 lean loop's.

Progress goes to stderr; a short table is printed last; everything is written to --out.
On a CPU it runs too (small settings), which is how it is tested before a GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_train  # noqa: E402
from bench_chat import original_reply  # noqa: E402

from kogpt2_chatbot import data as chatdata  # noqa: E402

PHYSICAL_LIMIT = 100_000  # replies/s for a 125M model at batch 1,000 on an H100's bf16 peak (see RESULTS.md)


def log(message):
    print(f"[gpu_run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--out", default="runs/gpu")
    p.add_argument("--shape", choices=("kogpt2", "small"), default="kogpt2")
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--bench-steps", type=int, default=20)
    p.add_argument("--questions", type=int, nargs=2, default=(1000, 10000))
    p.add_argument("--original-questions", type=int, default=200)
    p.add_argument("--sheet-rows", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=1000, help="replies generated together")
    return p


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def make_base(args, folder: Path):
    import subprocess

    cmd = [sys.executable, str(Path(__file__).with_name("make_kogpt2_shape.py")), "--data", args.data, "--out",
           str(folder), "--shape", args.shape]
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def train_briefly(args, base: Path, out: Path):
    from kogpt2_chatbot.train import TrainConfig, train

    cfg = TrainConfig(data=args.data, base_model=str(base), model_dir=str(out), max_steps=args.train_steps,
                      max_epochs=1000, lr=5e-4, batch_size=96, samples=3, progress=False,
                      gpus=1 if torch.cuda.is_available() else None)
    _, seconds = timed(lambda: train(cfg))
    return seconds


def training_speed(args):
    """bench_train's comparison at the chosen shape, batch 96."""
    argv = ["--data", args.data, "--shape", "kogpt2" if args.shape == "kogpt2" else "scratch",
            "--steps", str(args.bench_steps), "--repeats", "2", "--batch-size", "96"]
    old = sys.argv
    sys.argv = ["bench_train.py", *argv]
    try:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            bench_train.main()
        return buffer.getvalue().strip()
    finally:
        sys.argv = old


def main():
    args = build_parser().parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine() + " CPU",
               "torch": torch.__version__, "args": vars(args)}
    import transformers

    results["transformers"] = transformers.__version__

    log("1/5 KoGPT2-shape base and brief training")
    base = out / "base"
    make_base(args, base)
    results["train_seconds"] = train_briefly(args, base, out / "model")
    ckpt = out / "model" / "model_-last.ckpt"

    log("2/5 training samples/s against the original's algorithm")
    import re

    row = training_speed(args)
    log(row)
    numbers = re.search(r"original ([\d,.]+) samples/s \| ours ([\d,.]+) samples/s", row)
    results["training"] = {"row": row, "original": float(numbers[1].replace(",", "")),
                           "ours": float(numbers[2].replace(",", ""))}

    from kogpt2_chatbot.api import Chatbot
    from kogpt2_chatbot.decoding import Decoding

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bot = Chatbot.load(ckpt, device=device, sentiment="0")
    greedy = Decoding(no_repeat_ngram_size=0)
    rows = chatdata.load_chat_table(args.data).rows
    pool = list(rows.Q) * (max(args.questions) // len(rows) + 1)
    sents = [str(i % 3) for i in range(len(pool))]

    log("3/5 replies/s")
    replies = {}
    for n in args.questions:
        prompts = bot.prompts(pool[:n], sents[:n], decoding=greedy)
        bot.complete(prompts[: min(n, args.batch_size)], greedy, args.batch_size)  # warm-up: graphs captured
        done, seconds = timed(lambda: bot.complete(prompts, greedy, args.batch_size))
        replies[n] = {"ours_replies_per_s": n / seconds, "ended": sum(r.finished for r in done) / n,
                      "mean_tokens": statistics.mean(r.completion_tokens for r in done)}
        log(f"   ours {n}: {n / seconds:,.0f} replies/s")
    model, eos = bot.model, bot.eos_id
    n0 = args.original_questions
    prompts = bot.prompts(pool[:n0], sents[:n0], decoding=greedy)
    _, seconds = timed(lambda: [original_reply(model, p, eos, greedy.max_new_tokens) for p in prompts])
    original_rate = n0 / seconds
    log(f"   original loop: {original_rate:.1f} replies/s (on {n0})")
    hf_model = model.to(torch.bfloat16) if torch.cuda.is_available() else model
    from kogpt2_chatbot.engines import Engine

    hf_engine = Engine(hf_model, bot.tokenizer, "hf")
    for n in args.questions:
        prompts = bot.prompts(pool[:n], sents[:n], decoding=greedy)
        hf_engine.generate(prompts[: min(n, args.batch_size)], greedy, args.batch_size)
        _, seconds = timed(lambda: hf_engine.generate(prompts, greedy, args.batch_size))
        replies[n]["generate_replies_per_s"] = n / seconds
        log(f"   generate() {n}: {n / seconds:,.0f} replies/s")
    model.float()
    results["replies"] = replies
    results["original_replies_per_s"] = original_rate

    log("4/5 greedy agreement: bf16 graph engine against the fp32 lean loop")
    n = args.questions[0]
    prompts = bot.prompts(pool[:n], sents[:n], decoding=greedy)
    fast = bot.engine.generate(prompts, greedy, args.batch_size)
    reference = Engine(model, bot.tokenizer, "lean").generate(prompts, greedy, args.batch_size)
    results["greedy_agreement"] = sum(a == b for a, b in zip(fast, reference)) / n
    log(f"   {100 * results['greedy_agreement']:.1f}% equal")

    log("5/5 a sheet answered end to end")
    import pandas as pd

    from kogpt2_chatbot.answer_file import answer_file

    emotions = ["Neutral", "Sadness", "Happiness", "Angry", "Fear", "Surprise", "Disgust"]
    frame = pd.DataFrame({"Sentence": pool[: args.sheet_rows],
                          "Emotion": [emotions[i % 7] for i in range(args.sheet_rows)]})
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.xlsx"
        frame.to_excel(src, index=False)
        summary, seconds = timed(lambda: answer_file(bot, src, Path(tmp) / "out.xlsx", batch_size=args.batch_size,
                                                     progress=False, no_repeat_ngram_size=0))
    results["sheet_rows_per_s"] = summary.rows / seconds
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")

    print(f"\n{results['device']}; torch {results['torch']}; transformers {results['transformers']}\n")
    print("| what | original | generate() | ours | ours / original |\n| --- | --- | --- | --- | --- |")
    t = results["training"]
    print(f"| training samples/s (batch 96) | {t['original']:,.0f} | | {t['ours']:,.0f} | {t['ours'] / t['original']:.2f}x |")
    for n, r in replies.items():
        print(f"| {n:,} replies/s | {original_rate:.1f} | {r['generate_replies_per_s']:,.0f} | "
              f"{r['ours_replies_per_s']:,.0f} | {r['ours_replies_per_s'] / original_rate:,.0f}x |")
    best = max(r["ours_replies_per_s"] for r in replies.values())
    print(f"| {args.sheet_rows:,}-row sheet, rows/s | | | {results['sheet_rows_per_s']:,.0f} | |")
    print(f"\ngreedy agreement (bf16 graphs vs fp32): {100 * results['greedy_agreement']:.1f}%; "
          f"best replies/s = {100 * best / PHYSICAL_LIMIT:.1f}% of the ~{PHYSICAL_LIMIT:,} physical limit")


if __name__ == "__main__":
    main()
