"""Every GPU figure in one prepared run: training, replies, decoding at scale, a sheet, adapters.

    python bench/gpu_run.py --data Chatbot_data/ChatbotData.csv --out runs/gpu        # on an NVIDIA GPU
    python bench/gpu_run.py --data Chatbot_data/ChatbotData.csv --out runs/gpu --parts train decode speed adapters

The parts, in the order they run (--parts picks some; all by default):

train: a KoGPT2-shape model (12 x 768, vocabulary 51,200, random init, a BPE tokenizer trained on the
   corpus) trained with this kit's `train` (--train-steps, bf16, compiled) until its replies end.
replies: replies/s for each --questions: the original's loop (one question at a time, the whole
   sequence re-run for every token; timed on up to --original-questions for at most
   --original-seconds and given as a rate), plain `generate()` (bf16, batch 1,000, prompts sorted by
   length) and this kit's engine (static KV cache, CUDA graphs, fp16 weights, fp32 logits), with plain
   greedy (the original's algorithm) and with the default decoding (+ no 3-gram twice). Each is run
   once to warm up (graphs captured) and then timed.
agreement: this kit's engine's greedy replies against the fp32 lean loop's (TF32 off), and the
   static loop's agreement and speed with fp16 and with bf16 weights (the choice, measured).
decode: the static loop on the largest --questions at each of --decode-batches rows, a row that ends
   taking the next question (continuous batching): plain greedy against the default decoding (3-gram
   blocking, on the device), replies/s, generated tokens/s and their share of the chip's memory-bound
   limit, the default's speed as a share of greedy's, and greedy agreement with the fp32 lean loop.
speed: training samples/s at batch 96: this kit's step against the original's algorithm (bench_train),
   the original in fp32 as today's torch runs it, and again with TF32 matmuls (the default of the
   torch versions the original was written for, on GPUs that have TF32), where our step also runs
   compiled as `train` runs it on CUDA (torch.compile, a CUDA graph per length bucket).
sheet: a --sheet-rows sheet answered end to end (`answer_file`: read xlsx, answer, write xlsx), rows/s.
adapters: full fine-tuning, LoRA (bf16) and QLoRA (NF4) at polyglot-ko-1.3b's full shape
   (bench_lora.py, a process per mode): samples/s and peak GPU memory. QLoRA needs bitsandbytes and
   peft on the GPU machine; without CUDA a one-layer LoRA run stands in, to test the part.

The parts that answer questions use the model `train` wrote to --work (an earlier run's, when
`train` is not among --parts). Progress goes to stderr. `results.json` in --out is rewritten after
every part, so a run cut short keeps what it measured; a part that fails is recorded with its
traceback and the others go on. A short table is printed last. Without CUDA it picks small settings
itself (the same parts in about a minute), which is how it is tested.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_chat import original_reply  # noqa: E402

from kogpt2_chatbot import data as chatdata  # noqa: E402
from kogpt2_chatbot.__main__ import run_script  # noqa: E402
from flags import COUNT  # noqa: E402

PHYSICAL_LIMIT = 100_000  # replies/s for a 125M model at batch 1,000 on an H100's bf16 peak (see RESULTS.md)
# Generated tokens/s for KoGPT2's shape in 16 bits at batch 1,024 and a 64-token context when each step
# only reads the weights and the KV cache from memory (4.8 TB/s on an H200, 3.35 TB/s on an H100).
MEMORY_BOUND_TOKENS_PER_S = {"H200": 1_800_000, "H100": 1_300_000}
PARTS = ("train", "replies", "agreement", "decode", "speed", "sheet", "adapters")


def memory_bound(device_name: str) -> int | None:
    return next((v for k, v in MEMORY_BOUND_TOKENS_PER_S.items() if k in device_name), None)


def log(message):
    print(f"[gpu_run {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The settings of a run on a GPU, and the small ones a machine without CUDA takes instead (the same
# parts, in about a minute: how the script is tested). A flag given on the command line wins over both.
GPU_SETTINGS = dict(shape="kogpt2", train_steps=1000, bench_steps=40, bench_repeats=2, questions=(1000, 10000),
                    original_questions=200, original_seconds=30.0, sheet_rows=10000, batch_size=1000,
                    decode_batches=(1024, 2048), adapter_args="--layers 24 --batch-size 8 --steps 5 --modes full lora qlora")
CPU_SETTINGS = dict(shape="small", train_steps=5, bench_steps=1, bench_repeats=1, questions=(12, 24),
                    original_questions=4, original_seconds=10.0, sheet_rows=30, batch_size=8, decode_batches=(4, 8),
                    adapter_args="--layers 1 --batch-size 2 --steps 1 --warmup 0 --modes lora")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--out", default="runs/gpu", help="results.json, summary.md and the training metrics go here")
    p.add_argument("--work", default=None, help="the base model and checkpoints (GBs at KoGPT2's shape); default OUT/work")
    p.add_argument("--shape", choices=("kogpt2", "small"))
    p.add_argument("--train-steps", type=COUNT)
    p.add_argument("--bench-steps", type=COUNT)
    p.add_argument("--bench-repeats", type=COUNT)
    p.add_argument("--questions", type=COUNT, nargs="+")
    p.add_argument("--original-questions", type=COUNT)
    p.add_argument("--original-seconds", type=float, help="time box of the original's loop")
    p.add_argument("--sheet-rows", type=COUNT)
    p.add_argument("--batch-size", type=COUNT, help="replies generated together")
    p.add_argument("--decode-batches", type=COUNT, nargs="+",
                   help="static batch sizes at which greedy and the default decoding are timed")
    p.add_argument("--adapter-args", help="the flags of bench_lora.py for the adapters part (quoted)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="the parts to run (default: all); the parts that answer questions load --work's trained "
                        "model when `train` is not among them")
    p.epilog = ("defaults on a GPU: " + _shown(GPU_SETTINGS) + "; without CUDA: " + _shown(CPU_SETTINGS))
    return p


def _shown(settings: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else repr(v) if ' ' in str(v) else v}"
                    for k, v in settings.items())


def settings(args, cuda: bool):
    """Fill the settings not given: the GPU's, or on a machine without CUDA the small ones."""
    chosen = GPU_SETTINGS if cuda else CPU_SETTINGS
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)
    if not cuda:
        log(f"no CUDA device: small settings on the CPU ({_shown(CPU_SETTINGS)}, unless given); "
            "the figures are not GPU figures")
    return args


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


