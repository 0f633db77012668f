"""The app: errors, the guard (Host, API key, body size), and the routes, each a small function of its own."""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError

from .. import grounding as gr
from ..decoding import DecodingError, option_names
from ..framing import Turn, messages_to_turns
from ..sentiment import check as check_sentiment
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
    started: int = field(default_factory=lambda: int(time.time()))
    streams: dict = field(default_factory=lambda: {"open": 0, "cancelled": 0})

    @property
    def history_turns(self) -> int:
        """Earlier turns the web page keeps in its conversation (a client's own history is used as given)."""
        chosen = self.settings.history_turns
        return self.bot.history_turns if chosen is None else chosen

    @property
    def max_new_tokens(self) -> int:
        """The advertised reply cap: the setting, but never more than half the model's context,
        so the prompt always keeps room (a cap equal to the context leaves none)."""
        return min(self.settings.max_new_tokens_ceiling, self.bot.context_size // 2)


def build_app(bot, settings):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    ctx = Context(bot, settings, Batcher(bot, settings.max_batch, settings.batch_wait_ms))

    @asynccontextmanager
    async def lifespan(app):
        await ctx.batcher.start()
        yield
        await ctx.batcher.stop()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN; /openapi.json stays.
    app = FastAPI(title="KoGPT2 chatbot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ctx, app.state.batcher = ctx, ctx.batcher
    _install_handlers(app)
    app.add_middleware(Guard, ctx=ctx)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", model_card, methods=["GET"])
    app.add_api_route("/chat", chat, methods=["POST"], openapi_extra=_body_doc(ChatRequest))
    app.add_api_route("/v1/chat/completions", completions, methods=["POST"],
                      openapi_extra=_body_doc(ChatCompletionRequest))
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    return app


# --- errors and guards --------------------------------------------------------------------

def error_response(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


class Guard:
    """Before any route: the Host check (DNS rebinding), the API key, a declared body size.

    Plain ASGI, not an `@app.middleware`: that one runs streamed responses through a task of its
    own, which hides a client's disconnect from the stream it should stop."""

    def __init__(self, app, ctx: Context):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (refusal := self.refusal(scope)):
            return await error_response(*refusal)(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, scope):
        from starlette.datastructures import Headers

        headers, s = Headers(scope=scope), self.ctx.settings
        hosts, host = s.hosts(), host_name(headers.get("host", ""))
        if hosts is not None and host not in hosts:
            return (400, f"Host {host or '(none)'!r} is not this server's name ({', '.join(sorted(hosts))}); "
                         f"start the server with --allowed-hosts {host or 'NAME'} to allow it")
        if s.api_key and scope["path"] not in PUBLIC_PATHS:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {s.api_key}".encode()):
                what = "wrong" if given else "missing"
                return 401, f"{what} API key: send the header 'Authorization: Bearer KEY'", "authentication_error"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > s.max_body_bytes):
            return 413, f"request body over {s.max_body_bytes} bytes"
        return None


def host_name(header: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def _install_handlers(app):
    from starlette.exceptions import HTTPException

    @app.exception_handler(ServeError)
    async def serve_error(request, exc: ServeError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404, 405 in the same shape
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):  # a bug: still the JSON shape clients parse
        return error_response(500, f"internal error ({exc.__class__.__name__}); see the server's log", "server_error")


async def read_body(request) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (a chunked body has no
    Content-Length to check up front, and must not be read whole first)."""
    limit, raw = request.app.state.ctx.settings.max_body_bytes, bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ServeError(413, f"request body over {limit} bytes")
    return bytes(raw)


async def parse_body(request, schema):
    """The JSON body as `schema`, whatever Content-Type the client sent (curl -d sends a form's)."""
    raw = await read_body(request)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ServeError(400, f"request body is not UTF-8 text (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise ServeError(400, f"request body is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if (where := lone_surrogate(data)) is not None:
        raise ServeError(400, f"{where}: text with a lone surrogate escape (\\ud800-\\udfff alone is not a "
                              "character); send UTF-8 text or a \\u escape of a whole pair")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ServeError(422, "; ".join(_problem(e) for e in err.errors())) from err


def _problem(error: dict) -> str:
    """One field's problem: where, then pydantic's message, or our own check's words as they were
    raised (without the "Value error, " pydantic puts before them; they name the field already)."""
    where = ".".join(str(p) for p in error["loc"]) or "body"
    raised = error.get("ctx", {}).get("error") if error.get("type") == "value_error" else None
    text = str(raised) if isinstance(raised, ValueError) else error["msg"]
    return text if text.startswith(where) else f"{where}: {text}"


def lone_surrogate(value, where: str = "body") -> str | None:
    """Where in parsed JSON a string holds half a surrogate pair (JSON allows it; text cannot)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
    elif isinstance(value, dict):
        for key, item in value.items():
            if (found := lone_surrogate(key, where) or lone_surrogate(item, f"{where}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            if (found := lone_surrogate(item, f"{where}[{n}]")) is not None:
                return found
    return None


def _body_doc(schema) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


# --- building a reply ---------------------------------------------------------------------

def decoding_for(ctx: Context, options: dict):
    asked = {k: v for k, v in options.items() if v is not None}
    try:
        dec = ctx.bot.decoding_for(**asked)  # every value checked where decoding declares it
    except DecodingError as err:
        raise ServeError(422, str(err)) from err
    ceiling = ctx.max_new_tokens
    if "max_new_tokens" in asked and dec.max_new_tokens > ceiling:
        raise ServeError(422, f"max_new_tokens must be <= {ceiling} (this model sees {ctx.bot.context_size} tokens "
                              "at once; the prompt keeps at least half)")
    return dec if dec.max_new_tokens <= ceiling else dec.replace(max_new_tokens=ceiling)


def prompt_for(ctx: Context, question, sentiment, history, decoding):
    """The request framed through the chatbot API (question, sentiment and history checked and
    resolved once there): a Prompt, which the Reply generated from it carries on."""
    if isinstance(question, str) and len(question) > ctx.settings.max_question_chars:
        raise ServeError(422, f"question is longer than {ctx.settings.max_question_chars} characters")
    try:
        return ctx.bot.prepare(question, sentiment, history, decoding)
    except ValueError as err:
        raise ServeError(422, str(err)) from err


def grounding_for(ctx: Context, mode) -> str:
    """The request's grounding mode (None: the server's), or the bot's one line on why it cannot
    answer in it (no index in the checkpoint, and how to add one)."""
    try:
        return ctx.bot.check_grounding(mode)
    except ValueError as err:
        raise ServeError(400, str(err)) from err


def facts(reply) -> dict:
    """What a response says about how its reply was made (a Prompt or the Reply made from it)."""
    return {"sentiment": int(reply.sentiment), "sentiment_source": reply.sentiment_source,
            "history_used": len(reply.history)}


async def answer(ctx: Context, prompt, decoding, grounding: str):
    try:
        return await asyncio.wait_for(ctx.batcher.submit(prompt, decoding, grounding), ctx.settings.timeout_s)
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
            "grounding": {"default": ctx.bot.grounding, "modes": list(ctx.bot.grounding_modes),
                          "index": None if ctx.bot.index is None else len(ctx.bot.index)},
            "auth": bool(s.api_key),
            "micro_batching": {"max_batch": s.max_batch, "wait_ms": s.batch_wait_ms,
                               "batches": ctx.batcher.batches, "requests": ctx.batcher.requests},
            "limits": {"max_body_bytes": s.max_body_bytes, "max_question_chars": s.max_question_chars,
                       "max_new_tokens": ctx.max_new_tokens, "timeout_s": s.timeout_s},
            "streams": dict(ctx.streams)}


async def models(request: Request):
    """OpenAI's model list (what SDKs and chat front ends ask first): this bot, by its name."""
    return {"object": "list", "data": [_card(request.app.state.ctx)]}


async def model_card(request: Request):
    ctx: Context = request.app.state.ctx
    if request.path_params["model"] != ctx.settings.model_name:
        raise ServeError(404, f"The model {request.path_params['model']!r} does not exist; this server has "
                              f"{ctx.settings.model_name!r}", "invalid_request_error")
    return _card(ctx)


def _card(ctx: Context) -> dict:
    return {"id": ctx.settings.model_name, "object": "model", "created": ctx.started, "owned_by": "kogpt2-chatbot",
            "max_model_len": ctx.bot.context_size}


async def chat(request: Request):
    ctx: Context = request.app.state.ctx
    body = await parse_body(request, ChatRequest)
    start = time.perf_counter()
    grounding = grounding_for(ctx, body.grounding)
    decoding = decoding_for(ctx, body.model_dump(include=set(option_names())))
    history = [Turn(t.question, t.answer, t.sentiment) for t in body.history]
    reply = await answer(ctx, prompt_for(ctx, body.question, body.sentiment, history, decoding), decoding, grounding)
    return {"answer": reply.text, "source": reply.source.to_json(), **facts(reply),
            "latency_ms": round((time.perf_counter() - start) * 1000, 2)}


def conversation_of(messages, sentiment=None) -> tuple[Turn, list[Turn]]:
    """(the question to answer, the turns before it) from OpenAI messages, read as training data
    is read (framing.messages_to_turns: system messages skipped, the last message the user's)."""
    try:
        talk = messages_to_turns([m.model_dump() for m in messages], sentiment)
    except ValueError as err:
        raise ServeError(422, f"messages: {err}") from err
    if talk.question is None:
        raise ServeError(422, "messages: no user message to answer (the last message must be the user's)")
    return talk.question, talk.turns


def request_sentiment(body):
    """The conversation's sentiment: the body's `sentiment`, else its chat template's (`chat_template_kwargs`,
    as llama-server and vLLM take it); a message's own `sentiment` still wins for that message."""
    theirs = (body.chat_template_kwargs or {}).get("sentiment")
    if body.sentiment is None or theirs is None:
        return theirs if body.sentiment is None else body.sentiment
    try:
        same = check_sentiment(body.sentiment) == check_sentiment(theirs)
    except ValueError as err:
        raise ServeError(422, str(err)) from err
    if not same:
        raise ServeError(422, f"sentiment {body.sentiment!r} and chat_template_kwargs.sentiment {theirs!r} "
                              "disagree; give one")
    return body.sentiment


async def completions(request: Request):
    ctx: Context = request.app.state.ctx
    body = await parse_body(request, ChatCompletionRequest)
    question, history = conversation_of(body.messages, request_sentiment(body))
    grounding = grounding_for(ctx, body.grounding)
    stops = stop_list(body.stop)
    options = {"max_new_tokens": body.max_completion_tokens or body.max_tokens, "seed": body.seed}
    if body.temperature is not None:  # OpenAI's convention: temperature 0 is greedy
        options.update(do_sample=body.temperature > 0, temperature=body.temperature or None)
    if body.top_p is not None and body.top_p < 1:
        options.update(do_sample=True, top_p=body.top_p)
    decoding = decoding_for(ctx, options)
    prompt = prompt_for(ctx, question.question, question.sentiment, history, decoding)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": ctx.settings.model_name}
    if body.stream:
        from fastapi.responses import StreamingResponse

        return StreamingResponse(_sse(ctx, meta, prompt, decoding, grounding, stops), media_type="text/event-stream")
    reply = await answer(ctx, prompt, decoding, grounding)
    text, stopped = cut_at_stop(reply.text, stops)
    return {
        **meta, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop" if reply.finished or stopped else "length",
                     "source": reply.source.to_json()}],  # ours, beside OpenAI's fields
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                  "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        **facts(reply),
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


async def _sse(ctx: Context, meta, prompt, decoding, grounding, stops):
    """The reply as OpenAI's server-sent events. A client that leaves stops the generation
    before its next decoding step; a failure ends the stream with an error event, a
    finish_reason ("error") and [DONE], as a success ends with its finish_reason, the reply's
    `source` beside it, and [DONE]. A grounded reply is chosen whole, so it comes in one piece."""
    def chunk(delta, finish=None, **more):
        payload = {**meta, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **more}]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    count, filtered, stop = {}, StopStream(stops), threading.Event()
    pieces = _stream_on_model_thread(ctx, (prompt, decoding, grounding), count, filtered, stop)
    ctx.streams["open"] += 1
    error = None
    try:
        while (piece := await asyncio.wait_for(pieces.get(), ctx.settings.timeout_s)) is not None:
            if isinstance(piece, BaseException):
                error = {"message": f"generation failed ({piece.__class__.__name__}: {piece})", "type": "server_error"}
            elif piece:
                yield chunk({"content": piece})
    except asyncio.TimeoutError:
        error = {"message": f"no reply within {ctx.settings.timeout_s:g} s; try again", "type": "timeout"}
    except BaseException:  # the client left (cancelled, or the generator closed)
        ctx.streams["cancelled"] += 1
        raise
    finally:
        stop.set()
        ctx.streams["open"] -= 1
    if error is not None:
        yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
        yield chunk({}, "error")
    else:
        finished = count.get("finished", count.get("tokens", 0) < decoding.max_new_tokens)
        yield chunk({}, "stop" if filtered.stopped or finished else "length",
                    source=count.get("source", gr.GENERATED).to_json())
    yield "data: [DONE]\n\n"


def _stream_on_model_thread(ctx: Context, request, count, filtered, stop) -> asyncio.Queue:
    """A queue that receives the pieces of the reply to `request` (prompt, decoding, grounding),
    then a failure if any, then None; the work runs on the model thread and gives up as soon as
    `stop` is set (before it starts, if queued)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def put(item):
        if not loop.is_closed():
            loop.call_soon_threadsafe(pieces.put_nowait, item)

    def work():
        try:
            if stop.is_set():
                return
            for piece in _pieces(ctx.bot, *request, count, stop):
                put(filtered.add(piece))
                if filtered.stopped or stop.is_set():
                    break
            put(filtered.finish())
        except Exception as err:  # noqa: BLE001 - reported inside the stream, which has started
            put(err)
        finally:
            put(None)

    asyncio.ensure_future(ctx.batcher.run(work))
    return pieces


def _pieces(bot, prompt, decoding, grounding, count, stop):
    """The reply's text as it is made; a grounded one whole, its facts in `count`."""
    if grounding == gr.GENERATE:
        yield from bot.stream_prompt(prompt, decoding, count, stop=stop)
        return
    reply = bot.complete_grounded([prompt], decoding, 1, grounding)[0]
    count.update(tokens=reply.completion_tokens, finished=reply.finished, source=reply.source)
    yield reply.text


async def page(request: Request):
    from fastapi.responses import HTMLResponse

    return HTMLResponse((Path(__file__).resolve().parents[1] / "web" / "index.html").read_text(encoding="utf-8"))

