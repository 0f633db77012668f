"""The server against bad requests, bad flags, foreign pages and clients that leave.

Every bad request gets OpenAI's JSON error with a 4xx status (never a 500 or a dropped
connection); every bad `serve` flag stops with the flag's error and exit 2 before a model loads;
a stream that fails or times out still ends with a finish_reason and [DONE]; a client that leaves
stops its generation; a body over the limit is refused before it is read whole; a Host header
that is not the server's is refused (DNS rebinding)."""
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from kogpt2_chatbot.__main__ import main
from kogpt2_chatbot.api import Chatbot
from kogpt2_chatbot.serve import ServeSettings, create_app

from conftest import ROOT, USER_ENV

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def bot(trained_dir):
    return Chatbot.load(trained_dir / "model_-last.ckpt")


@pytest.fixture(scope="module")
def client(bot):
    with TestClient(create_app(bot), base_url="http://localhost") as c:
        yield c


def post_raw(client, path, raw: str):
    return client.post(path, content=raw.encode("utf-8"), headers={"content-type": "application/json"})


def assert_json_error(r, status: int, words: str = ""):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] and words in body["error"]["message"], body


# Raw JSON text: Python's json (and so the server) reads NaN, Infinity and lone surrogate escapes.
BAD_CHAT = [
    ('"temperature": NaN, "do_sample": true', 422, "temperature must be a finite number"),
    ('"temperature": Infinity, "do_sample": true', 422, "temperature must be a finite number"),
    ('"temperature": 1e308, "do_sample": true', 422, "temperature must be between"),
    ('"temperature": 1e-300, "do_sample": true', 422, "temperature must be between"),
    ('"repetition_penalty": NaN', 422, "repetition_penalty must be a finite number"),
    ('"top_p": -Infinity, "do_sample": true', 422, "top_p"),
    ('"seed": 18446744073709551616, "do_sample": true', 422, "seed must be between 0 and"),
    ('"seed": 100000000000000000000000000000, "do_sample": true', 422, "seed must be between 0 and"),
    ('"max_new_tokens": 256', 422, "max_new_tokens must be <= 128"),
    ('"max_new_tokens": "5"', 422, "max_new_tokens must be a whole number"),
    ('"max_new_tokens": 5.0', 422, "max_new_tokens must be a whole number"),
    ('"do_sample": "yes"', 422, "do_sample must be true or false"),
    ('"top_k": [1]', 422, "top_k must be a whole number"),
    ('"sentiment": true', 422, "sentiment must be"),
    ('"sentiment": 1.0', 422, "sentiment must be"),
    ('"sentiment": [1]', 422, "sentiment must be"),
]


@pytest.mark.parametrize("extra, status, words", BAD_CHAT)
def test_bad_values_on_chat_are_json_4xx(client, extra, status, words):
    assert_json_error(post_raw(client, "/chat", '{"question": "안녕", %s}' % extra), status, words)


@pytest.mark.parametrize("raw, where", [
    ('{"question": "\\ud800"}', "body.question"),
    ('{"question": "안녕 \\udfff 하세요"}', "body.question"),
    ('{"question": "안녕", "history": [{"question": "\\ud83d", "answer": "네"}]}', "body.history[0].question"),
])
def test_lone_surrogates_are_refused_by_name(client, raw, where):
    assert_json_error(post_raw(client, "/chat", raw), 400, f"{where}: text with a lone surrogate")
    assert client.post("/chat", json={"question": "\U0001f600 안녕"}).status_code == 200  # a whole pair is fine


@pytest.mark.parametrize("extra, words", [
    ('"temperature": NaN', "temperature"),
    ('"temperature": 1e308', "temperature must be between"),
    ('"seed": 18446744073709551616, "temperature": 0.7', "seed must be between"),
    ('"max_tokens": 256', "max_new_tokens must be <= 128"),
    ('"sentiment": true', "sentiment must be"),
    ('"chat_template_kwargs": {"sentiment": true}', "sentiment must be"),
    ('"chat_template_kwargs": "sentiment=1"', "chat_template_kwargs"),
])
def test_bad_values_on_the_openai_route_are_json_4xx(client, extra, words):
    for stream in ("false", "true"):
        raw = '{"messages": [{"role": "user", "content": "안녕"}], "stream": %s, %s}' % (stream, extra)
        assert_json_error(post_raw(client, "/v1/chat/completions", raw), 422, words)
    raw = '{"messages": [{"role": "user", "content": "\\ud800"}]}'
    assert_json_error(post_raw(client, "/v1/chat/completions", raw), 400, "body.messages[0].content")


