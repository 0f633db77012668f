import asyncio
import json
import socket
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from kogpt2_chatbot.module import KoGPT2Chat
from kogpt2_chatbot.serve import ServeSettings, create_app

from conftest import ROOT

sys.path.insert(0, str(ROOT / "imgs"))
import make_screenshot  # noqa: E402


@pytest.fixture(scope="module")
def bot(trained_dir):
    return KoGPT2Chat.load_from_checkpoint(trained_dir / "model_-last.ckpt").eval()


@pytest.fixture(scope="module")
def client(bot):
    with TestClient(create_app(bot, ServeSettings(max_question_chars=200, max_new_tokens_ceiling=48)), base_url="http://localhost") as c:
        yield c


def test_health(client, bot):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["base_model"] == "scratch-tiny"
    assert body["parameters"] == sum(p.numel() for p in bot.parameters()) and body["device"] == "cpu"


def test_chat(client, bot):
    r = client.post("/chat", json={"question": "첫 데이트야", "sentiment": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["answer"] == bot.chat("첫 데이트야", 2) and body["sentiment"] == 2 and body["latency_ms"] > 0
    r = client.post("/chat", json={"question": "배고파", "sentiment": "negative", "do_sample": True, "seed": 3,
                                   "top_p": 0.9})
    assert r.json()["answer"] == bot.chat("배고파", 1, do_sample=True, seed=3, top_p=0.9)
    assert client.post("/chat", json={"question": "배고파"}).json()["sentiment"] == 0


@pytest.mark.parametrize("body, status, words", [
    ({"question": ""}, 422, "question is empty"),
    ({"question": "   "}, 422, "question is empty"),
    ({"question": "가" * 201}, 422, "longer than 200"),
    ({"question": "안녕", "sentiment": 5}, 422, "neutral|negative|positive"),
    ({"question": "안녕", "max_new_tokens": 49}, 422, "<= 48"),
    ({"question": "안녕", "max_new_tokens": 0}, 422, "max_new_tokens"),
    ({"question": "안녕", "temperature": -1}, 422, "temperature"),
    ({"question": "안녕", "beams": 4}, 422, "beams"),
    ({"sentiment": 1}, 422, "question"),
    ({"question": 12}, 422, "question"),
])
def test_chat_errors_are_json(client, body, status, words):
    r = client.post("/chat", json=body)
    assert r.status_code == status
    assert words in r.json()["error"]["message"]


def test_malformed_and_oversized_bodies(client):
    r = client.post("/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = client.post("/chat", content=b"x" * (64 * 1024 + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body over" in r.json()["error"]["message"]
    assert client.get("/health").status_code == 200  # still up


def test_openai_route(client, bot):
    r = client.post("/v1/chat/completions", json={
        "model": "x", "messages": [{"role": "system", "content": "친절하게"}, {"role": "user", "content": "예전 질문"},
                                   {"role": "assistant", "content": "예전 답"}, {"role": "user", "content": "헤어졌어"}],
        "sentiment": 1, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion"
    # The messages are the conversation the reply sees, as the Python API's `history` is.
    assert body["choices"][0]["message"] == {"role": "assistant",
                                             "content": bot.chat("헤어졌어", 1, [("예전 질문", "예전 답")])}
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] > 0
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "hi"}]})
    assert r.status_code == 422 and "no user message" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "안녕"}], "max_tokens": 2})
    assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_chat_template_kwargs_carry_the_sentiment_as_llama_server_and_vllm_take_it(client, bot):
    def ask(**extra):
        return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "헤어졌어"}],
                                                         "temperature": 0, **extra})

    for extra in ({"chat_template_kwargs": {"sentiment": 1}}, {"chat_template_kwargs": {"sentiment": "negative"}},
                  {"chat_template_kwargs": {"sentiment": 1}, "sentiment": "1"}):
        r = ask(**extra)
        assert r.status_code == 200 and (r.json()["sentiment"], r.json()["sentiment_source"]) == (1, "given"), extra
        reply = r.json()["choices"][0]["message"]["content"]
        assert reply == ask(sentiment=1).json()["choices"][0]["message"]["content"]
    assert ask(chat_template_kwargs={"enable_thinking": False}).json()["sentiment_source"] != "given"  # others: unused
    r = ask(chat_template_kwargs={"sentiment": 2}, sentiment=1)
    assert r.status_code == 422 and "disagree" in r.json()["error"]["message"]
    r = ask(chat_template_kwargs={"sentiment": 7})
    assert r.status_code == 422 and "sentiment must be" in r.json()["error"]["message"]


