"""HTTP serving: a JSON API, an OpenAI-compatible route, and a one-page web chat (FastAPI).

    python -m kogpt2_chatbot serve --model_params model_chp/model_-last.ckpt   # http://127.0.0.1:8000

Routes: `POST /chat` (question, sentiment, history, decoding options), `POST
/v1/chat/completions` (OpenAI's shape, streaming included, the whole `messages` list as the
conversation), `GET /v1/models` (OpenAI's model list: this bot), `GET /health`, and `GET /` (the
web page). A reply request may name its `grounding` (a mode of grounding.MODES; default: the
server's, `serve --grounding`, else the checkpoint's), and each reply says where it came from
(`source`: grounding.Source.to_json(), beside OpenAI's fields in a choice and in a stream's last
chunk); `/health` lists the modes this bot can answer in. Every error, malformed bodies included,
is OpenAI's JSON error object. With an API key
(`--api-key` or KOGPT2_CHATBOT_API_KEY) every route but `/health` and the page needs
`Authorization: Bearer KEY`. A request whose Host header is not this server's name (the bound
host or a loopback name, plus --allowed-hosts) is refused, so a web page the user visits cannot
reach the server through a DNS name of its own (DNS rebinding). /docs and /redoc are off: they
load their scripts from a CDN; the schema is at /openapi.json.

Every setting is declared once, in `ServeSettings` (default, bounds, help); the `serve` flags are
built from it and validated by the same check as the Python constructor.
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from dataclasses import dataclass, field, fields, replace

from .. import options
from ..framing import check_history_turns
from .batching import Batcher  # noqa: F401  (tests and benchmarks reach it here)

API_KEY_ENV = "KOGPT2_CHATBOT_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _setting(default, help: str, low=None, high=None, low_open: bool = False, flag: str | None = None):
    """A setting with its bounds (options.check); flag "" means Python only."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open,
                                            "flag": flag})


@dataclass
class ServeSettings:
    host: str = _setting("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    port: int = _setting(8000, "TCP port", 1, 65535)
    max_batch: int = _setting(64, "micro-batch size; 1 turns it off", 1)
    batch_wait_ms: float = _setting(5.0, "how long a lone request waits for company, in ms", 0, 1000)
    max_body_bytes: int = _setting(64 * 1024, "largest request body", 1, flag="")
    max_question_chars: int = _setting(1000, "longest question, in characters", 1)
    max_new_tokens_ceiling: int = _setting(256, "largest max_new_tokens a request may ask (at most half "
                                                "the model's context)", 1, flag="")
    timeout_s: float = _setting(60.0, "seconds per request, queueing included", 0, 86400, low_open=True,
                                flag="--timeout")
    history_turns: int | None = _setting(None, "earlier turns the web page keeps; None: the checkpoint's",
                                         flag="")
    api_key: str | None = _setting(None, "require 'Authorization: Bearer KEY' on every route but /health "
                                         f"and the page (default: the {API_KEY_ENV} environment variable, "
                                         "else no key)")
    allowed_hosts: tuple = _setting((), "other names clients may reach this server by (the Host header), "
                                        "comma-separated; * allows any (default: the bound host and "
                                        "127.0.0.1, localhost, ::1)")
    model_name: str = _setting("kogpt2-chatbot", "the model id /v1/models lists and replies carry")

    def __post_init__(self):
        self.allowed_hosts = tuple(self.allowed_hosts)
        for f in fields(self):
            check_setting(f, getattr(self, f.name))

    def hosts(self) -> set[str] | None:
        """The Host names a request may carry (lower case, no port); None: any."""
        if "*" in self.allowed_hosts:
            return None
        return {h.lower().strip("[]") for h in (*LOOPBACK, self.host, *self.allowed_hosts)}


def check_setting(f, value):
    """ValueError naming the setting unless `value` is one of its valid values."""
    if f.name in ("host", "model_name") and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{f.name} must be a non-empty text; got {value!r}")
    elif f.name == "api_key" and value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"api_key is empty; give a key, or leave it out to use {API_KEY_ENV} (or no key)")
    elif f.name == "history_turns" and value is not None:
        check_history_turns(value)
    elif f.name == "allowed_hosts" and any(not isinstance(h, str) or not h.strip() for h in value):
        raise ValueError(f"allowed_hosts must be host names; got {list(value)!r}")
    elif f.metadata["low"] is not None:
        options.check(f, value)


