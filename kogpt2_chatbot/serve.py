"""HTTP serving: a JSON API, an OpenAI-compatible route, and a one-page web chat (FastAPI).

    python -m kogpt2_chatbot serve --model_params model_chp/model_-last.ckpt   # http://127.0.0.1:8000

Requests that arrive together are answered by one batched generation call (micro-batching):
the first request waits at most `batch_wait_ms` for company, then up to `max_batch` prompts
with the same decoding settings go through the model at once. All model work runs on one
worker thread, so requests never race on the model.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from . import framing
from . import generation as G


@dataclass
class ServeSettings:
    max_batch: int = 64              # 1 turns micro-batching off
    batch_wait_ms: float = 5.0       # how long a lone request waits for company
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 1000
    max_new_tokens_ceiling: int = 256
    timeout_s: float = 60.0          # per request, queueing included
    decoding: dict = field(default_factory=dict)  # server-wide defaults (CLI decoding flags)


# --- request bodies -------------------------------------------------------------------------

class DecodingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    seed: int | None = None


class ChatRequest(DecodingOptions):
    question: str
    sentiment: int | str | None = None


class Message(BaseModel):
    role: str
    content: str | list | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we have no use for
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Literal[1] = 1
    seed: int | None = None
    sentiment: int | str | None = None


class ServeError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# --- micro-batching -------------------------------------------------------------------------

class Batcher:
    """Collects concurrent requests and answers them with one generate call per group."""

    def __init__(self, model, settings: ServeSettings):
        self.model, self.settings = model, settings
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

    async def submit(self, prompt: list[int], decoding: G.Decoding) -> list[int]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((prompt, decoding, future))
        return await future

    async def run(self, fn, *args):
        """Any other model work (streaming) goes through the same single thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.settings.batch_wait_ms / 1000
            while len(items) < self.settings.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            while not self.queue.empty() and len(items) < self.settings.max_batch:
                items.append(self.queue.get_nowait())
            items = [item for item in items if not item[2].done()]  # timed out while queued
            groups: dict = {}
            for item in items:  # only identical decoding settings can share a generate call
                groups.setdefault(item[1], []).append(item)
            for decoding, group in groups.items():
                prompts = [prompt for prompt, _, _ in group]
                try:
                    out = await loop.run_in_executor(self.executor, self._generate, prompts, decoding)
                except Exception as err:  # noqa: BLE001 - handed to each waiting request
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(err)
                    continue
                self.batches += 1
                self.requests += len(group)
                for (_, _, future), ids in zip(group, out):
                    if not future.done():
                        future.set_result(ids)

    def _generate(self, prompts, decoding):
        return G.generate_ids(self.model.kogpt2, self.model.tokenizer, prompts, decoding,
                              batch_size=self.settings.max_batch)


# --- the app --------------------------------------------------------------------------------

