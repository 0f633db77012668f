"""HTTP serving: a JSON API, an OpenAI-compatible route, and a one-page web chat (FastAPI).

    python -m kogpt2_chatbot serve --model_params model_chp/model_-last.ckpt   # http://127.0.0.1:8000

Routes: `POST /chat` (question, sentiment, history, decoding options), `POST
/v1/chat/completions` (OpenAI's shape, streaming included, the whole `messages` list as the
conversation), `GET /health`, and `GET /` (the web page). Every error, malformed bodies included,
is OpenAI's JSON error object. With an API key (`--api-key` or KOGPT2_CHATBOT_API_KEY) every
route but `/health` and the page needs `Authorization: Bearer KEY`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .batching import Batcher  # noqa: F401  (tests and benchmarks reach it here)

API_KEY_ENV = "KOGPT2_CHATBOT_API_KEY"


@dataclass
class ServeSettings:
    max_batch: int = 64              # 1 turns micro-batching off
    batch_wait_ms: float = 5.0       # how long a lone request waits for company
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 1000
    max_new_tokens_ceiling: int = 256
    timeout_s: float = 60.0          # per request, queueing included
    history_turns: int | None = None  # earlier turns a reply sees; None: the bot's (its checkpoint's)
    api_key: str | None = None       # None: KOGPT2_CHATBOT_API_KEY when set, else no key needed


def create_app(bot, settings: ServeSettings | None = None):
    """The FastAPI app around `bot` (a Chatbot, or a KoGPT2Chat module)."""
    from .app import build_app

    from ..api import as_chatbot

    settings = settings or ServeSettings()
    if settings.api_key is None:
        settings.api_key = os.environ.get(API_KEY_ENV) or None
    return build_app(as_chatbot(bot), settings)


def serve(bot, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None):
    import uvicorn

    app = create_app(bot, settings)
    if host not in ("127.0.0.1", "localhost", "::1") and not app.state.ctx.settings.api_key:
        print(f"warning: serving on {host} without an API key: anyone who can reach this machine can use the "
              f"bot; pass --api-key KEY (or set {API_KEY_ENV})", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")