def _flag(f) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def _text_type(f):
    def parse(text: str):
        value = tuple(h.strip() for h in text.split(",")) if f.name == "allowed_hosts" else text
        try:
            check_setting(f, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    return parse


def add_serve_args(p: argparse.ArgumentParser):
    """The `serve` flags, one per setting, each checked as it is parsed."""
    g = p.add_argument_group("serving")
    for f in fields(ServeSettings):
        if f.metadata["flag"] == "":
            continue
        kind = _text_type(f) if f.metadata["low"] is None else options.cli_type(f, check=check_setting)
        default = "" if f.default in (None, ()) or f.name == "host" else f" (default {f.default})"
        g.add_argument(_flag(f), dest=f.name, type=kind, default=f.default, help=f.metadata["help"] + default,
                       metavar=_flag(f)[2:].upper().replace("-", "_"))


def settings_from_args(args, **more) -> ServeSettings:
    flagged = [f.name for f in fields(ServeSettings) if f.metadata["flag"] != ""]
    return ServeSettings(**{name: getattr(args, name) for name in flagged}, **more)


def create_app(bot, settings: ServeSettings | None = None):
    """The FastAPI app around `bot` (a Chatbot, or a KoGPT2Chat module)."""
    from .app import build_app

    from ..api import as_chatbot

    settings = settings or ServeSettings()
    if settings.api_key is None:
        settings.api_key = os.environ.get(API_KEY_ENV) or None
    return build_app(as_chatbot(bot), settings)


# What a user can do about a port this machine will not give (a name that does not resolve says why itself).
_BIND_HINTS = {errno.EADDRINUSE: "another program is using the port; pass --port N",
               errno.EADDRNOTAVAIL: "that address is not this machine's; use 127.0.0.1, or 0.0.0.0 for every address",
               errno.EACCES: "ports below 1024 need root; pass --port 8000"}


def bind(settings: ServeSettings) -> socket.socket:
    """The listening socket for the settings' host and port, as uvicorn would bind it; a one-line
    ValueError when this machine cannot give it. The CLI binds before it loads the model."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as err:
        sock.close()
        reason = err.strerror or str(err)
        hint = _BIND_HINTS.get(err.errno)
        raise ValueError(f"cannot serve on {settings.host} port {settings.port}: {reason}"
                         + (f" ({hint})" if hint else "")) from None
    sock.set_inheritable(True)
    return sock


def serve(bot, host: str | None = None, port: int | None = None, settings: ServeSettings | None = None,
          sock: socket.socket | None = None):
    """Serve `bot` with uvicorn until Ctrl+C; `host`/`port` (when given) override the settings'.
    `sock`: a socket bind() made for these settings (default: bound here)."""
    import uvicorn

    settings = settings or ServeSettings()
    settings = replace(settings, **{k: v for k, v in (("host", host), ("port", port)) if v is not None})
    app = create_app(bot, settings)
    if settings.host not in LOOPBACK and not settings.api_key:
        print(f"warning: serving on {settings.host} without an API key: anyone who can reach this machine can use "
              f"the bot; pass --api-key KEY (or set {API_KEY_ENV})", file=sys.stderr)
    if settings.host in ("0.0.0.0", "::") and not settings.allowed_hosts:
        print("note: only requests addressed to 127.0.0.1, localhost or ::1 are answered; pass the names clients "
              "use, e.g. --allowed-hosts 192.168.0.10,bot.example.com (or * for any)", file=sys.stderr)
    sock = sock or bind(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info"))
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"serving on http://{shown}:{settings.port} (Ctrl+C stops)", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # as uvicorn.run: the server has shut down
        pass
    finally:
        sock.close()
    if not server.started:  # uvicorn has said why (the app's startup failed)
        sys.exit(3)