def test_openai_streaming(client, bot):
    with client.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "첫 데이트야"}], "sentiment": 2, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == bot.chat("첫 데이트야", 2)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["source"] == {"kind": "generated"}


def test_official_openai_client(client, bot):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=client)
    reply = api.chat.completions.create(model="kogpt2", messages=[{"role": "user", "content": "배고파"}],
                                        extra_body={"sentiment": 0})
    assert reply.choices[0].message.content == bot.chat("배고파", 0)
    stream = api.chat.completions.create(model="kogpt2", messages=[{"role": "user", "content": "헤어졌어"}],
                                         stream=True, extra_body={"sentiment": 1})
    assert "".join(c.choices[0].delta.content or "" for c in stream) == bot.chat("헤어졌어", 1)


def test_web_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert "KoGPT2 챗봇" in html and 'id="sentiment"' in html and "/v1/chat/completions" in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline


def test_concurrent_requests_share_batches(bot):
    app = create_app(bot, ServeSettings(max_batch=16, batch_wait_ms=50))
    questions = [f"배고파 {i}" for i in range(16)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                rs = await asyncio.gather(*[c.post("/chat", json={"question": q}) for q in questions])
        return [r.json()["answer"] for r in rs]

    answers = asyncio.run(main())
    assert answers == bot.chat_batch(questions)
    assert app.state.batcher.requests == 16 and app.state.batcher.batches < 16


def test_timeout_is_a_json_504(bot, monkeypatch):
    from kogpt2_chatbot import serve as S

    def slow(self, prompts, decoding):
        time.sleep(1.0)
        return [[] for _ in prompts]

    monkeypatch.setattr(S.Batcher, "_generate", slow)
    with TestClient(create_app(bot, ServeSettings(timeout_s=0.2)), base_url="http://localhost") as c:
        r = c.post("/chat", json={"question": "안녕"})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


@pytest.fixture(scope="module")
def live_server(bot):
    url, server = make_screenshot.start_server(bot)
    yield url
    server.should_exit = True


def test_real_browser_chat(live_server, bot, tmp_path):
    """Headless Chromium opens the page, sends questions and sees the streamed replies."""
    import shutil

    pytest.importorskip("selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian chromium and chromium-driver are not installed")
    shot = tmp_path / "web_chat.png"
    exchanges = [("첫 데이트야", 2), ("헤어졌어", 1), ("배고파", "auto")]
    replies = make_screenshot.chat_in_browser(live_server + "/", exchanges, shot)
    assert replies == [bot.chat(q, s) for q, s in exchanges]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.parametrize("content, headers, status, words", [
    (json.dumps({"question": "배고파"}).encode(), {"content-type": "application/x-www-form-urlencoded"}, 200, None),
    (json.dumps({"question": "배고파"}).encode(), {}, 200, None),  # no Content-Type at all
    ("{\"question\": \"배고파\"}".encode("euc-kr"), {"content-type": "application/json"}, 400, "not UTF-8"),
    (b"", {"content-type": "application/json"}, 400, "not JSON"),
    (b"[1, 2]", {"content-type": "application/json"}, 422, "body"),
])
def test_any_body_gets_an_answer_or_the_json_error(client, bot, content, headers, status, words):
    r = client.post("/chat", content=content, headers=headers)
    assert r.status_code == status
    if words:
        assert set(r.json()) == {"error"} and words in r.json()["error"]["message"]
    else:
        assert r.json()["answer"] == bot.chat("배고파")


def test_unknown_routes_and_methods_use_the_same_error_shape(client):
    assert client.get("/nope").json()["error"]["message"] == "Not Found"
    r = client.get("/chat")
    assert r.status_code == 405 and "error" in r.json()


def test_stop_sequences_as_openai_documents_them(client, bot):
    full = bot.chat("첫 데이트야", 2)
    stop = full[len(full) // 2 : len(full) // 2 + 1]  # a character inside the reply
    cut = full[: full.index(stop)].rstrip()
    body = {"messages": [{"role": "user", "content": "첫 데이트야"}], "sentiment": 2, "stop": [stop, "없는말"]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.json()["choices"][0]["message"]["content"] == cut
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events).rstrip() == cut
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/chat/completions", json={**body, "stop": ["a", "b", "c", "d", "e"]})
    assert r.status_code == 422 and "at most 4" in r.json()["error"]["message"]


def test_api_key_guards_every_route_but_health_and_the_page(bot):
    openai = pytest.importorskip("openai")
    with TestClient(create_app(bot, ServeSettings(api_key="s3cret")), base_url="http://localhost") as c:
        assert c.get("/health").json()["auth"] is True and c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.post("/chat", json={"question": "배고파"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = c.post("/chat", json={"question": "배고파"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url="http://localhost/v1", api_key="wrong", http_client=c).chat.completions.create(
                model="kogpt2", messages=[{"role": "user", "content": "배고파"}])
        api = openai.OpenAI(base_url="http://localhost/v1", api_key="s3cret", http_client=c)
        reply = api.chat.completions.create(model="kogpt2", messages=[{"role": "user", "content": "배고파"}])
        assert reply.choices[0].message.content == bot.chat("배고파")


def test_api_key_from_the_environment(bot, monkeypatch):
    monkeypatch.setenv("KOGPT2_CHATBOT_API_KEY", "from-env")
    with TestClient(create_app(bot), base_url="http://localhost") as c:
        assert c.post("/chat", json={"question": "배고파"}).status_code == 401
        assert c.post("/chat", json={"question": "배고파"}, headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_serving_beyond_this_machine_without_a_key_warns(bot, monkeypatch, capsys):
    import uvicorn

    from kogpt2_chatbot import serve as S

    monkeypatch.delenv("KOGPT2_CHATBOT_API_KEY", raising=False)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: setattr(self, "started", True))
    # uvicorn's logging setup would point its loggers at this test's captured stderr for good
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)

    def serve(**kwargs):
        with socket.socket() as sock:  # the port is not needed: the server never starts here
            S.serve(bot, sock=sock, **kwargs)

    serve(host="0.0.0.0")
    assert "without an API key" in capsys.readouterr().err
    serve(host="0.0.0.0", settings=ServeSettings(api_key="k"))
    serve(host="127.0.0.1")
    err = capsys.readouterr().err
    assert "without an API key" not in err and "serving on http://127.0.0.1:8000 (Ctrl+C stops)" in err


# --- grounding: where a reply comes from (grounding.py), per request ---------------------------

@pytest.fixture(scope="module")
def training_pairs(bot, sample_csv):
    """Training questions that appear once, with their answers and data file lines."""
    from kogpt2_chatbot import data as chatdata

    rows = chatdata.training_rows(chatdata.load_chat_table(sample_csv).rows, bot.chatbot.split)
    return rows.drop_duplicates("Q", keep=False).head(8)


def test_a_retrieved_reply_names_its_training_row(client, bot, training_pairs):
    row = training_pairs.iloc[0]
    source = {"kind": "retrieved", "row": int(row.line), "question": row.Q, "closeness": 1.0}
    r = client.post("/chat", json={"question": row.Q, "grounding": "retrieve"})
    assert r.status_code == 200 and r.json()["answer"] == row.A and r.json()["source"] == source
    assert client.post("/chat", json={"question": row.Q}).json()["source"] == {"kind": "generated"}
    body = {"messages": [{"role": "user", "content": row.Q}], "grounding": "Retrieve"}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["message"]["content"] == row.A and choice["source"] == source and choice["finish_reason"] == "stop"
    reranked = client.post("/chat", json={"question": row.Q, "grounding": "rerank"}).json()
    assert reranked["answer"] == bot.chatbot.chat(row.Q, grounding="rerank")
    assert reranked["source"] == bot.chatbot.reply(row.Q, grounding="rerank").source.to_json()


def test_a_grounded_stream_comes_whole_with_its_source(client, training_pairs):
    row = training_pairs.iloc[1]
    body = {"messages": [{"role": "user", "content": row.Q}], "grounding": "retrieve", "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert pieces == [row.A]
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "stop" and last["source"]["kind"] == "retrieved"
    assert last["source"]["row"] == int(row.line)


def test_the_openai_client_reads_a_grounded_reply(client, training_pairs):
    openai = pytest.importorskip("openai")
    row = training_pairs.iloc[2]
    api = openai.OpenAI(base_url="http://localhost/v1", api_key="none", http_client=client)
    reply = api.chat.completions.create(model="kogpt2", messages=[{"role": "user", "content": row.Q}],
                                        extra_body={"grounding": "retrieve"})
    assert reply.choices[0].message.content == row.A
    assert reply.choices[0].model_extra["source"]["row"] == int(row.line)


@pytest.mark.parametrize("mode", ["copy", "", 3, ["retrieve"]])
def test_an_unknown_grounding_mode_is_a_json_422_naming_the_modes(client, mode):
    from kogpt2_chatbot import grounding as gr

    for path, body in (("/chat", {"question": "배고파"}), ("/v1/chat/completions",
                                                         {"messages": [{"role": "user", "content": "배고파"}]})):
        r = client.post(path, json={**body, "grounding": mode})
        assert r.status_code == 422 and set(r.json()) == {"error"}
        assert "grounding" in r.json()["error"]["message"]
        if isinstance(mode, str):  # our own words, without pydantic's "Value error, " before them
            assert r.json()["error"]["message"] == f"grounding must be one of {', '.join(gr.MODES)}; got {mode!r}"


def test_a_bot_without_index_says_how_to_add_one(bot):
    from kogpt2_chatbot import Chatbot

    plain = Chatbot(bot.chatbot.model, bot.chatbot.tokenizer, info={"source": "model_chp/old.ckpt"})
    with TestClient(create_app(plain), base_url="http://localhost") as c:
        assert c.get("/health").json()["grounding"] == {"default": "generate", "modes": ["generate"], "index": None}
        for grounding in ("retrieve", "rerank"):
            r = c.post("/chat", json={"question": "배고파", "grounding": grounding})
            message = r.json()["error"]["message"]
            assert r.status_code == 400 and "\n" not in message
            assert "python -m kogpt2_chatbot index --model_params model_chp/old.ckpt" in message
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "배고파"}],
                                                 "grounding": "retrieve", "stream": True})
        assert r.status_code == 400 and "kogpt2_chatbot index" in r.json()["error"]["message"]
        r = c.post("/chat", json={"question": "배고파", "grounding": "generate"})
        assert r.status_code == 200 and r.json()["source"] == {"kind": "generated"}


def test_health_and_the_page_offer_the_modes(client, bot):
    from kogpt2_chatbot import grounding as gr

    info = client.get("/health").json()["grounding"]
    assert info["default"] == bot.chatbot.grounding and info["index"] == len(bot.chatbot.index)
    assert {"generate", "retrieve", "rerank"} <= set(info["modes"]) <= set(gr.MODES)  # others may need more than an index
    html = client.get("/").text
    assert '<select id="grounding"' in html and "body.grounding" in html and "에서 가져옴" in html


def test_concurrent_generated_and_retrieved_requests_each_get_their_own(bot, training_pairs):
    app = create_app(bot, ServeSettings(max_batch=16, batch_wait_ms=50))
    asked = [(q, "retrieve" if n % 2 else None) for n, q in enumerate([*training_pairs.Q, *training_pairs.Q])]

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as c:
                rs = await asyncio.gather(*[c.post("/chat", json={"question": q, "grounding": g}) for q, g in asked])
        return [r.json() for r in rs]

    bodies = asyncio.run(main())
    generated = [q for q, g in asked if g is None]
    answers = dict(zip(training_pairs.Q, training_pairs.A))
    assert [b["answer"] for b, (q, g) in zip(bodies, asked) if g is None] == bot.chatbot.chat_batch(generated)
    assert [b["answer"] for b, (q, g) in zip(bodies, asked) if g] == [answers[q] for q, g in asked if g]
    assert [b["source"]["kind"] for b in bodies] == ["retrieved" if g else "generated" for _, g in asked]
    assert app.state.batcher.requests == len(asked) and app.state.batcher.batches < len(asked)
