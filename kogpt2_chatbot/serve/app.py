"""The app: errors, the API key check, and the routes, each a small function of its own."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError

from ..decoding import DecodingError, option_names
from .batching import Batcher
from .schemas import ChatCompletionRequest, ChatRequest

PUBLIC_PATHS = ("/health", "/")  # reachable without the API key: a probe and the page itself
MAX_STOP = 4


class ServeError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Context:
    bot: object
    settings: object
    batcher: Batcher

    @property
    def history_turns(self) -> int:
        chosen = self.settings.history_turns
        return self.bot.history_turns if chosen is None else chosen


def build_app(bot, settings):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    ctx = Context(bot, settings, Batcher(bot, settings.max_batch, settings.batch_wait_ms))
    bot.model.eval()

    @asynccontextmanager
    async def lifespan(app):
        await ctx.batcher.start()
        yield
        await ctx.batcher.stop()

    app = FastAPI(title="KoGPT2 chatbot", lifespan=lifespan)
    app.state.ctx, app.state.batcher = ctx, ctx.batcher
    _install_guards(app, ctx)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/chat", chat, methods=["POST"], openapi_extra=_body_doc(ChatRequest))
    app.add_api_route("/v1/chat/completions", completions, methods=["POST"],
                      openapi_extra=_body_doc(ChatCompletionRequest))
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    return app


# --- errors and guards --------------------------------------------------------------------

def error_response(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def _install_guards(app, ctx: Context):
    from starlette.exceptions import HTTPException

    @app.middleware("http")
    async def guard(request: Request, call_next):
        key = ctx.settings.api_key
        if key and request.url.path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                what = "wrong" if given else "missing"
                return error_response(401, f"{what} API key: send the header 'Authorization: Bearer KEY'",
                                      "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > ctx.settings.max_body_bytes):
            return error_response(413, f"request body over {ctx.settings.max_body_bytes} bytes")
        return await call_next(request)

    @app.exception_handler(ServeError)
    async def serve_error(request, exc: ServeError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405 in the same shape
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")


async def parse_body(request, schema):
    """The JSON body as `schema`, whatever Content-Type the client sent (curl -d sends a form's)."""
    raw = await request.body()
    if len(raw) > request.app.state.ctx.settings.max_body_bytes:
        raise ServeError(413, f"request body over {request.app.state.ctx.settings.max_body_bytes} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ServeError(400, f"request body is not UTF-8 text (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ServeError(400, f"request body is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
        raise ServeError(422, problems) from err


def _body_doc(schema) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


# --- building a reply ---------------------------------------------------------------------

def decoding_for(ctx: Context, options: dict):
    asked = {k: v for k, v in options.items() if v is not None}
    ceiling = ctx.settings.max_new_tokens_ceiling
    if asked.get("max_new_tokens", 0) > ceiling:
        raise ServeError(422, f"max_new_tokens must be <= {ceiling}")
    try:
        dec = ctx.bot.decoding_for(**asked)
    except DecodingError as err:
        raise ServeError(422, str(err)) from err
    return dec if dec.max_new_tokens <= ceiling else dec.replace(max_new_tokens=ceiling)


def prompt_for(ctx: Context, question, sentiment, history, decoding) -> tuple[list[int], dict, int]:
    """(prompt ids, {"sentiment": used, "sentiment_source": given|auto|default}, earlier turns used)."""
    if not isinstance(question, str) or not question.strip():
        raise ServeError(422, "question is empty")
    if len(question) > ctx.settings.max_question_chars:
        raise ServeError(422, f"question is longer than {ctx.settings.max_question_chars} characters")
    keep = ctx.history_turns
    history = history[len(history) - keep :] if keep else []
    try:
        asked = ctx.bot.check_sentiment(ctx.bot.sentiment if sentiment is None else sentiment)
        sent = ctx.bot.sentiment_of(asked, question)
        source = "auto" if asked == "auto" else ("default" if sentiment is None else "given")
        prompt = ctx.bot.prompt(question, sent, history, decoding)
        return prompt, {"sentiment": int(sent), "sentiment_source": source}, len(history)
    except ValueError as err:
        raise ServeError(422, str(err)) from err


async def answer(ctx: Context, prompt, decoding):
    try:
        return await asyncio.wait_for(ctx.batcher.submit(prompt, decoding), ctx.settings.timeout_s)
    except asyncio.TimeoutError as err:
        raise ServeError(504, f"no reply within {ctx.settings.timeout_s:g} s; try again", "timeout") from err


# --- routes -------------------------------------------------------------------------------

async def health(request: Request):
    ctx: Context = request.app.state.ctx
    s = ctx.settings
    return {"status": "ok", "base_model": ctx.bot.base_model, "parameters": ctx.bot.parameters,
            "device": str(ctx.bot.device), "engine": ctx.bot.engine_name, "history_turns": ctx.history_turns,
            "sentiment": {"default": ctx.bot.sentiment, "classifier": ctx.bot.classifier is not None,
                          "accuracy": getattr(ctx.bot.classifier, "accuracy", None)},
            "auth": bool(s.api_key),
            "micro_batching": {"max_batch": s.max_batch, "wait_ms": s.batch_wait_ms,
                               "batches": ctx.batcher.batches, "requests": ctx.batcher.requests},
            "limits": {"max_body_bytes": s.max_body_bytes, "max_question_chars": s.max_question_chars,
                       "max_new_tokens": s.max_new_tokens_ceiling, "timeout_s": s.timeout_s}}


async def chat(request: Request):
    ctx: Context = request.app.state.ctx
    body = await parse_body(request, ChatRequest)
    start = time.perf_counter()
    decoding = decoding_for(ctx, body.model_dump(include=set(option_names())))
    history = [(t.question, t.answer, t.sentiment) for t in body.history]
    prompt, sent, used = prompt_for(ctx, body.question, body.sentiment, history, decoding)
    reply = await answer(ctx, prompt, decoding)
    return {"answer": reply.text, **sent, "history_used": used,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


def conversation_of(messages) -> tuple[str, object, list]:
    """(question, its sentiment or None, earlier turns) from OpenAI messages; system ones skipped."""
    turns, question, sentiment = [], None, None
    for n, m in enumerate(messages, 1):
        content = _text(m.content)
        extra = m.model_extra or {}
        if m.role == "system":
            continue
        if m.role == "user":
            if question is not None:
                raise ServeError(422, f"messages: {n - 1} and {n} are both user messages; join them into one")
            question, sentiment = content, extra.get("sentiment")
        elif m.role == "assistant":
            if question is not None:  # an assistant greeting before any user message is skipped
                turns.append((question, content, sentiment))
            question = None
        else:
            raise ServeError(422, f"messages: message {n} has role {m.role!r}; use system, user or assistant")
    if question is None:
        raise ServeError(422, "messages: no user message to answer (the last message must be the user's)")
    return question, sentiment, turns


async def completions(request: Request):
    ctx: Context = request.app.state.ctx
    body = await parse_body(request, ChatCompletionRequest)
    question, message_sentiment, history = conversation_of(body.messages)
    stops = stop_list(body.stop)
    options = {"max_new_tokens": body.max_completion_tokens or body.max_tokens, "seed": body.seed}
    if body.temperature is not None:  # OpenAI's convention: temperature 0 is greedy
        options.update(do_sample=body.temperature > 0, temperature=body.temperature or None)
    if body.top_p is not None and body.top_p < 1:
        options.update(do_sample=True, top_p=body.top_p)
    decoding = decoding_for(ctx, options)
    sentiment = message_sentiment if message_sentiment is not None else body.sentiment
    prompt, sent, used = prompt_for(ctx, question, sentiment, history, decoding)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": body.model or "kogpt2-chatbot"}
    if body.stream:
        from fastapi.responses import StreamingResponse

        return StreamingResponse(_sse(ctx, meta, prompt, decoding, stops), media_type="text/event-stream")
    reply = await answer(ctx, prompt, decoding)
    text, stopped = cut_at_stop(reply.text, stops)
    return {
        **meta, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop" if reply.finished or stopped else "length"}],
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                  "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        **sent, "history_used": used,
    }


def stop_list(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise ServeError(422, f"stop: at most {MAX_STOP} sequences; got {len(stops)}")
    if any(not s for s in stops):
        raise ServeError(422, "stop: sequences must not be empty")
    return stops


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence (which is not returned, as OpenAI does)."""
    cuts = [text.find(s) for s in stops if s in text]
    return (text[: min(cuts)].rstrip(), True) if cuts else (text, False)


class StopStream:
    """Streamed pieces with OpenAI's `stop`: text that could start a stop sequence is held back."""

    def __init__(self, stops: list[str]):
        self.stops, self.sent, self.text, self.stopped = stops, 0, "", False

    def add(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut, self.stopped = cut_at_stop(self.text, self.stops)
        if self.stopped:
            out, self.sent = cut[self.sent :], len(cut)
            return out
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        safe = len(self.text) - hold
        out, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return out

    def finish(self) -> str:
        return "" if self.stopped else self.text[self.sent :]


async def _sse(ctx: Context, meta, prompt, decoding, stops):
    def chunk(delta, finish=None):
        payload = {**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    count: dict = {}
    filtered = StopStream(stops)

    def work():  # on the model thread; hands pieces to the event loop as they come
        try:
            for piece in ctx.bot.stream_prompt(prompt, decoding, count):
                loop.call_soon_threadsafe(pieces.put_nowait, filtered.add(piece))
                if filtered.stopped:
                    break
            loop.call_soon_threadsafe(pieces.put_nowait, filtered.finish())
        finally:
            loop.call_soon_threadsafe(pieces.put_nowait, None)

    job = asyncio.ensure_future(ctx.batcher.run(work))
    try:
        while (piece := await asyncio.wait_for(pieces.get(), ctx.settings.timeout_s)) is not None:
            if piece:
                yield chunk({"content": piece})
        await job
    except asyncio.TimeoutError:
        yield f"data: {json.dumps({'error': {'message': 'timeout', 'type': 'timeout'}})}\n\n"
        return
    except Exception as err:  # noqa: BLE001 - the stream has started; report inside it
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': 'server_error'}})}\n\n"
        return
    length = not filtered.stopped and count.get("tokens", 0) >= decoding.max_new_tokens
    yield chunk({}, "length" if length else "stop")
    yield "data: [DONE]\n\n"


async def page(request: Request):
    from fastapi.responses import HTMLResponse

    return HTMLResponse((Path(__file__).resolve().parents[1] / "web" / "index.html").read_text(encoding="utf-8"))


def _text(content) -> str:
    """OpenAI message content: a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
