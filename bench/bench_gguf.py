"""GGUF against the checkpoint: llama.cpp's tokens, its greedy replies, and reply speed, same weights.

    python bench/bench_gguf.py --model_params runs/scratch-full/model_-best.ckpt --data Chatbot_data/ChatbotData.csv

1. Tokens: llama.cpp's tokenizer over the GGUF against ours, on every question and answer of
   --data and every sentence of --sentences, for the checkpoint's tokenizer and for one built the
   way KoGPT2's is (a Metaspace BPE of 51,200 rows over the corpus, bench/make_kogpt2_shape.py's);
   and the GGUF chat template's prompts against the framing's ids, for every question.
2. Replies: greedy replies (plain, and our default decoding) of the llamacpp engine on f32, f16 and
   q8_0 exports against the lean engine on the checkpoint, for --questions validation questions.
3. Speed, one process, the same questions: one reply's median latency and --many replies/s for the
   original's loop (bench_chat.py), our lean loop, and llama.cpp at f32/f16/q8_0.
Prints Markdown rows for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import platform
import statistics
import tempfile
import time
import unicodedata
from pathlib import Path

import pandas as pd
import torch
import sys

from kogpt2_chatbot import backbone, framing, gguf_file
from kogpt2_chatbot.gguf_file import OUTTYPES
from kogpt2_chatbot import data as chatdata
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.__main__ import run_script

from bench_chat import GREEDY, original_reply, questions_for
from flags import COUNT


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_params", required=True)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--sentences", default="EC_data/sample_emotions.csv", help="a table with a Sentence column")
    p.add_argument("--questions", type=COUNT, default=500, help="validation questions for reply agreement")
    p.add_argument("--latency-questions", type=COUNT, default=100)
    p.add_argument("--many", type=COUNT, default=1000)
    p.add_argument("--batch-size", type=COUNT, default=256)
    p.add_argument("--replies-model", dest="replies_model", default=None,
                   help="the checkpoint whose replies and speed are measured (default --model_params)")
    p.add_argument("--replies-data", dest="replies_data", default=None, help="its chat table (default --data)")
    p.add_argument("--out", default=None, help="folder for the GGUF files (default: a temporary one)")
    return p


def token_parity(tokenizer, texts, gguf_path):
    """Counter of outcomes: same, or why not (<unk> in ours, NFKC changed the text, other)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    outcome, examples = collections.Counter(), {}
    unk = tokenizer.unk_token_id
    ours_all = framing.text_ids_batch(tokenizer, texts)
    for text, ours in zip(texts, ours_all):
        theirs = llm.tokenize((" " + text).encode(), add_bos=False, special=False)
        if theirs == ours:
            outcome["same"] += 1
            continue
        why = "unk" if unk in ours else "nfkc" if unicodedata.normalize("NFKC", text) != text else "other"
        outcome[why] += 1
        examples.setdefault(why, text)
    return outcome, examples


def template_parity(bot, questions, sentiments, gguf_path):
    import jinja2
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    same = 0
    for q, s in zip(questions, sentiments):
        text = template.render(messages=[{"role": "user", "content": q}], sentiment=s)
        same += llm.tokenize(text.encode(), add_bos=True, special=True) == framing.prompt_ids(bot.tokenizer, q, s)
    return same


