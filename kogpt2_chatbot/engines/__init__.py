"""Engines: prompt ids in, new token ids out (batched, KV-cached, streamed), chosen by name.

Only the chatbot API (`api.Chatbot`) builds an engine, through `create()` here; no door imports
an engine module, and this registry is the only place that knows which engines exist.

| name     | file        | what it runs                                                          |
| -------- | ----------- | --------------------------------------------------------------------- |
| `llamacpp` | llamacpp.py | a .gguf (export --format gguf) run by llama.cpp (llama-cpp-python, an |
|          |             | optional dependency); the default for a .gguf                          |
| `static` | static.py   | GPT-2 with fixed shapes: on CUDA each decode step replays as a CUDA    |
|          |             | graph (fp16 weights, fp32 logits), a row that ends taking the next     |
|          |             | prompt (continuous batching); the default for GPT-2 on a GPU           |
| `lean`   | lean.py     | GPT-2's own weights through a KV-cached loop of plain tensor ops; the  |
|          |             | default for GPT-2 elsewhere (one reply fast on a CPU)                  |
| `hf`     | hf.py       | Hugging Face `generate()`: every other architecture, LoRA models       |

`static` and `lean` share one step loop (gpt2.py). `auto`, the default, takes the first engine
of `ENGINES` whose `picks(model, source)` is true. Every engine applies the same logits
processors (`Decoding.logits_processors`, the never-empty rule first), so an option means the
same thing everywhere, and their greedy tokens are tested equal.

Adding an engine is one new file here and one line in `ENGINES` ("name": "module:Class"). The
class needs:

    class MyEngine:
        name: str                                      # shown by /health and reports, e.g. "lean-gpt2"

        @classmethod
        def refuses(cls, model, source) -> str | None  # why it cannot run this bot (None: it can)
        @classmethod
        def picks(cls, model, source) -> bool          # does `auto` choose it (asked in ENGINES order)?

        def __init__(self, model, tokenizer, source)   # the loaded bot's model and tokenizer; source:
                                                       # the .ckpt / folder / file / hub id it came from
        def generate(self, prompts, decoding, batch_size=64, progress=None) -> list[list[int]]
            # the new ids of each prompt (order kept), `</s>` included when the reply stopped by
            # itself; `progress(n)` after each batch of n prompts
        def stream(self, prompt, decoding) -> Iterator[int]
            # one reply's new ids as they come, `</s>` not included; closing it early frees its work

`prompts` are framed ids (framing.py), `decoding` a `decoding.Decoding`. base.py has what most
engines reuse: `BatchedEngine` (generate() over batches sorted by length), `left_pad`, the seeded
generator. This module imports nothing heavy: the command line lists the names before torch loads.
"""
from __future__ import annotations

import importlib

from .. import options

AUTO = "auto"
DEFAULT_BATCH_SIZE = 64  # prompts decoded together

# name -> "module:Class", in the order `auto` asks them.
ENGINES = {
    "llamacpp": "llamacpp:LlamaCppEngine",
    "static": "static:StaticEngine",
    "lean": "lean:LeanEngine",
    "hf": "hf:GenerateEngine",
}


def names() -> list[str]:
    """Every name `--engine` and `Chatbot(engine=...)` accept, `auto` first."""
    return [AUTO, *ENGINES]


def check_name(name) -> str:
    """The name itself, or ValueError listing the known ones."""
    if not isinstance(name, str) or name not in names():
        raise ValueError(f"engine must be one of {', '.join(names())}; got {name!r}")
    return name


def check_batch_size(value) -> int:
    """How many prompts go through the model together (`--batch-size`, `batch_size=`): a whole
    number >= 1."""
    return options.check_number("batch_size", value, int, low=1)


def engine_class(name: str):
    module, cls = ENGINES[check_name(name)].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


def choose(name: str, model, source=None):
    """The engine class `name` means for this bot (`auto`: the first that picks it)."""
    if check_name(name) != AUTO:
        return engine_class(name)
    for candidate in ENGINES:
        cls = engine_class(candidate)
        if cls.picks(model, source) and cls.refuses(model, source) is None:
            return cls
    raise ValueError("no engine can run this model")


def create(name: str, model, tokenizer, source=None):
    """The engine `name` for a loaded bot; ValueError when that engine cannot run it."""
    cls = choose(name, model, source)
    reason = cls.refuses(model, source)
    if reason is not None:
        raise ValueError(f"the {name} engine cannot run this model: {reason}")
    return cls(model, tokenizer, source)
