"""Reply speed: our chat path against the original's reply loop, same weights, same questions.

The original (KoGPT2-chatbot, KoGPT2Chat.chat): batch of one; for every new token the whole
sequence so far goes through the model again (no KV cache); argmax of the last position; stop at
`</s>`. The baseline here does exactly that on ids (no re-tokenising, which only flatters it) and
with our reply cap, so both stop at the same place.

    python bench/bench_chat.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv

Questions: the checkpoint's validation questions first, then training questions up to --many.
Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot import framing
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.decoding import Decoding
from kogpt2_chatbot.engines.text import reply_text
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT

GREEDY = {"no_repeat_ngram_size": 0}  # the original's algorithm: plain greedy (our default adds 3-gram blocking)


@torch.inference_mode()
def original_reply(model, prompt: list[int], eos_id: int, cap: int) -> list[int]:
    ids = list(prompt)
    out = []
    for _ in range(cap):
        logits = model(torch.tensor([ids], device=model.device)).logits
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos_id:
            break
        ids.append(token)
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def questions_for(bot, data_path, many):
    """Up to `many` distinct questions of the table with their labels, the checkpoint's validation
    questions first (as its split recorded them), and how many validation questions there are."""
    rows = chatdata.load_chat_table(data_path).rows
    held = chatdata.held_out(rows, bot.split)
    val = rows[held].drop_duplicates("Q")
    ordered = [*val.itertuples(), *rows[~held & ~rows.Q.isin(set(val.Q))].drop_duplicates("Q").itertuples()]
    return [r.Q for r in ordered[:many]], [r.label for r in ordered[:many]], len(val)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--latency-questions", type=COUNT, default=100)
    p.add_argument("--many", type=COUNT, default=1000)
    p.add_argument("--batch-size", type=COUNT, default=256)
    p.add_argument("--threads", type=COUNT, default=None)
    return p


def main():
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # The model's own replies, what the original's loop computes (an indexed checkpoint may default to rerank).
    bot = Chatbot.load(args.model_params, device=args.device, grounding="generate")
    model, tok = bot.model, bot.tokenizer
    eos = framing.control_ids(tok)[framing.EOS]
    cap = framing.DEFAULT_MAX_NEW_TOKENS
    questions, sents, n_val = questions_for(bot, args.data, args.many)
    prompts = bot.prompts(questions, sents, decoding=Decoding(**GREEDY))

    # Warm up every path on a few shapes first.
    for q, s, pr in zip(questions[:5], sents[:5], prompts[:5]):
        original_reply(model, pr, eos, cap)
        bot.chat(q, s, **GREEDY)
    bot.chat_batch(questions[: args.batch_size], sents[: args.batch_size], batch_size=args.batch_size, **GREEDY)

    # 1. One reply at a time (the whole API call: encoding, generation, decoding).
    n = args.latency_questions
    orig_ms, ours_ms = [], []
    for q, s, pr in zip(questions[:n], sents[:n], prompts[:n]):
        sync(device); t0 = time.perf_counter()
        original_reply(model, pr, eos, cap)
        sync(device); t1 = time.perf_counter()
        bot.chat(q, s, **GREEDY)
        sync(device); t2 = time.perf_counter()
        orig_ms.append((t1 - t0) * 1e3)
        ours_ms.append((t2 - t1) * 1e3)

    # 2. Many questions: the original loop one by one, ours batched.
    sync(device); t0 = time.perf_counter()
    orig_ids = [original_reply(model, pr, eos, cap) for pr in prompts]
    sync(device); t_orig = time.perf_counter() - t0
    sync(device); t0 = time.perf_counter()
    replies = bot.chat_batch(questions, sents, batch_size=args.batch_size, **GREEDY)
    sync(device); t_ours = time.perf_counter() - t0
    sync(device); t0 = time.perf_counter()
    bot.chat_batch(questions, sents, batch_size=args.batch_size)  # the default decoding
    sync(device); t_default = time.perf_counter() - t0
    single_default = []
    for q, s in zip(questions[:n], sents[:n]):
        sync(device); t1 = time.perf_counter()
        bot.chat(q, s)
        sync(device); single_default.append((time.perf_counter() - t1) * 1e3)

    ours_ids = bot.engine.generate(prompts, Decoding(**GREEDY), args.batch_size)
    same = sum(a == b for a, b in zip(orig_ids, ours_ids))
    same_text = sum(reply_text(tok, a, eos) == r for a, r in zip(orig_ids, replies))
    ended = sum(eos in ids for ids in ours_ids)
    mean_len = statistics.mean(len(ids) for ids in ours_ids)
    hw = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    cfg = model.config
    shape = f"{cfg.n_layer}x{cfg.n_embd}, vocab {cfg.vocab_size}"
    m_o, m_u = statistics.median(orig_ms), statistics.median(ours_ms)
    print(f"model {shape}; {hw}; torch {torch.__version__}; {len(questions)} questions ({min(n_val, len(questions))} "
          f"validation); replies {mean_len:.1f} tokens on average, {ended}/{len(ours_ids)} ended with </s>")
    print("| what | original loop | ours | ratio |\n| --- | --- | --- | --- |")
    print(f"| one reply, median over {n} questions | {m_o:.1f} ms | {m_u:.1f} ms | **{m_o / m_u:.1f}x** |")
    print(f"| {len(questions)} questions, replies/s (ours: chat_batch, batch {args.batch_size}) | "
          f"{len(questions) / t_orig:.1f} | {len(questions) / t_ours:.1f} | **{t_orig / t_ours:.1f}x** |")
    print(f"| the same with our default decoding (+ no_repeat_ngram_size 3) | | "
          f"{statistics.median(single_default):.1f} ms; {len(questions) / t_default:.1f} replies/s | |")
    print(f"| greedy replies equal to the original loop's | | {same}/{len(questions)} ids, {same_text} texts | "
          f"{100 * same / len(questions):.1f}% |")


if __name__ == "__main__":
    sys.exit(run_script(main))
