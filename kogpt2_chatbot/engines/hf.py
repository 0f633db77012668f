"""The `hf` engine: Hugging Face `generate()`, for every architecture (LoRA models included), under
the GenerationConfig of the decoding options, the one an export carries."""
from __future__ import annotations

import queue
import threading

import torch

from ..decoding import Decoding
from .base import BatchedEngine, cut_at_eos, left_pad, model_device


class GenerateEngine(BatchedEngine):
    name = "generate"

    @classmethod
    def picks(cls, model, source) -> bool:
        return True

    def generation_config(self, decoding: Decoding):
        config = self.model.get_base_model().config if hasattr(self.model, "peft_config") else self.model.config
        return decoding.generation_config(self.tokenizer, config, self.never_empty)

    def _batch(self, batch, decoding: Decoding, generator=None, streamer=None):
        model = self.model
        device = model_device(model)
        width = max(len(p) for p in batch)
        input_ids, mask = left_pad(batch, self.pad_id, width)
        state = None
        if decoding.do_sample and decoding.seed is not None:  # generate() samples from the global RNG
            state = torch.random.get_rng_state()
            torch.manual_seed(decoding.seed)
        try:
            # The GenerationConfig an export carries (decoding.py), so this engine replies as plain
            # transformers does with an hf/ folder, and the tests that hold it equal to the GPT-2
            # loops hold the export equal too.
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.long().to(device),
                                 generation_config=self.generation_config(decoding), streamer=streamer)
        finally:
            if state is not None:
                torch.random.set_rng_state(state)
        return [cut_at_eos(row, self.eos_id) for row in out[:, width:].tolist()]

    def stream(self, prompt, decoding: Decoding):
        """Token ids from generate() on a worker thread, as its streamer receives them. A caller
        that stops reading (closes this generator) ends generate() at its next step."""
        from transformers.generation.streamers import BaseStreamer

        tokens: queue.Queue = queue.Queue()
        stopped = threading.Event()

        class Collect(BaseStreamer):
            first = True

            def put(self, value):
                if stopped.is_set():
                    raise _Stopped  # out of generate(): nobody reads its tokens any more
                if self.first:  # generate() hands over the prompt first
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    tokens.put(token)

            def end(self):
                tokens.put(None)

        failure = []

        def work():
            try:
                with torch.inference_mode():
                    self._batch([prompt], decoding, streamer=Collect())
            except BaseException as err:  # surfaced in the caller's thread
                failure.append(err)
                tokens.put(None)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (token := tokens.get()) is not None and token != self.eos_id:
                yield token
        finally:
            stopped.set()
            thread.join()
        if failure and not isinstance(failure[0], _Stopped):
            raise failure[0]


class _Stopped(Exception):
    """Raised inside generate() by the streamer once its reader has gone."""