def test_http_python_and_cli_give_the_same_message(client, bot, capsys):
    for option, value, flag, text in [("temperature", NAN, "--temperature", "nan"),
                                      ("seed", 2**64, "--sample-seed", str(2**64)),
                                      ("repetition_penalty", NAN, "--repetition-penalty", "nan")]:
        with pytest.raises(ValueError) as python_error:
            bot.chat("안녕", do_sample=True, **{option: value})
        raw = '{"question": "안녕", "do_sample": true, "%s": %s}' % (option, "NaN" if value != value else value)
        http = post_raw(client, "/chat", raw).json()["error"]["message"]
        with pytest.raises(SystemExit) as stop:
            main(["ask", "안녕", flag, text, "--model_params", "unused.ckpt"])
        assert stop.value.code == 2
        assert http == str(python_error.value) and http in capsys.readouterr().err


def test_the_advertised_reply_cap_is_the_models_real_room(client, bot):
    limit = client.get("/health").json()["limits"]["max_new_tokens"]
    assert limit == bot.context_size // 2 == 128
    r = client.post("/chat", json={"question": "안녕 " * 300, "max_new_tokens": limit})  # a long question too
    assert r.status_code == 200 and r.json()["answer"]


# --- streams that fail, time out, or lose their client ------------------------------------

def sse_events(client, body):
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


def test_a_stream_that_fails_ends_with_an_error_a_finish_reason_and_done(bot, monkeypatch):
    real = bot.engine.stream

    def failing(prompt, decoding):
        for n, token in enumerate(real(prompt, decoding)):
            if n == 2:
                raise RuntimeError("the GPU fell off")
            yield token

    monkeypatch.setattr(bot.engine, "stream", failing)
    with TestClient(create_app(bot), base_url="http://localhost") as c:
        events = sse_events(c, {"messages": [{"role": "user", "content": "첫 데이트야"}]})
        assert c.get("/health").json()["streams"]["open"] == 0
    assert events[-1] == "[DONE]"
    error, finish = json.loads(events[-3]), json.loads(events[-2])
    assert error["error"]["type"] == "server_error" and "the GPU fell off" in error["error"]["message"]
    assert finish["choices"][0]["finish_reason"] == "error"


def test_a_stream_that_times_out_ends_the_same_way(bot, monkeypatch):
    def slow(prompt, decoding):
        time.sleep(1.0)
        yield from ()

    monkeypatch.setattr(bot.engine, "stream", slow)
    with TestClient(create_app(bot, ServeSettings(timeout_s=0.2)), base_url="http://localhost") as c:
        events = sse_events(c, {"messages": [{"role": "user", "content": "안녕"}]})
    assert events[-1] == "[DONE]" and json.loads(events[-3])["error"]["type"] == "timeout"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "error"


