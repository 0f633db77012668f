"""Writes a randomly initialised GPT-2 of a benchmark shape as a Hugging Face folder, offline.

12 layers x 768, 12 heads, vocabulary 51,200 (a BPE tokenizer trained on the corpus, its
vocabulary padded to 51,200 rows), so speed can be measured where the hub is out of reach (--shape small: the 4 x 256 model of
the CPU figures in bench/RESULTS.md):

    python bench/make_kogpt2_shape.py --data Chatbot_data/ChatbotData.csv --out bench/kogpt2-shape
    python -m kogpt2_chatbot train --base-model bench/kogpt2-shape --data Chatbot_data/ChatbotData.csv \
        --gpus 1 --max_steps 600 --lr 5e-4 --model-dir runs/kogpt2-shape
    python bench/bench_chat.py --model_params runs/kogpt2-shape/model_-last.ckpt --data Chatbot_data/ChatbotData.csv
"""
from __future__ import annotations

import argparse
import sys

from transformers import GPT2Config, GPT2LMHeadModel

from kogpt2_chatbot import backbone, data as chatdata, framing
from kogpt2_chatbot.__main__ import run_script

SHAPES = {
    "kogpt2": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=51200),  # 125M
    # The 5.2M model of the CPU figures in bench/RESULTS.md: 4 x 256, BPE 8,000.
    "small": dict(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=8000),
}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="Chatbot_data/ChatbotData.csv")
    p.add_argument("--out", default="bench/kogpt2-shape")
    p.add_argument("--shape", choices=sorted(SHAPES), default="kogpt2")
    return p


def main():
    args = build_parser().parse_args()
    rows = chatdata.load_chat_table(args.data).rows
    shape = SHAPES[args.shape]
    tokenizer = backbone.scratch_tokenizer([*rows.Q, *rows.A, *framing.SENTIMENTS], min(32000, shape["vocab_size"]))
    ids = framing.control_ids(tokenizer)
    config = GPT2Config(**shape, bos_token_id=ids[framing.EOS], eos_token_id=ids[framing.EOS],
                        pad_token_id=ids[framing.PAD])
    model = GPT2LMHeadModel(config)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"tokenizer {len(tokenizer)} of {config.vocab_size} rows")


if __name__ == "__main__":
    sys.exit(run_script(main))
