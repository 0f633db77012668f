"""Training throughput: our step against the original's algorithm, same model, same data, one process.

The original (KoGPT2-chatbot, train_torch.py): every pair padded to a fixed 32 tokens, fp32,
batch 96, logits of non-answer positions replaced by -1e18, cross-entropy over every position,
summed and divided by the number of answer tokens. Ours: dynamic padding, no attention mask,
the output layer only on answer positions, mean over answer tokens (+ bf16 autocast and fused
AdamW on a GPU, as `train` uses them).

    python bench/bench_train.py --data Chatbot_data/ChatbotData.csv --shape scratch
    python bench/bench_train.py --data ChatbotData.csv --shape kogpt2 --device cuda   # 12x768, vocab 51,200

Prints a Markdown row for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import pandas as pd
import torch
import torch.nn.functional as F

from kogpt2_chatbot import backbone, data as chatdata, framing
from kogpt2_chatbot.__main__ import run_script
from flags import COUNT, FROM_ZERO

SHAPES = {
    "scratch": dict(n_layer=6, n_embd=384, n_head=6, vocab=None),
    "scratch-tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=None),
    "kogpt2": dict(n_layer=12, n_embd=768, n_head=12, vocab=51200),  # KoGPT2's exact shape, random init
}


def original_batches(tokenizer, rows, batch_size, max_len=32):
    """The original's CharDataset: fixed-length padding, mask over answer positions, labels shifted."""
    ids = framing.control_ids(tokenizer)
    pad = ids[framing.PAD]
    qs = framing.text_ids_batch(tokenizer, list(rows["Q"]))
    As = framing.text_ids_batch(tokenizer, list(rows["A"]))
    sents = {s: framing.text_ids(tokenizer, s) for s in framing.SENTIMENTS}
    items = []
    for q, a, s in zip(qs, As, rows["label"]):
        q_tok = [ids[framing.USR], *q, ids[framing.SENT], *sents[s]]
        a_tok = [ids[framing.SYS], *a, ids[framing.EOS]]
        if len(q_tok) + len(a_tok) > max_len:
            a_len = max_len - len(q_tok)
            if a_len <= 0:
                q_tok = q_tok[-(max_len // 2):]
                a_len = max_len - len(q_tok)
            a_tok = a_tok[:a_len]
        labels = [pad] * len(q_tok) + a_tok[1:]
        mask = [0] * len(q_tok) + [1] * len(a_tok) + [0] * (max_len - len(q_tok) - len(a_tok))
        token_ids = (q_tok + a_tok + [pad] * max_len)[:max_len]
        labels = (labels + [pad] * max_len)[:max_len]
        items.append((token_ids, mask, labels))
    for start in range(0, len(items) - batch_size + 1, batch_size):
        chunk = items[start : start + batch_size]
        yield tuple(torch.tensor([c[k] for c in chunk]) for k in range(3))


def original_step(model, batch, device):
    token_ids, mask, label = (t.to(device) for t in batch)
    out = model(token_ids).logits
    mask_3d = mask.unsqueeze(dim=2).repeat_interleave(repeats=out.shape[2], dim=2)
    mask_out = torch.where(mask_3d == 1, out, -1e18 * torch.ones_like(out))
    loss = F.cross_entropy(mask_out.transpose(2, 1), label, reduction="none")
    return loss.sum() / mask.sum()


def our_step(model, batch, device, autocast):
    input_ids, labels = batch["input_ids"].to(device, non_blocking=True), batch["labels"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        target = labels[:, 1:]
        keep = target != framing.IGNORE_INDEX
        hidden = model.base_model(input_ids=input_ids[:, :-1]).last_hidden_state
        logits = model.get_output_embeddings()(hidden[keep])
    return F.cross_entropy(logits.float(), target[keep])


def timed_run(step_fn, model, batches, optimizer, device, warmup, steps):
    times = []
    it = iter(batches)
    for i in range(warmup + steps):
        batch = next(it)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step_fn(model, batch, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def build(shape, tokenizer, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = SHAPES[shape]
    ids = framing.control_ids(tokenizer)
    config = GPT2Config(n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=cfg["n_head"], n_positions=256,
                        vocab_size=cfg["vocab"] or len(tokenizer), eos_token_id=ids[framing.EOS],
                        bos_token_id=ids[framing.EOS], pad_token_id=ids[framing.PAD])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device)
    # Both algorithms feed right-padded ids without a mask, as the original did; the check behind
    # transformers' warning about that would also read ids back from the GPU every step.
    model.base_model.warn_if_padding_and_no_attention_mask = lambda *args: None
    return model


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/sample_chats.csv")
    p.add_argument("--shape", choices=sorted(SHAPES), default="scratch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=COUNT, default=96)
    p.add_argument("--steps", type=COUNT, default=20)
    p.add_argument("--warmup", type=FROM_ZERO, default=3)
    p.add_argument("--repeats", type=COUNT, default=3)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (for both algorithms), as torch 1.7-1.11 "
                   "did by default when the original was written")
    p.add_argument("--compile", action="store_true", help="also time our step compiled, as `train --compile` runs it "
                   "(the default with CUDA): torch.compile, CUDA graphs per length bucket on a GPU")
    return p


def compiled_step(model, autocast):
    """Our step through the training's compiled loss (backbone.compiled_answer_loss)."""
    loss = backbone.compiled_answer_loss(model)

    def step(model, batch, device):
        input_ids = batch["input_ids"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            return loss(input_ids, labels)

    return step


def main():
    args = build_parser().parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    rows = chatdata.load_chat_table(args.data).rows.sample(frac=1.0, random_state=0).reset_index(drop=True)
    _, tokenizer = backbone.load_backbone("scratch", texts=[*rows.Q, *rows.A, *framing.SENTIMENTS],
                                          cache_dir=".bench_cache")
    need = (args.warmup + args.steps) * args.batch_size
    while len(rows) < need:  # small data: cycle it
        rows = pd.concat([rows, rows])
    # Each copy its own conversation: rows of one conversation would become one multi-turn example.
    rows = rows.head(need).reset_index(drop=True).assign(conv=range(need))
    ours_data = chatdata.ChatDataset(rows, tokenizer, max_len=framing.DEFAULT_MAX_LEN)
    pad = framing.control_ids(tokenizer)[framing.PAD]
    # The batches training uses: similar lengths together (same rows, same number of batches).
    sampler = chatdata.LengthGroupedSampler([len(e[0]) for e in ours_data.examples], args.batch_size)
    our_batches = [chatdata.collate([ours_data.examples[j] for j in batch], pad) for batch in sampler.batches()]
    orig_batches = list(original_batches(tokenizer, rows, args.batch_size))
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    print(f"[bench] {args.repeats} x ({args.warmup} + {args.steps}) steps of each algorithm, {args.shape} shape, "
          f"batch {args.batch_size}, on {device}", file=sys.stderr, flush=True)

    results = {"original": [], "ours": [], **({"compiled": []} if args.compile else {})}
    for _ in range(args.repeats):  # alternate, so drift hits both alike
        for name in results:
            model = build(args.shape, tokenizer, device)
            fused = device.type == "cuda" and name != "original"
            opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=fused)
            step = {"original": original_step, "ours": lambda m, b, d: our_step(m, b, d, autocast)}.get(name)
            step = step or compiled_step(model, autocast)
            batches = orig_batches if name == "original" else our_batches
            model.train()
            times = timed_run(step, model, batches, opt, device, args.warmup, args.steps)
            results[name].append(args.batch_size / statistics.median(times))
            print(f"[bench] run {len(results[name])}/{args.repeats}, {name}: {results[name][-1]:,.0f} samples/s",
                  file=sys.stderr, flush=True)
    orig, ours = statistics.median(results["original"]), statistics.median(results["ours"])
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"
    mean_len = statistics.mean(len(e[0]) for e in ours_data.examples)
    compiled = ""
    if args.compile:
        rate = statistics.median(results["compiled"])
        compiled = f" compiled {rate:,.0f} samples/s (**{rate / orig:.2f}x**) |"
    print(f"| train step | {args.shape} | {device.type} ({hw}) | batch {args.batch_size} | "
          f"original {orig:,.0f} samples/s | ours {ours:,.0f} samples/s | **{ours / orig:.2f}x** |{compiled} "
          f"mean pair {mean_len:.1f} tokens; torch {torch.__version__} |")


if __name__ == "__main__":
    sys.exit(run_script(main))