def live_server(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    return server, port


def test_clients_that_leave_stop_their_generation(bot, monkeypatch):
    """30 streams whose reply would never end (an engine that never stops) are dropped after their
    first event; none keeps the model busy, so the next /chat is answered at once."""
    produced = {"tokens": 0}
    token = bot.tokenizer.convert_tokens_to_ids(bot.tokenizer.tokenize("안녕")[0])

    def endless(prompt, decoding):
        while True:
            produced["tokens"] += 1
            time.sleep(0.002)
            yield token

    monkeypatch.setattr(bot.engine, "stream", endless)
    server, port = live_server(create_app(bot, ServeSettings(timeout_s=30)))
    url = f"http://127.0.0.1:{port}"
    try:
        async def drop_one(c):
            body = {"messages": [{"role": "user", "content": "안녕"}], "stream": True}
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        return  # leave after the first event

        async def drop_all():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                await asyncio.gather(*[drop_one(c) for _ in range(30)])

        asyncio.run(drop_all())
        for _ in range(200):
            streams = httpx.get(url + "/health").json()["streams"]
            if streams["open"] == 0:
                break
            time.sleep(0.05)
        assert streams == {"open": 0, "cancelled": 30}
        r = httpx.post(url + "/chat", json={"question": "배고파"}, timeout=30)
        assert r.status_code == 200 and r.json()["answer"] == bot.chat("배고파")
        settled = produced["tokens"]
        time.sleep(0.3)
        assert produced["tokens"] == settled  # nothing still generating for a client that left
    finally:
        server.should_exit = True


def test_a_generate_stream_stops_when_its_reader_goes(trained_dir):
    """The `hf` engine runs generate() on a thread of its own; a reader that leaves ends it too."""
    bot = Chatbot.load(trained_dir / "model_-last.ckpt", engine="hf")
    steps = []

    def never_ending(module, args, output):  # `</s>` banned: the reply would run to its cap of 120
        steps.append(1)
        output.logits[..., bot.eos_id] = float("-inf")
        return output

    hook = bot.model.register_forward_hook(never_ending)
    try:
        pieces = bot.stream_prompt(bot.prompt("안녕"), bot.decoding_for(max_new_tokens=120))
        next(pieces), next(pieces)
        pieces.close()
        seen = len(steps)
        time.sleep(0.5)
        assert len(steps) == seen < 40
    finally:
        hook.remove()


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole(bot):
    app = create_app(bot)
    received, sent = [], []
    chunk = b" " * 16384  # whitespace: valid JSON padding, were it ever parsed

    async def receive():
        received.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(received) < 20_000}  # 330 MB in all

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/chat", "raw_path": b"/chat", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and b"request body over 65536 bytes" in sent[1]["body"]
    assert sum(received) <= 65536 + len(chunk)  # one chunk past the limit, not the whole body


def test_a_live_server_answers_413_to_a_huge_chunked_upload(bot):
    server, port = live_server(create_app(bot))
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            piece, sent = b"%x\r\n%s\r\n" % (65536, b" " * 65536), 0
            s.settimeout(0.05)
            reply = b""
            while sent < 300 * 2**20 and not reply:
                try:
                    s.sendall(piece)
                    sent += 65536
                    reply = s.recv(4096)
                except (socket.timeout, BlockingIOError):
                    continue
                except OSError:  # the server closed the connection after its answer
                    break
            s.settimeout(5)
            while b"\r\n\r\n" not in reply:
                reply += s.recv(4096)
    finally:
        server.should_exit = True
    assert reply.startswith(b"HTTP/1.1 413") and sent < 64 * 2**20


# --- Host check (DNS rebinding) -------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:80", "LOCALHOST.", "[::1]"])
def test_loopback_names_are_served(client, host):
    assert client.get("/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/", "/health", "/v1/models", "/openapi.json"])
def test_a_foreign_host_is_refused_on_every_route(client, path):
    r = client.get(path, headers={"host": "attacker.example:8000"})
    assert_json_error(r, 400, "--allowed-hosts attacker.example")
    r = client.post("/chat", json={"question": "배고파"}, headers={"host": "127.0.0.1.attacker.example"})
    assert_json_error(r, 400, "is not this server's name")


def test_allowed_hosts_and_the_bound_host_are_served(bot):
    settings = ServeSettings(host="10.0.0.5", allowed_hosts=("bot.example.com",))
    with TestClient(create_app(bot, settings), base_url="http://localhost") as c:
        for host in ("bot.example.com", "Bot.Example.com:443", "10.0.0.5:8000", "localhost"):
            assert c.get("/health", headers={"host": host}).status_code == 200
        assert c.get("/health", headers={"host": "other.example.com"}).status_code == 400
    with TestClient(create_app(bot, ServeSettings(allowed_hosts=("*",))), base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200


def test_docs_pages_are_off_and_the_schema_needs_no_cdn(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/models" in schema.json()["paths"]
    assert "cdn" not in schema.text and "https://" not in schema.text


# --- /v1/models -----------------------------------------------------------------------------

def test_models_lists_the_bot_for_the_official_client(client, bot):
    openai = pytest.importorskip("openai")
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["kogpt2-chatbot"]
    api = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=client)
    assert [m.id for m in api.models.list()] == ["kogpt2-chatbot"]
    assert api.models.retrieve("kogpt2-chatbot").owned_by == "kogpt2-chatbot"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4o")
    reply = api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "배고파"}])
    assert reply.model == "kogpt2-chatbot"  # the model that answered


