"""The llama.cpp engine: a .gguf written by `export --format gguf`, run by llama-cpp-python.

The kit frames the prompt and hands llama.cpp ids (so typed "<sys>" stays text, and llama.cpp's
tokenizer, which lacks our NFKC step, is never asked); each step's logits come back and go through
the same logits processors as every other engine (the never-empty rule, n-gram blocking, sampling),
so a decoding option means the same thing here. One reply at a time: llama.cpp's own loop is fast
for one sequence, which is what a CPU user waits on. llama-cpp-python is an optional dependency
(`pip install "kogpt2-chatbot[llamacpp]"`).
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import torch

from .base import BatchedEngine, context_size

INSTALL = 'pip install "kogpt2-chatbot[llamacpp]" (or: pip install llama-cpp-python)'
GGML_TYPE_F32 = 0  # KV cache in fp32: the f16 default would round what our fp32 loop keeps exact
_LOADING = threading.Lock()  # the loader's defaults are patched for one load at a time


def has_amx(llama_cpp) -> bool:
    """Whether llama.cpp was built with Intel AMX kernels (a native build on a Xeon of the 4th
    generation or later)."""
    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@contextlib.contextmanager
def weights_as_stored(llama_cpp):
    """Inside: models load without llama.cpp's repacked weight layouts (llama-server's --no-repack).

    Where llama.cpp has AMX kernels they take the q8_0 matrices, and there they crash on this kit's
    files (a segfault in ggml_backend_amx_mul_mat, measured with llama-cpp-python 0.3.36 on a Xeon
    with AMX, for the tiny and the 4.5M scratch models alike; f16 and f32 do not use them). Llama()
    has no flag for it, so the loader's defaults are patched for this one load.
    """
    module = llama_cpp.llama_cpp
    defaults = module.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _LOADING:
        module.llama_model_default_params = without_repacking
        try:
            yield
        finally:
            module.llama_model_default_params = defaults


def is_gguf(source) -> bool:
    return source is not None and str(source).lower().endswith(".gguf") and Path(str(source)).is_file()


class LlamaCppEngine(BatchedEngine):
    name = "llamacpp"

    @classmethod
    def refuses(cls, model, source) -> str | None:
        if not is_gguf(source):
            return "it runs a .gguf file (python -m kogpt2_chatbot export --format gguf --out bot.gguf)"
        return None

    @classmethod
    def picks(cls, model, source) -> bool:
        return is_gguf(source)

    def __init__(self, model, tokenizer, source=None):
        super().__init__(model, tokenizer, source)
        try:
            import llama_cpp
        except ImportError:
            raise ValueError(f"the llamacpp engine needs llama-cpp-python: {INSTALL}; or run the .gguf with "
                             "--engine lean") from None
        # As many threads as torch uses, prompt included: llama.cpp's threads spin while they wait,
        # so more threads than free cores make every step slower, not faster.
        threads = torch.get_num_threads()
        with weights_as_stored(llama_cpp) if has_amx(llama_cpp) else contextlib.nullcontext():
            self.llm = llama_cpp.Llama(model_path=str(source), n_ctx=context_size(model), n_batch=512,
                                       n_threads=threads, n_threads_batch=threads, type_k=GGML_TYPE_F32,
                                       type_v=GGML_TYPE_F32, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self._lock = threading.Lock()  # one llama.cpp context: one reply at a time

    def _batch(self, prompts, decoding, generator):
        out = []
        for prompt in prompts:
            tokens = list(self._reply(prompt, decoding, generator))
            out.append(tokens)
        return out

    def stream(self, prompt, decoding):
        from .base import model_device, seeded_generator

        steps = self._reply(prompt, decoding, seeded_generator(decoding, model_device(self.model)))
        try:
            for token in steps:
                if token == self.eos_id:
                    return
                yield token
        finally:
            steps.close()

    def _reply(self, prompt, decoding, generator):
        """New ids of one reply, `</s>` included when it stops; the context is held until closed."""
        import numpy as np

        processors = self.processors(decoding)
        with self._lock:
            self.llm.reset()
            self.llm.eval(prompt)
            seq = torch.tensor([prompt], dtype=torch.long)
            for _ in range(decoding.max_new_tokens):
                logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))
                scores = processors(seq, torch.from_numpy(logits.copy())[None])
                if decoding.do_sample:
                    token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
                else:
                    token = int(scores.argmax(-1))
                yield token
                if token == self.eos_id:
                    return
                seq = torch.cat([seq, torch.tensor([[token]])], 1)
                self.llm.eval([token])