def kogpt2_like(texts, folder: Path):
    """A GGUF (vocabulary only matters) with a tokenizer built as bench/make_kogpt2_shape.py builds it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = backbone.scratch_tokenizer(texts, 32000)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=1, n_positions=64, vocab_size=51200))
    backbone.ensure_framing_tokens(model, tokenizer)
    return tokenizer, gguf_file.write_gguf(model, tokenizer, folder / "kogpt2-like.gguf", "f32", {})


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def parity_rows(bot, args, folder, gguf_f32):
    rows = chatdata.load_chat_table(args.data).rows
    texts = [t.strip() for t in [*rows.Q, *rows.A]]
    sentences = [t.strip() for t in pd.read_csv(args.sentences, dtype=str).Sentence.dropna()]
    like_tok, like_gguf = kogpt2_like([*rows.Q, *rows.A, *framing.SENTIMENTS], folder)
    print("| tokenizer | texts | same ids | not the same (why) |\n| --- | --- | --- | --- |")
    for name, tok, path in (("checkpoint's (scratch preset)", bot.tokenizer, gguf_f32),
                            ("built like KoGPT2's (51,200 rows)", like_tok, like_gguf)):
        for what, items in ((f"{args.data} Q and A", texts), (f"{args.sentences} sentences", sentences)):
            outcome, examples = token_parity(tok, items, path)
            rest = ", ".join(f"{n} {why} (e.g. {examples[why]!r})" for why, n in outcome.items() if why != "same")
            print(f"| {name} | {what}: {len(items)} | {outcome['same']} ({100 * outcome['same'] / len(items):.2f}%)"
                  f" | {rest or 'none'} |")
    labels = [str(x) for x in rows.label]
    same = template_parity(bot, list(rows.Q), labels, gguf_f32)
    print(f"\nGGUF chat template (jinja2) -> llama.cpp tokens = framing's prompt ids: {same}/{len(rows)} questions")


def agreement_rows(bot, engines, questions, sentiments):
    print("\n| engine | greedy replies equal to lean's | default decoding equal |\n| --- | --- | --- |")
    base = {k: bot.chat_batch(questions, sentiments, **d) for k, d in (("greedy", GREEDY), ("default", {}))}
    for name, other in engines.items():
        cells = []
        for key, d in (("greedy", GREEDY), ("default", {})):
            got = other.chat_batch(questions, sentiments, **d)
            same = sum(a == b for a, b in zip(base[key], got))
            cells.append(f"{same}/{len(questions)} ({100 * same / len(questions):.1f}%)")
        print(f"| llamacpp {name} | {cells[0]} | {cells[1]} |")


def speed_rows(bot, engines, questions, sentiments, args):
    prompts = bot.prompts(questions, sentiments)
    eos, cap = bot.eos_id, framing.DEFAULT_MAX_NEW_TOKENS
    n = args.latency_questions
    for other in [bot, *engines.values()]:  # warm-up
        other.chat_batch(questions[:8], sentiments[:8], **GREEDY)
    for p in prompts[:5]:
        original_reply(bot.model, p, eos, cap)
    single = collections.defaultdict(list)
    for q, s, p in zip(questions[:n], sentiments[:n], prompts[:n]):
        single["original loop"].append(timed(lambda: original_reply(bot.model, p, eos, cap))[1])
        single["lean"].append(timed(lambda: bot.chat(q, s, **GREEDY))[1])
        for name, other in engines.items():
            single[f"llamacpp {name}"].append(timed(lambda: other.chat(q, s, **GREEDY))[1])
    many = {"original loop": timed(lambda: [original_reply(bot.model, p, eos, cap) for p in prompts])[1],
            "lean": timed(lambda: bot.chat_batch(questions, sentiments, batch_size=args.batch_size, **GREEDY))[1]}
    for name, other in engines.items():
        many[f"llamacpp {name}"] = timed(lambda: other.chat_batch(questions, sentiments, **GREEDY))[1]
    base_one, base_many = statistics.median(single["original loop"]), many["original loop"]
    print(f"\n| engine (greedy) | one reply, median of {n} | vs original | {len(questions)} replies/s | vs original |")
    print("| --- | --- | --- | --- | --- |")
    for name in single:
        one = statistics.median(single[name])
        print(f"| {name} | {one * 1e3:.1f} ms | {base_one / one:.1f}x | {len(questions) / many[name]:.0f} | "
              f"{base_many / many[name]:.1f}x |")


def main():
    args = build_parser().parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-gguf-"))
    folder.mkdir(parents=True, exist_ok=True)
    # Generated replies on both sides: the engines' own (an indexed checkpoint and its GGUF may default to rerank).
    bot = Chatbot.load(args.model_params, engine="lean", grounding="generate")
    paths = {t: bot.save_gguf(folder / f"bot-{t}.gguf", t)[0] for t in OUTTYPES}
    c = bot.model.config
    print(f"model {c.n_layer}x{c.n_embd}, vocab {c.vocab_size}; {platform.machine()} CPU, {torch.get_num_threads()} "
          f"threads; torch {torch.__version__}; GGUF sizes " +
          ", ".join(f"{t} {p.stat().st_size / 2**20:.1f} MiB" for t, p in paths.items()))
    parity_rows(bot, args, folder, paths["f32"])
    if args.replies_model:
        bot = Chatbot.load(args.replies_model, engine="lean", grounding="generate")
        paths = {t: bot.save_gguf(folder / f"replies-{t}.gguf", t)[0] for t in OUTTYPES}
        c = bot.model.config
        print(f"\nreplies and speed: {args.replies_model}, {c.n_layer}x{c.n_embd}, vocab {c.vocab_size}")
    engines = {t: Chatbot.load(p, engine="llamacpp", grounding="generate") for t, p in paths.items()}
    data = args.replies_data or args.data
    questions, sentiments, n_val = questions_for(bot, data, max(args.questions, args.many))
    print(f"{len(questions)} questions from {data}, replies {statistics.mean(len(r.token_ids) for r in bot.complete(bot.prompts(questions[:200], sentiments[:200]))):.1f} tokens on average (first 200, default decoding)")
    print(f"\n{min(n_val, args.questions)} of the {args.questions} agreement questions are validation questions")
    agreement_rows(bot, engines, questions[: args.questions], sentiments[: args.questions])
    speed_rows(bot, engines, questions[: args.many], sentiments[: args.many], args)


if __name__ == "__main__":
    sys.exit(run_script(main))