def test_models_needs_the_api_key(bot):
    openai = pytest.importorskip("openai")
    with TestClient(create_app(bot, ServeSettings(api_key="s3cret", model_name="my-bot")),
                    base_url="http://localhost") as c:
        assert_json_error(c.get("/v1/models"), 401, "missing API key")
        with pytest.raises(openai.AuthenticationError):
            list(openai.OpenAI(base_url="http://localhost/v1", api_key="wrong", http_client=c).models.list())
        api = openai.OpenAI(base_url="http://localhost/v1", api_key="s3cret", http_client=c)
        assert [m.id for m in api.models.list()] == ["my-bot"]


# --- flags and settings ---------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--batch-wait-ms", "nan"], "batch_wait_ms must be a finite number"),
    (["--batch-wait-ms", "-1"], "batch_wait_ms must be between 0 and 1000"),
    (["--timeout", "0"], "timeout_s must be > 0 and <= 86400"),
    (["--timeout", "-5"], "timeout_s must be > 0 and <= 86400"),
    (["--timeout", "nan"], "timeout_s must be a finite number"),
    (["--timeout", "inf"], "timeout_s must be a finite number"),
    (["--max-question-chars", "0"], "max_question_chars must be >= 1"),
    (["--max-question-chars", "-3"], "max_question_chars must be >= 1"),
    (["--port", "70000"], "port must be between 1 and 65535"),
    (["--port", "0"], "port must be between 1 and 65535"),
    (["--port", "http"], "port must be a whole number"),
    (["--max-batch", "0"], "max_batch must be >= 1"),
    (["--api-key", ""], "api_key is empty"),
    (["--api-key", "  "], "api_key is empty"),
    (["--allowed-hosts", ""], "allowed_hosts must be host names"),
    (["--allowed-hosts", "a.example,,b.example"], "allowed_hosts must be host names"),
    (["--host", ""], "host must be a non-empty text"),
])
def test_bad_serve_flags_stop_before_loading(flags, words, capsys, monkeypatch):
    monkeypatch.setenv("KOGPT2_CHATBOT_API_KEY", "from-env")
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--model_params", "never-loaded.ckpt", *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument {flags[0]}: " in err and words in err  # names the flag and its bound


def test_a_port_in_use_or_an_address_not_this_machines_stops_before_loading(capsys, monkeypatch):
    monkeypatch.setenv("KOGPT2_CHATBOT_API_KEY", "from-env")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [(["--port", str(port)], f"cannot serve on 127.0.0.1 port {port}: Address already in use "
                                          "(another program is using the port; pass --port N)"),
                 (["--host", "999.1.1.1"], "cannot serve on 999.1.1.1 port 8000: "),
                 (["--host", "192.0.2.1"], "(that address is not this machine's; use 127.0.0.1, or 0.0.0.0 for "
                                          "every address)")]
        for flags, words in cases:  # the model named is never loaded: the port is taken first
            code = main(["serve", "--model_params", "never-loaded.ckpt", *flags])
            err = capsys.readouterr().err
            assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (flags, err)


def test_a_bad_flag_is_one_clear_error_in_a_real_process():
    result = subprocess.run([sys.executable, "-m", "kogpt2_chatbot", "serve", "--timeout", "nan"], cwd=ROOT,
                            env=USER_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "argument --timeout: timeout_s must be a finite number; got nan" in result.stderr


@pytest.mark.parametrize("settings, words", [
    (dict(timeout_s=0), "timeout_s must be > 0 and <= 86400"),
    (dict(batch_wait_ms=NAN), "batch_wait_ms must be a finite number"),
    (dict(max_question_chars=0), "max_question_chars must be >= 1"),
    (dict(port=70000), "port must be between 1 and 65535"),
    (dict(api_key=""), "api_key is empty"),
    (dict(max_batch=1.5), "max_batch must be a whole number"),
    (dict(history_turns=-1), "history_turns must be >= 0"),
    (dict(allowed_hosts=("",)), "allowed_hosts must be host names"),
])
def test_settings_are_checked_in_python_too(settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        ServeSettings(**settings)


def test_an_empty_api_key_never_replaces_the_environments(bot, monkeypatch):
    monkeypatch.setenv("KOGPT2_CHATBOT_API_KEY", "from-env")
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(bot, ServeSettings(api_key=""))
    with TestClient(create_app(bot, ServeSettings()), base_url="http://localhost") as c:
        assert c.post("/chat", json={"question": "배고파"}).status_code == 401
