"""A sweep of the `scratch` recipe on the full corpus: model size, vocabulary, learning rate, dropout.

Every run trains on KoChatBART's 80/10/10 split (`--protocol kochatbart`, seed 42), so each is
chosen on the same 1,182 validation rows, and is recorded with its settings, the validation
loss in bits per answer character (bpc: comparable across vocabularies, unlike perplexity), the
validation chrF with the default decoding, and its wall time. Runs are sized to finish on a CPU;
on a GPU give more epochs.

    python bench/sweep_scratch.py --data Chatbot_data/ChatbotData.csv --out runs/sweep --epochs 6

Prints a Markdown table for bench/RESULTS.md (one row as each run ends) and writes sweep.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flags import COUNT

RUNS = {  # name: (n_layer, n_embd, n_head, BPE vocabulary, lr, dropout)
    "4x256 bpe8k lr1e-3": (4, 256, 4, 8000, 1e-3, None),
    "4x256 bpe8k lr2e-3": (4, 256, 4, 8000, 2e-3, None),
    "4x256 bpe4k lr1e-3": (4, 256, 4, 4000, 1e-3, None),
    "4x256 bpe8k lr1e-3 dropout0": (4, 256, 4, 8000, 1e-3, 0.0),
    "3x256 bpe8k lr2e-3": (3, 256, 4, 8000, 2e-3, None),
    "6x256 bpe8k lr1e-3": (6, 256, 4, 8000, 1e-3, None),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--epochs", type=COUNT, default=6)
    p.add_argument("--runs", nargs="*", choices=list(RUNS), default=list(RUNS), help="names of RUNS to do (default: all)")
    return p


def main():
    args = build_parser().parse_args()
    from kogpt2_chatbot import backbone as bb
    from kogpt2_chatbot import data as chatdata
    from kogpt2_chatbot.api import as_chatbot
    from kogpt2_chatbot.evaluate import answer_loss, chrf, scored_turns
    from kogpt2_chatbot.train import TrainConfig, train

    rows = chatdata.load_chat_table(args.data).rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    print("| run | layers x width | BPE | lr | dropout | epochs | val_bpc | val_ppl | val chrF | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for name in args.runs:
        n_layer, n_embd, n_head, vocab, lr, dropout = RUNS[name]
        preset = f"sweep-{n_layer}x{n_embd}-{vocab}"
        bb.SCRATCH_PRESETS[preset] = dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=256,
                                          vocab_size=vocab)
        run_dir = out / name.replace(" ", "_")
        print(f"[sweep] {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        module = train(TrainConfig(data=args.data, base_model=preset, model_dir=str(run_dir), protocol="kochatbart",
                                   max_epochs=args.epochs, lr=lr, dropout=dropout, samples=0, progress=False))
        wall = time.perf_counter() - start
        best = as_chatbot(module)  # train() leaves the best weights in the module
        val = rows[chatdata.held_out(rows, module.split)]
        questions, labels, references, histories = scored_turns(val)
        replies = best.chat_batch(questions, labels, histories, batch_size=128)
        loss = answer_loss(best, val)
        row = {"run": name, "n_layer": n_layer, "n_embd": n_embd, "vocab": vocab, "lr": lr, "dropout": dropout,
               "epochs": args.epochs, "val_bpc": loss["bpc"], "val_ppl": loss["ppl"],
               "val_chrf": chrf(replies, references), "wall_s": wall}
        results.append(row)
        (out / "sweep.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"| {name} | {n_layer} x {n_embd} | {vocab:,} | {lr:g} | {'default 0.1' if dropout is None else dropout} "
              f"| {args.epochs} | {row['val_bpc']:.3f} | {row['val_ppl']:.0f} | {row['val_chrf']:.2f} | "
              f"{wall / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    from kogpt2_chatbot.__main__ import run_script

    sys.exit(run_script(main))
