"""Full fine-tuning against LoRA on a ~1B-parameter Korean base shape (random init, offline).

The shape is EleutherAI/polyglot-ko-1.3b's (GPT-NeoX: 24 layers x 2048, 16 heads, MLP 8192,
vocabulary 30,080, rotary on half of each head). Each mode runs in its own process, so its peak
resident memory (ru_maxrss) is its own: the model, AdamW's state for what trains, activations.
Training steps are this kit's (answer-only loss, AdamW, clipping) on batches of real pairs.

    python bench/bench_lora.py --data data/sample_chats.csv                     # CPU, every mode
    python bench/bench_lora.py --data data/sample_chats.csv --layers 12 --modes full lora
    python bench/bench_lora.py --device cuda --modes lora qlora                 # on a GPU: bf16 LoRA vs NF4 QLoRA

Prints a Markdown table for bench/RESULTS.md (progress on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flags import COUNT, FROM_ZERO

POLYGLOT_KO_1_3B = dict(model_type="gpt_neox", hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=8192, vocab_size=30080, rotary_pct=0.5, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/sample_chats.csv")
    p.add_argument("--layers", type=COUNT, default=24, help="depth (24: the full 1.3B shape)")
    p.add_argument("--modes", nargs="+", default=["full", "lora"], choices=["full", "lora", "qlora"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=COUNT, default=8)
    p.add_argument("--steps", type=COUNT, default=3)
    p.add_argument("--warmup", type=FROM_ZERO, default=1)
    p.add_argument("--lora-r", type=COUNT, default=8)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    return p


def run_one(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from kogpt2_chatbot import backbone as bb
    from kogpt2_chatbot import data as chatdata
    from kogpt2_chatbot import framing
    from kogpt2_chatbot.train_options import TrainConfig

    mode, device = args.one, torch.device(args.device)
    rows = chatdata.load_chat_table(args.data).rows
    _, tokenizer = bb.load_backbone("scratch", texts=[*rows.Q, *rows.A, *framing.SENTIMENTS],
                                    cache_dir=".bench_cache")
    shape = {**POLYGLOT_KO_1_3B, "num_hidden_layers": args.layers}
    config = AutoConfig.for_model(**shape)
    torch.manual_seed(0)
    if mode == "qlora":  # 4-bit NF4 needs weights to quantize: write the random model once, load it quantized
        with tempfile.TemporaryDirectory() as tmp:
            AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
            model = bb.quantized_base(tmp)
    else:
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    new_ids = [framing.control_ids(tokenizer)[t] for t in (framing.USR, framing.SYS, framing.SENT)]
    if mode in ("lora", "qlora"):
        model = bb.add_lora(model, bb.LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r,
                                                   dropout=TrainConfig.lora_dropout), new_ids)
    dtype = torch.bfloat16 if device.type == "cuda" and mode == "lora" else None
    if dtype is not None:
        model = model.to(dtype)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    dataset = chatdata.ChatDataset(rows.head(args.batch_size * (args.steps + args.warmup)), tokenizer,
                                  framing.DEFAULT_MAX_LEN)
    pad = framing.control_ids(tokenizer)[framing.PAD]
    times = []
    for step in range(args.warmup + args.steps):
        batch = chatdata.collate([dataset[i] for i in range(step * args.batch_size, (step + 1) * args.batch_size)], pad)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = bb.answer_loss(model, batch["input_ids"].to(device), batch["labels"].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        print(f"[bench] {mode}: step {step + 1}/{args.warmup + args.steps} {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # what a checkpoint's weights part holds
        state = bb.adapter_state(model) if mode != "full" else model.state_dict()
        if mode == "full":  # 5 GB to disk is pointless: fp32 tensors are numel x 4 bytes in torch.save
            ckpt_bytes = sum(t.numel() * t.element_size() for t in state.values())
        else:
            torch.save(state, Path(tmp) / "adapter.pt")
            ckpt_bytes = (Path(tmp) / "adapter.pt").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {"mode": mode, "layers": args.layers, "parameters": total,
            "trainable": sum(p.numel() for p in trainable), "samples_per_s": args.batch_size / statistics.median(times),
            "peak_rss_bytes": peak, "peak_gpu_bytes": gpu_peak, "checkpoint_weights_bytes": ckpt_bytes,
            "device": str(device), "torch_threads": torch.get_num_threads()}


def main():
    args = build_parser().parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    results = []
    for mode in args.modes:  # a process each: ru_maxrss is a per-process peak
        cmd = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
        if out.returncode == 2:  # bad input: the run said why in one line
            sys.exit(2)
        if out.returncode != 0:
            sys.exit(f"{mode} failed (exit {out.returncode})")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gb = 1024 ** 3
    print(f"\nGPT-NeoX, polyglot-ko-1.3b width, {args.layers} layers; batch {args.batch_size}; {results[0]['device']}\n")
    print("| mode | parameters | trainable | peak memory | samples/s | checkpoint weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        memory = r["peak_gpu_bytes"] if r["peak_gpu_bytes"] is not None else r["peak_rss_bytes"]
        kind = "GPU" if r["peak_gpu_bytes"] is not None else "RSS"
        print(f"| {r['mode']} | {r['parameters'] / 1e9:.2f} B | {r['trainable'] / 1e6:.2f} M "
              f"({100 * r['trainable'] / r['parameters']:.2f}%) | {memory / gb:.1f} GiB {kind} | "
              f"{r['samples_per_s']:.2f} | {r['checkpoint_weights_bytes'] / 1e6:,.1f} MB |")


if __name__ == "__main__":
    from kogpt2_chatbot.__main__ import run_script

    sys.exit(run_script(main))