def create_app(model, settings: ServeSettings | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    settings = settings or ServeSettings()
    model.eval()
    batcher = Batcher(model, settings)
    tokenizer = model.tokenizer
    eos_id = framing.control_ids(tokenizer)[framing.EOS]
    base_decoding = G.Decoding.from_kwargs(**settings.decoding)
    device = str(next(model.parameters()).device)
    n_params = sum(p.numel() for p in model.parameters())

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="KoGPT2 chatbot", lifespan=lifespan)

    def error(status, message, kind="invalid_request_error"):
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error(413, f"request body over {settings.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(ServeError)
    async def serve_error(request, exc: ServeError):
        return error(exc.status, exc.message, exc.kind)

    def decoding_for(options: dict) -> G.Decoding:
        asked = {k: v for k, v in options.items() if v is not None}
        if asked.get("max_new_tokens", 0) > settings.max_new_tokens_ceiling:
            raise ServeError(422, f"max_new_tokens must be <= {settings.max_new_tokens_ceiling}")
        merged = {**vars(base_decoding), **asked}
        merged["max_new_tokens"] = min(merged["max_new_tokens"], settings.max_new_tokens_ceiling)
        try:
            return G.Decoding(**merged)
        except ValueError as err:
            raise ServeError(422, str(err)) from err

    def prompt_for(question, sentiment, decoding: G.Decoding) -> tuple[list[int], str]:
        if not isinstance(question, str) or not question.strip():
            raise ServeError(422, "question is empty")
        if len(question) > settings.max_question_chars:
            raise ServeError(422, f"question is longer than {settings.max_question_chars} characters")
        try:
            sent = framing.normalize_sentiment("0" if sentiment is None else sentiment)
            return G.build_prompts(model.kogpt2, tokenizer, [question], [sent], decoding)[0], sent
        except ValueError as err:
            raise ServeError(422, str(err)) from err

    async def answer(prompt, decoding) -> list[int]:
        try:
            return await asyncio.wait_for(batcher.submit(prompt, decoding), settings.timeout_s)
        except asyncio.TimeoutError as err:
            raise ServeError(504, f"no reply within {settings.timeout_s:g} s; try again", "timeout") from err

    @app.get("/health")
    async def health():
        return {"status": "ok", "base_model": model.hparams.get("base_model"), "parameters": n_params,
                "device": device, "engine": "lean-gpt2" if G.LeanGPT2.supports(model.kogpt2) else "generate",
                "micro_batching": {"max_batch": settings.max_batch, "wait_ms": settings.batch_wait_ms,
                                   "batches": batcher.batches, "requests": batcher.requests},
                "limits": {"max_body_bytes": settings.max_body_bytes,
                           "max_question_chars": settings.max_question_chars,
                           "max_new_tokens": settings.max_new_tokens_ceiling, "timeout_s": settings.timeout_s}}

    @app.post("/chat")
    async def chat(body: ChatRequest):
        start = time.perf_counter()
        options = body.model_dump(exclude={"question", "sentiment"})
        decoding = decoding_for(options)
        prompt, sent = prompt_for(body.question, body.sentiment, decoding)
        ids = await answer(prompt, decoding)
        return {"answer": G.reply_text(tokenizer, ids, eos_id), "sentiment": int(sent),
                "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

    @app.post("/v1/chat/completions")
    async def completions(body: ChatCompletionRequest):
        question = next((_text(m.content) for m in reversed(body.messages) if m.role == "user"), None)
        if question is None:
            raise ServeError(422, "messages: no user message to answer")
        options = {"max_new_tokens": body.max_completion_tokens or body.max_tokens, "seed": body.seed}
        if body.temperature is not None:  # OpenAI's convention: temperature 0 is greedy
            options.update(do_sample=body.temperature > 0, temperature=body.temperature or None)
        if body.top_p is not None and body.top_p < 1:
            options.update(do_sample=True, top_p=body.top_p)
        decoding = decoding_for(options)
        prompt, sent = prompt_for(question, body.sentiment, decoding)
        cid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body.model or "kogpt2-chatbot"
        if body.stream:
            return StreamingResponse(_sse(cid, created, name, prompt, decoding), media_type="text/event-stream")
        ids = await answer(prompt, decoding)
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": G.reply_text(tokenizer, ids, eos_id)},
                         "finish_reason": "stop" if eos_id in ids else "length"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                      "total_tokens": len(prompt) + len(ids)},
            "sentiment": int(sent),
        }

    async def _sse(cid, created, name, prompt, decoding):
        def chunk(delta, finish=None):
            payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        count = {"tokens": 0}

        def work():  # on the model thread; hands pieces to the event loop as they come
            text = G.TextPieces(tokenizer)
            try:
                for token in G.stream_tokens(model.kogpt2, tokenizer, prompt, decoding):
                    count["tokens"] += 1
                    piece = text.add(token)
                    if piece:
                        loop.call_soon_threadsafe(pieces.put_nowait, piece)
                tail = text.finish()
                if tail:
                    loop.call_soon_threadsafe(pieces.put_nowait, tail)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        job = asyncio.ensure_future(batcher.run(work))
        try:
            while (piece := await asyncio.wait_for(pieces.get(), settings.timeout_s)) is not None:
                yield chunk({"content": piece})
            await job
        except asyncio.TimeoutError:
            yield f"data: {json.dumps({'error': {'message': 'timeout', 'type': 'timeout'}})}\n\n"
            return
        except Exception as err:  # noqa: BLE001 - the stream has started; report inside it
            yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
            return
        yield chunk({}, "length" if count["tokens"] >= decoding.max_new_tokens else "stop")
        yield "data: [DONE]\n\n"

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (Path(__file__).with_name("web") / "index.html").read_text(encoding="utf-8")

    app.state.batcher = batcher
    return app


def _text(content) -> str:
    """OpenAI message content: a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def serve(model, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None):
    import uvicorn

    uvicorn.run(create_app(model, settings), host=host, port=port, log_level="info")
