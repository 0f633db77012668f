"""Micro-batching: requests that arrive together share one batched generation call.

The first request waits at most `batch_wait_ms` for company, then up to `max_batch` prompts
with the same decoding settings and grounding mode go through the model at once: generated
replies on the engine's batched path (`Chatbot.complete`), grounded ones through
`Chatbot.complete_grounded` (retrieval, and the model's scoring for rerank). All model work runs
on one worker thread, so requests never race on the model.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from ..grounding import GENERATE


class Batcher:
    def __init__(self, bot, max_batch: int, batch_wait_ms: float):
        self.bot, self.max_batch, self.batch_wait_ms = bot, max_batch, batch_wait_ms
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self):
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, prompt, decoding, grounding: str = GENERATE):
        """The Reply to one framed prompt in a checked grounding mode, made together with whatever
        else is waiting."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((prompt, (decoding, grounding), future))
        return await future

    async def run(self, fn, *args):
        """Any other model work (streaming) goes through the same single thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        deadline = loop.time() + self.batch_wait_ms / 1000
        while len(items) < self.max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        while not self.queue.empty() and len(items) < self.max_batch:
            items.append(self.queue.get_nowait())
        return [item for item in items if not item[2].done()]  # timed out while queued

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            groups: dict = {}
            for item in await self._collect():  # only identical decoding and grounding share a call
                groups.setdefault(item[1], []).append(item)
            for (decoding, grounding), group in groups.items():
                prompts = [prompt for prompt, _, _ in group]
                work = self._generate if grounding == GENERATE else partial(self._ground, grounding=grounding)
                try:
                    out = await loop.run_in_executor(self.executor, work, prompts, decoding)
                except Exception as err:  # noqa: BLE001 - handed to each waiting request
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(err)
                    continue
                self.batches += 1
                self.requests += len(group)
                for (_, _, future), reply in zip(group, out):
                    if not future.done():
                        future.set_result(reply)

    def _generate(self, prompts, decoding):
        return self.bot.complete(prompts, decoding, batch_size=self.max_batch)

    def _ground(self, prompts, decoding, grounding):
        return self.bot.complete_grounded(prompts, decoding, self.max_batch, grounding)