class Run:
    """The results so far, written to results.json after every part; a failed part is recorded."""

    def __init__(self, out: Path, args):
        self.out, self.path = out, out / "results.json"
        self.results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available()
                        else f"{platform.machine()} CPU", "torch": torch.__version__, "args": vars(args),
                        "errors": {}, "seconds": {}}
        import transformers

        self.results["transformers"] = transformers.__version__
        self.save()

    def save(self):
        self.path.write_text(json.dumps(self.results, indent=2, ensure_ascii=False), encoding="utf-8")

    @contextlib.contextmanager
    def part(self, name: str):
        log(name)
        start = time.perf_counter()
        try:
            yield
        except Exception:  # recorded; the next part still runs
            self.results["errors"][name] = traceback.format_exc()
            log(f"   FAILED: {traceback.format_exc().strip().splitlines()[-1]} (traceback in results.json)")
        finally:
            self.results["seconds"][name] = round(time.perf_counter() - start, 1)
            self.save()


def preflight(args):
    """Stop at once, before any GPU time is spent, for what would fail later."""
    problems = []
    if not Path(args.data).is_file():
        problems.append(f"no corpus at {args.data}")
    try:
        import openpyxl  # noqa: F401  (the sheet part writes and reads .xlsx)
    except ImportError:
        problems.append("openpyxl is not installed (pip install openpyxl)")
    if problems:
        print("gpu_run: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)


def make_base(args, folder: Path):
    cmd = [sys.executable, str(Path(__file__).with_name("make_kogpt2_shape.py")), "--data", args.data, "--out",
           str(folder), "--shape", args.shape]
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def train_briefly(args, base: Path, out: Path):
    from kogpt2_chatbot.train import TrainConfig, train

    cfg = TrainConfig(data=args.data, base_model=str(base), model_dir=str(out), max_steps=args.train_steps,
                      max_epochs=1000, lr=5e-4, batch_size=96, samples=3, progress=False,
                      gpus=1 if torch.cuda.is_available() else None)
    module, seconds = timed(lambda: train(cfg))
    return seconds, module.throughput  # samples/s inside Lightning, measured by `train` itself


def training_speed(args, tf32: bool, compiled: bool = False) -> dict:
    """bench_train's comparison at the chosen shape, batch 96 (TF32 matmuls allowed or not), and with
    `compiled` our step as `train` runs it on CUDA (torch.compile, CUDA graphs per length bucket).

    In a fresh process: this step is bound by the CPU's launch speed on a GPU, so it is timed
    without what the earlier parts left in this one (a trainer, tokenizers, the garbage they leave).
    """
    cmd = [sys.executable, str(Path(__file__).with_name("bench_train.py")), "--data", args.data,
           "--shape", "kogpt2" if args.shape == "kogpt2" else "scratch-tiny", "--steps", str(args.bench_steps),
           "--repeats", str(args.bench_repeats), "--batch-size", "96", *(["--tf32"] if tf32 else []),
           *(["--compile"] if compiled else [])]
    row = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    log(row)
    numbers = re.search(r"original ([\d,.]+) samples/s \| ours ([\d,.]+) samples/s", row)
    out = {"row": row, "original": float(numbers[1].replace(",", "")), "ours": float(numbers[2].replace(",", ""))}
    if compiled:
        out["compiled"] = float(re.search(r"compiled ([\d,.]+) samples/s", row)[1].replace(",", ""))
    return out


def replies_per_s(generate, prompts) -> tuple[float, list]:
    generate(prompts)  # warm-up: every graph this set needs is captured here
    done, seconds = timed(lambda: generate(prompts))
    return len(prompts) / seconds, done


def decoding_at_scale(bot, pool, sents, questions: int, batches, run, reference_questions: int):
    """The static loop on `questions` questions at each batch size (rows at once; a row that ends
    takes the next question): replies/s, generated tokens/s and their share of the chip's
    memory-bound limit, with plain greedy and with the default decoding (3-gram blocking on the
    device), the default's speed as a share of greedy's, and greedy agreement with the fp32 lean
    loop (TF32 off) on the first `reference_questions`."""
    from kogpt2_chatbot import engines
    from kogpt2_chatbot.decoding import Decoding

    static = engines.create("static", bot.model, bot.tokenizer)
    figures = run.results.setdefault("decoding_at_scale", {})
    limit = memory_bound(run.results["device"])
    greedy = Decoding(no_repeat_ngram_size=0)
    n = min(questions, len(pool))
    reference = fp32_replies(bot, bot.prompts(pool[:reference_questions], sents[:reference_questions], decoding=greedy),
                             greedy, max(batches))
    for batch in batches:
        row = figures.setdefault(str(batch), {"engine": static.name, "questions": n})
        for label, decoding in (("greedy", greedy), ("default", Decoding())):
            prompts = bot.prompts(pool[:n], sents[:n], decoding=decoding)
            rate, done = replies_per_s(lambda p: static.generate(p, decoding, batch), prompts)
            mean = statistics.mean(len(ids) for ids in done)
            row[label] = {"replies_per_s": rate, "tokens_per_s": rate * mean, "mean_tokens": mean,
                          "ended": sum(bool(ids) and ids[-1] == bot.eos_id for ids in done) / n}
            if limit:
                row[label]["share_of_memory_bound"] = rate * mean / limit
            if label == "greedy":
                row["greedy_agreement"] = sum(a == b for a, b in zip(done, reference)) / len(reference)
            log(f"   batch {batch}, {label}: {rate:,.0f} replies/s, {rate * mean:,.0f} tokens/s ({mean:.1f} tokens, "
                f"{100 * row[label]['ended']:.0f}% ended)")
        row["default_over_greedy"] = row["default"]["tokens_per_s"] / row["greedy"]["tokens_per_s"]
        log(f"   batch {batch}: greedy agreement with fp32 {100 * row['greedy_agreement']:.1f}%")
        run.save()


def fp32_replies(bot, prompts, decoding, batch_size: int):
    """The reference: the lean loop in full fp32 (TF32 off)."""
    from kogpt2_chatbot import engines

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return engines.create("lean", bot.model, bot.tokenizer).generate(prompts, decoding, batch_size)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def main():
    args = build_parser().parse_args()
    preflight(args)
    settings(args, torch.cuda.is_available())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    run = Run(out, args)
    results = run.results
    ckpt = work / "model" / "model_-last.ckpt"

    if "train" in args.parts:
        with run.part("train: a KoGPT2-shape base, trained until its replies end"):
            base = work / "base"
            make_base(args, base)
            results["train_seconds"], results["train_throughput"] = train_briefly(args, base, work / "model")
            if (work / "model" / "metrics.csv").exists():  # the loss curve, for the record
                shutil.copy(work / "model" / "metrics.csv", out / "train_metrics.csv")

    from kogpt2_chatbot.api import Chatbot
    from kogpt2_chatbot.decoding import Decoding
    from kogpt2_chatbot import engines

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bot = None
    if ckpt.exists() and {"replies", "agreement", "decode", "sheet"} & set(args.parts):
        try:
            bot = Chatbot.load(ckpt, device=device, sentiment="0", grounding="generate")
        except Exception:
            results["errors"]["loading the trained model"] = traceback.format_exc()
            run.save()

    def need_bot():
        if bot is None:
            raise RuntimeError("no trained model to answer with (see the first error)")
    greedy, default = Decoding(no_repeat_ngram_size=0), Decoding()
    rows = chatdata.load_chat_table(args.data).rows
    need = max(*args.questions, args.sheet_rows, args.original_questions)
    pool = list(rows.Q) * (need // len(rows) + 1)
    sents = [str(i % 3) for i in range(len(pool))]
    replies = results.setdefault("replies", {})

    def measure(key: str, label: str, generate, decoding):
        """Replies/s of `generate(prompts, decoding, batch_size)` for each number of questions."""
        for n in args.questions:
            prompts = bot.prompts(pool[:n], sents[:n], decoding=decoding)
            rate, done = replies_per_s(lambda p: generate(p, decoding, args.batch_size), prompts)
            figures = replies.setdefault(str(n), {})
            figures[key] = rate
            if key == "ours_replies_per_s":  # the greedy replies: how many ended by themselves, how long
                figures["ended"] = sum(r.finished for r in done) / n
                figures["mean_tokens"] = statistics.mean(r.completion_tokens for r in done)
            log(f"   {label}, {n}: {rate:,.0f} replies/s")
            run.save()

    if "replies" in args.parts:
        with run.part("replies: replies/s against the original's loop and generate()"):
            need_bot()
            measure("ours_replies_per_s", "ours, greedy", bot.complete, greedy)
            measure("ours_default_decoding_replies_per_s", "ours, default decoding", bot.complete, default)
            model, eos = bot.model, bot.eos_id
            prompts = bot.prompts(pool[: args.original_questions], sents[: args.original_questions], decoding=greedy)
            original_reply(model, prompts[0], eos, greedy.max_new_tokens)  # warm-up
            sync()
            start, count = time.perf_counter(), 0
            while count < len(prompts) and time.perf_counter() - start < args.original_seconds:
                original_reply(model, prompts[count], eos, greedy.max_new_tokens)
                count += 1
            sync()
            results["original_replies_per_s"] = count / (time.perf_counter() - start)
            results["original_questions_timed"] = count
            log(f"   original loop: {results['original_replies_per_s']:.1f} replies/s (on {count})")
            run.save()
            hf_model = model.to(torch.bfloat16) if torch.cuda.is_available() else model
            hf_engine = engines.create("hf", hf_model, bot.tokenizer)
            try:
                measure("generate_replies_per_s", "generate()", hf_engine.generate, greedy)
            finally:
                model.float()

    if "agreement" in args.parts:
        with run.part("agreement: greedy agreement with the fp32 lean loop"):
            need_bot()
            n = args.questions[0]
            prompts = bot.prompts(pool[:n], sents[:n], decoding=greedy)
            reference = fp32_replies(bot, prompts, greedy, args.batch_size)
            fast = bot.engine.generate(prompts, greedy, args.batch_size)
            same = sum(a == b for a, b in zip(fast, reference))
            results["greedy_agreement"] = same / n
            results["greedy_agreement_examples"] = [
                {"question": q, "fp32": bot.tokenizer.decode(b), "fast": bot.tokenizer.decode(a)}
                for q, a, b in zip(pool, fast, reference) if a != b][:20]
            results["engine"] = bot.engine_name  # says whether CUDA graphs ran and how the logits were made
            log(f"   this kit's engine ({bot.engine_name}): {same}/{n} equal")
            for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):  # the choice, measured
                variant = engines.create("static", bot.model, bot.tokenizer)
                variant.static_dtype = dtype
                rate, fast = replies_per_s(lambda p: variant.generate(p, greedy, args.batch_size), prompts)
                results.setdefault("by_weights", {})[name] = {
                    "greedy_agreement": sum(a == b for a, b in zip(fast, reference)) / n, "replies_per_s": rate}
                log(f"   static loop with {name} weights: {results['by_weights'][name]}")
                run.save()

    if "decode" in args.parts:
        with run.part("decode: greedy against the default decoding at large batches, continuously refilled"):
            need_bot()
            decoding_at_scale(bot, pool, sents, max(args.questions), args.decode_batches, run, args.questions[0])

    if "speed" in args.parts:
        with run.part("speed: training samples/s against the original's algorithm"):
            # The compiled step is timed once: against the original with TF32 where there is TF32 (the
            # fairer baseline), else in the only run.
            results["training"] = training_speed(args, tf32=False, compiled=not torch.cuda.is_available())
            if torch.cuda.is_available():
                results["training_tf32"] = training_speed(args, tf32=True, compiled=True)

    if "sheet" in args.parts:
        with run.part("sheet: a sheet answered end to end"):
            need_bot()
            import pandas as pd

            from kogpt2_chatbot.answer_file import answer_file

            emotions = ["Neutral", "Sadness", "Happiness", "Angry", "Fear", "Surprise", "Disgust"]
            frame = pd.DataFrame({"Sentence": pool[: args.sheet_rows],
                                  "Emotion": [emotions[i % 7] for i in range(args.sheet_rows)]})
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "in.xlsx"
                frame.to_excel(src, index=False)
                answer_file(bot, src, Path(tmp) / "warm.xlsx", batch_size=args.batch_size, progress=False,
                            no_repeat_ngram_size=0)
                summary, seconds = timed(lambda: answer_file(bot, src, Path(tmp) / "out.xlsx", batch_size=args.batch_size,
                                                             progress=False, no_repeat_ngram_size=0))
            results["sheet_rows_per_s"] = summary.rows / seconds

    if "adapters" in args.parts:
        with run.part("adapters: full fine-tuning, LoRA and QLoRA at the 1.3B shape"):
            results["adapters"] = adapters(args)

    summary = table(results)
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    print(summary)


def adapters(args) -> str:
    """bench_lora.py's table (a process per mode, so each peak memory is its own)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cmd = [sys.executable, str(Path(__file__).parent / "bench_lora.py"), "--data", args.data, "--device", device,
           *args.adapter_args.split()]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    log("   " + done.stdout.strip().replace("\n", "\n   "))
    return done.stdout.strip()


def table(results) -> str:
    """The short summary: whatever parts finished."""
    engine = f"; engine {results['engine']}" if "engine" in results else ""
    lines = [f"\n{results['device']}; torch {results['torch']}; transformers {results['transformers']}{engine}\n",
             "| what | original | generate() | ours | ours / original |", "| --- | --- | --- | --- | --- |"]
    for key, label in (("training", "training samples/s (batch 96)"),
                       ("training_tf32", "training samples/s (batch 96), original with TF32")):
        if key in results:
            t = results[key]
            lines.append(f"| {label} | {t['original']:,.0f} | | {t['ours']:,.0f} | {t['ours'] / t['original']:.2f}x |")
            if "compiled" in t:
                lines.append(f"| {label}, ours compiled | {t['original']:,.0f} | | {t['compiled']:,.0f} | "
                             f"{t['compiled'] / t['original']:.2f}x |")
    inside = (results.get("train_throughput") or {}).get("after_first_epoch_samples_per_s")
    if inside:  # `train` itself: Lightning, compiled on CUDA, validation and checkpoints left out
        against = "original with TF32" if "training_tf32" in results else "original"
        base = (results.get("training_tf32") or results.get("training") or {}).get("original")
        ratio = f"{inside / base:.2f}x" if base else ""
        lines.append(f"| training samples/s inside `train` (batch 96, after the first epoch), against the {against} | "
                     f"{base or 0:,.0f} | | {inside:,.0f} | {ratio} |")
    original = results.get("original_replies_per_s")
    for n, r in results.get("replies", {}).items():
        if "ours_replies_per_s" not in r:
            continue
        times = r["ours_replies_per_s"] / original if original else None
        ratio = "" if times is None else f"{times:,.0f}x" if times >= 10 else f"{times:.2f}x"
        lines.append(f"| {int(n):,} replies/s, greedy ({100 * r['ended']:.0f}% ended, {r['mean_tokens']:.1f} tokens) | "
                     f"{original or 0:.1f} | {r.get('generate_replies_per_s', 0):,.0f} | "
                     f"{r['ours_replies_per_s']:,.0f} | {ratio} |")
        if "ours_default_decoding_replies_per_s" in r:
            lines.append(f"| {int(n):,} replies/s, default decoding | | | "
                         f"{r['ours_default_decoding_replies_per_s']:,.0f} | |")
    for batch, row in results.get("decoding_at_scale", {}).items():
        if "default_over_greedy" in row:
            g, d = row["greedy"], row["default"]
            share = (f", {100 * g['share_of_memory_bound']:.0f}% of the memory-bound limit"
                     if "share_of_memory_bound" in g else "")
            lines.append(f"| {row['questions']:,} questions, batch {int(batch):,}: tokens/s greedy, default decoding "
                         f"({g['mean_tokens']:.1f}, {d['mean_tokens']:.1f} tokens; {100 * g['ended']:.0f}%, "
                         f"{100 * d['ended']:.0f}% ended) | | | {g['tokens_per_s']:,.0f}, {d['tokens_per_s']:,.0f} | "
                         f"default {100 * row['default_over_greedy']:.0f}% of greedy{share}; greedy agreement "
                         f"{100 * row['greedy_agreement']:.1f}% |")
    if "sheet_rows_per_s" in results:
        lines.append(f"| {results['args']['sheet_rows']:,}-row sheet, rows/s | | | {results['sheet_rows_per_s']:,.0f} | |")
    rates = [r["ours_replies_per_s"] for r in results.get("replies", {}).values() if "ours_replies_per_s" in r]
    notes = []
    if "greedy_agreement" in results:
        notes.append(f"greedy agreement with fp32: {100 * results['greedy_agreement']:.1f}%")
    for name, figures in results.get("by_weights", {}).items():
        notes.append(f"{name} weights: {100 * figures['greedy_agreement']:.1f}% agree, "
                     f"{figures['replies_per_s']:,.0f} replies/s")
    if rates:
        notes.append(f"best replies/s = {100 * max(rates) / PHYSICAL_LIMIT:.1f}% of the ~{PHYSICAL_LIMIT:,} physical limit")
    if "adapters" in results:
        lines += ["", results["adapters"]]
    if results["errors"]:
        notes.append(f"FAILED parts: {', '.join(results['errors'])} (tracebacks in results.json)")
    seconds = ", ".join(f"{k.split(' ')[0]} {v:.0f} s" for k, v in results["seconds"].items())
    return "\n".join(lines + ["", "; ".join(notes), f"time per part: {seconds}"])


if __name__ == "__main__":
    sys.exit(run_script(main))
