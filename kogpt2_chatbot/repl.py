"""The terminal chat (`train_torch.py --chat`, `test_torch.py`, `python -m kogpt2_chatbot chat`).

In a terminal: prompt `user > `, replies `Simsimi > ` streamed as they are generated (the
original's look); `quit`, `exit`, Ctrl-D or Ctrl-C end it; `/sent N` switches the sentiment.
Through a pipe: one question per line in, one reply per line out, nothing else on stdout.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from . import framing

HELP = f"""명령:
  /sent N   감정 바꾸기 ({framing.SENTIMENT_HELP})
  /help     이 도움말
  quit, exit, Ctrl-D, Ctrl-C   끝내기"""


class MissingCheckpoint(FileNotFoundError):
    pass


def pick_device(gpus: int | None = None, device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    if gpus:
        if torch.cuda.is_available():
            return torch.device("cuda")
        warnings.warn(f"--gpus {gpus}: no GPU found; running on the CPU")
    return torch.device("cpu")


def load_model(path, gpus: int | None = None, device: str | None = None):
    """KoGPT2Chat from a checkpoint, on the chosen device, in eval mode; a clear error if absent."""
    from .module import KoGPT2Chat

    path = Path(path)
    if not path.exists():
        raise MissingCheckpoint(
            f"no checkpoint at {path}. Train one first, e.g.\n"
            "  python train_torch.py --gpus 1 --train --max_epochs 2          (KoGPT2, needs the hub)\n"
            "  python train_torch.py --train --base-model scratch-tiny --data data/sample_chats.csv "
            "--max_epochs 40 --batch-size 16 --lr 3e-3 --model-dir model_chp/demo   (offline demo)\n"
            "or point --model_params at an existing .ckpt"
        )
    model = KoGPT2Chat.load_from_checkpoint(path, map_location="cpu")
    return model.to(pick_device(gpus, device)).eval()


def decoding_from_args(args) -> dict:
    keys = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
            "no_repeat_ngram_size")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "sample_seed", None) is not None:
        out["seed"] = args.sample_seed
    return out


def run(model, sentiment="0", decoding=None, stdin=None, stdout=None):
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    decoding = decoding or {}
    sentiment = framing.normalize_sentiment(sentiment)
    if not stdin.isatty():
        return _pipe(model, sentiment, decoding, stdin, stdout)
    print(f"대화를 시작합니다 (감정 {sentiment}). /help 도움말, quit 끝내기", file=stdout)
    while True:
        try:
            line = input("user > ")
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            return
        q = line.strip()
        if q in ("quit", "exit"):
            return
        if not q:
            continue
        if q.startswith("/"):
            sentiment = _command(q, sentiment, stdout)
            continue
        print("Simsimi > ", end="", flush=True, file=stdout)
        try:
            for piece in model.stream_chat(q, sentiment, **decoding):
                print(piece, end="", flush=True, file=stdout)
        except KeyboardInterrupt:  # Ctrl-C during a reply ends the reply, not the chat
            print(" ...", end="", file=stdout)
        print(file=stdout)


def _command(text: str, sentiment: str, stdout) -> str:
    name, _, value = text.partition(" ")
    if name == "/sent":
        try:
            sentiment = framing.normalize_sentiment(value)
            print(f"감정을 {sentiment}(으)로 바꿨습니다", file=stdout)
        except ValueError as err:
            print(err, file=stdout)
    elif name == "/help":
        print(HELP, file=stdout)
    else:
        print(f"모르는 명령 {name}\n{HELP}", file=stdout)
    return sentiment


def _pipe(model, sentiment, decoding, stdin, stdout):
    """One reply line per input line (blank in, blank out), so line N answers line N."""
    for line in stdin:
        q = line.strip()
        if q in ("quit", "exit"):
            return
        reply = model.chat(q, sentiment, **decoding) if q else ""
        print(reply.replace("\n", " "), file=stdout, flush=True)


def main(args):
    model = load_model(args.model_params, getattr(args, "gpus", None), getattr(args, "device", None))
    run(model, args.sentiment, decoding_from_args(args))
