"""The server's defences: the API key checked before the body is read, the body cap (413), the
body parsed off the event loop, strict request values, malformed input as 400 (never 500), the
docs closed with a key, and `agentspark serve` failing fast (busy port, empty key) before it
loads a model. ScriptedBackend (and small subclasses) stand in for the engine."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from agentspark.backends.local import forced_prefix
from agentspark.backends.scripted import ScriptedBackend
from agentspark.errors import InvalidRequestError
from agentspark.server import create_app, serve_in_thread

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-key"
MODEL = "agentspark-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def echo(messages) -> str:
    """Answers with the last message's text, so whatever a request carries is also encoded back."""
    return f"echo: {messages[-1]['content']}"


def app_with(backend=None, **kwargs):
    kwargs.setdefault("model_name", MODEL)
    kwargs.setdefault("api_key", KEY)
    return create_app(backend or ScriptedBackend([echo] * 50), **kwargs)


def assert_error(r, status: int, param: str | None = None, type_: str = "invalid_request_error") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"] == type_
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture
def http():
    """A TestClient on a fresh keyed app (raise_server_exceptions off: a bug must show as the 500)."""
    with TestClient(app_with(), raise_server_exceptions=False) as client:
        yield client


def post(client, body: bytes | dict, headers: dict | None = None):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/chat/completions", content=content,
                       headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


# ---- the key before the body; the body cap ---------------------------------------------------


class RawASGI:
    """Calls an ASGI app directly and records how much of the body it asked for."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, path: str, headers: dict[str, str], chunks: list[bytes], method: str = "POST"):
        self.chunks_read = 0
        messages: list[dict] = []

        async def receive():
            if self.chunks_read < len(chunks):
                self.chunks_read += 1
                return {"type": "http.request", "body": chunks[self.chunks_read - 1],
                        "more_body": self.chunks_read < len(chunks)}
            await asyncio.sleep(3600)  # the client never disconnects by itself

        async def send(message):
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        asyncio.run(asyncio.wait_for(self.app(scope, receive, send), 20))
        status = messages[0]["status"]
        body = b"".join(m.get("body", b"") for m in messages[1:])
        return status, json.loads(body)


def test_a_request_without_the_key_is_refused_before_its_body_is_read():
    raw = RawASGI(app_with())
    body = json.dumps({"messages": user("x" * 100_000)}).encode()
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + KEY}):
        status, err = raw.request("/v1/chat/completions", {"content-length": str(len(body)), **headers}, chunks)
        assert status == 401 and err["error"]["type"] == "authentication_error"
        assert raw.chunks_read == 0  # answered from the headers alone
    status, _ = raw.request("/v1/chat/completions", {"content-length": str(len(body)), **AUTH}, chunks)
    assert status == 200 and raw.chunks_read == len(chunks)


def test_a_body_over_the_cap_is_413_unread_or_cut_off():
    raw = RawASGI(app_with(max_body_bytes=100_000))
    big = b"x" * 1_000_000
    status, err = raw.request("/v1/chat/completions", {"content-length": str(len(big)), **AUTH}, [big])
    assert status == 413 and raw.chunks_read == 0
    assert err["error"]["code"] == "request_too_large" and "100000 bytes" in err["error"]["message"]
    # No Content-Length (chunked): counted as it arrives, cut off once past the cap.
    chunks = [b"x" * 65536] * 16
    status, err = raw.request("/v1/chat/completions", dict(AUTH), chunks)
    assert status == 413 and raw.chunks_read == 2 and err["error"]["code"] == "request_too_large"
    status, _ = raw.request("/v1/chat/completions", {"content-length": "12abc", **AUTH}, [b"{}"])
    assert status == 400


def test_body_cap_over_real_http(serve_app):
    url = serve_app(app_with(max_body_bytes=64 * 1024))
    big = json.dumps({"messages": user("y" * 2_000_000)}).encode()
    r = httpx.post(f"{url}/v1/chat/completions", content=big, headers=AUTH, timeout=20)
    assert_error(r, 413)

    def chunked():
        for _ in range(64):
            yield b" " * 65536

    r = httpx.post(f"{url}/v1/chat/completions", content=chunked(), headers=AUTH, timeout=20)
    assert_error(r, 413)
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": user("small")}, headers=AUTH, timeout=20)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: small"
    assert httpx.get(f"{url}/health").status_code == 200  # the server is fine afterwards


def test_the_body_is_parsed_off_the_event_loop(monkeypatch):
    import agentspark.server.app as app_module

    threads = []
    parse = app_module.parse_request

    def spy(body: bytes):
        threads.append(threading.current_thread())
        return parse(body)

    monkeypatch.setattr(app_module, "parse_request", spy)
    loop_threads = []

    with TestClient(app_with()) as client:
        @client.app.get("/_thread")  # a route that runs on the event loop's thread
        async def _thread():
            loop_threads.append(threading.current_thread())
            return {}

        client.get("/_thread", headers=AUTH)
        assert post(client, {"messages": user("hi")}).status_code == 200
    assert len(threads) == 1 and threads[0] is not loop_threads[0]


def test_long_lists_are_validated_in_batches_with_the_same_result(monkeypatch):
    from agentspark.server import convert
    from agentspark.server.errors import APIError
    from agentspark.server.schemas import ChatCompletionRequest

    sizes = []

    class Counting:
        def __init__(self, adapter) -> None:
            self.adapter = adapter

        def validate_python(self, items):
            sizes.append(len(items))
            return self.adapter.validate_python(items)

    monkeypatch.setattr(convert, "BATCH", 100)
    monkeypatch.setitem(convert._BATCHED, "messages", Counting(convert._BATCHED["messages"]))
    body = {"messages": [{"role": "user", "content": f"m{i}"} for i in range(350)], "temperature": 0.5}
    req = convert.parse_request(json.dumps(body).encode())
    assert sizes == [100, 100, 50]  # after the first 100, validated with the rest of the request
    assert req == ChatCompletionRequest.model_validate(body)
    body["messages"][230] = {"role": "wizard"}
    with pytest.raises(APIError) as bad:
        convert.parse_request(json.dumps(body).encode())
    assert bad.value.status == 400 and bad.value.param == "messages[230].role"


# ---- what used to be a 500 --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": user("x"), "seed": 2**64}, "seed"),
        ({"messages": user("x"), "seed": 2**63}, "seed"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "ok \\udfff"}]}]}',
         "messages[0].content[0].text"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stop": ["\\ud83d"]}', "stop[0]"),
        (b'[' * 100_000, None),  # nesting deeper than the parser's recursion limit
        (b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', None),  # a surrogate as raw bytes: no UTF-8
    ],
)
def test_malformed_values_are_400_not_500(http, body, param):
    assert_error(post(http, body), 400, param)


def test_a_paired_surrogate_escape_is_fine(http):
    r = post(http, b'{"messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}')
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: smile \U0001f600"


class ForcingBackend(ScriptedBackend):
    """Computes the tool_choice's forced prefix as LocalBackend does, then answers from the script."""

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        forced_prefix(tool_choice, tools if tool_choice != "none" else None)
        return super().stream(messages, tools, sampling, tool_choice)


@pytest.mark.parametrize(
    "parameters,where",
    [
        ({"type": "object", "properties": "city", "required": ["city"]}, "properties"),
        ({"type": "object", "properties": ["city"], "required": ["city"]}, "properties"),
        ({"type": "object", "properties": {"city": {"type": "string"}}, "required": [{"city": 1}]}, "required"),
        ({"type": "object", "properties": {"city": "string"}, "required": ["city"]}, "properties['city']"),
    ],
)
def test_malformed_tool_schemas_under_a_named_tool_choice_are_400(parameters, where):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    with TestClient(app_with(ForcingBackend(["never"])), raise_server_exceptions=False) as client:
        r = post(client, {"messages": user("x"), "tools": [tool],
                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    err = assert_error(r, 400, "tools")
    assert f"function.parameters.{where}" in err["message"] and "get_weather" in err["message"]
    with pytest.raises(InvalidRequestError, match=r"function\.parameters"):
        forced_prefix("get_weather", [tool])


def test_forced_prefix_still_forces_well_formed_schemas():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    assert forced_prefix("get_weather", [tool]) == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'
    bare = {"type": "function", "function": {"name": "ping"}}
    assert forced_prefix("ping", [bare]) == '<tool_call>\n{"name": "ping", "arguments": {'


# ---- lenient values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,param",
    [
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}', None),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
        ({"messages": user("x"), "temperature": 1e308}, "temperature"),
        ({"messages": user("x"), "temperature": 1e-300}, "temperature"),
        ({"messages": user("x"), "top_k": 1e30}, "top_k"),
        ({"messages": user("x"), "top_k": 5.0}, "top_k"),
        ({"messages": user("x"), "top_k": 2**40}, "top_k"),
        ({"messages": user("x"), "stream": "yes"}, "stream"),
        ({"messages": user("x"), "stream": 1}, "stream"),
        ({"messages": user("x"), "max_tokens": True}, "max_tokens"),
        ({"messages": user("x"), "max_completion_tokens": "5"}, "max_completion_tokens"),
        ({"messages": user("x"), "seed": True}, "seed"),
        ({"messages": user("x"), "top_p": True}, "top_p"),
        ({"messages": user("x"), "stream": True, "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage"),
        ({"messages": user("x"), "tools": [{"type": "function", "function": {"name": "f"}},
                                           {"type": "function", "function": {"name": "f"}}]},
         "tools[1].function.name"),
    ],
)
def test_lenient_values_are_refused(http, body, param):
    err = assert_error(post(http, body), 400, param)
    if param is None:
        assert "not valid JSON" in err["message"]


def test_valid_edge_values_still_pass(http):
    for extra in ({"seed": 0}, {"seed": 2**63 - 1}, {"temperature": 0}, {"temperature": 100}, {"temperature": 1e-8},
                  {"top_k": 0}, {"top_p": 1}, {"max_tokens": 1}, {"stream": False}):
        r = post(http, {"messages": user("x"), **extra})
        assert r.status_code == 200, (extra, r.text)


def test_create_app_refuses_a_key_that_means_nothing():
    for key in ("", "   ", " padded ", "nön-ascii"):
        with pytest.raises(ValueError, match="api_key"):
            create_app(ScriptedBackend([]), model_name=MODEL, api_key=key)


# ---- docs ---------------------------------------------------------------------------------------


def test_docs_and_schema_need_the_key_when_one_is_set():
    with TestClient(app_with()) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert_error(client.get(path), 401, type_="authentication_error")
        assert client.get("/openapi.json", headers=AUTH).json()["components"]["securitySchemes"]
        assert client.get("/docs", headers=AUTH).status_code == 404  # its page could not send the key
        assert client.get("/health").status_code == 200  # probes need no key
    with TestClient(app_with(api_key=None)) as client:  # no key: the docs stay open on loopback
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_lifespan_can_run_twice():
    app = app_with()
    for _ in range(2):
        with TestClient(app) as client:
            assert post(client, {"messages": user("again")}).status_code == 200


# ---- agentspark serve ------------------------------------------------------------------------


@pytest.fixture
def serve_app():
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_in_thread(app))


@pytest.fixture
def no_model(monkeypatch):
    """Makes loading a model a test failure (what serve must check before) and stubs the server."""
    import uvicorn

    import agentspark.cli  # noqa: F401 (every command module imported before the patch: one that
    import agentspark.commands.bench  # noqa: F401 imported load_model under it would keep the fake
    import agentspark.commands.generate  # noqa: F401 for the rest of the session)
    import agentspark.drafters.factory  # noqa: F401
    import agentspark.model.loading as loading

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn ran"))
    monkeypatch.delenv("AGENTSPARK_API_KEY", raising=False)


def test_serve_on_a_busy_port_fails_before_loading_the_model(no_model, capsys):
    from agentspark.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err


@pytest.mark.parametrize("flag,env", [(["--api-key", ""], None), (["--api-key", "  "], None), ([], ""), ([], " ")])
def test_serve_refuses_an_empty_api_key(no_model, monkeypatch, capsys, flag, env):
    from agentspark.cli import main

    if env is not None:
        monkeypatch.setenv("AGENTSPARK_API_KEY", env)
    assert main(["serve", "--port", "0", *flag]) == 2
    err = capsys.readouterr().err
    assert ("--api-key" if flag else "AGENTSPARK_API_KEY") in err and "unset" in err


def test_serve_passes_the_body_cap_and_the_admission_limits(monkeypatch, capsys):
    import uvicorn

    import agentspark.backends.batched as batched
    import agentspark.backends.local as local
    import agentspark.batch as batch
    import agentspark.drafters.factory as factory
    import agentspark.engine as engine
    import agentspark.model.loading as loading
    import agentspark.server as server
    from agentspark.cli import main
    from agentspark.commands import serve
    from agentspark.server import app as server_app
    from agentspark.server import guard

    class FakeBackend:
        name = "fake"

        def __init__(self, *a, **k) -> None:
            pass

    seen = {}
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(factory, "build_drafter", lambda *a, **k: None)
    monkeypatch.setattr(engine, "Engine", lambda *a, **k: object())
    monkeypatch.setattr(batch, "BatchEngine", lambda *a, **k: seen.update(slots=k["slots"]) or object())
    monkeypatch.setattr(local, "LocalBackend", lambda *a, **k: seen.update(backend="local") or FakeBackend())
    monkeypatch.setattr(batched, "BatchBackend", lambda *a, **k: seen.update(backend="batch") or FakeBackend())
    monkeypatch.setattr(server, "create_app", lambda backend, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(run=kw))
    monkeypatch.delenv("AGENTSPARK_API_KEY", raising=False)
    assert main(["serve", "--port", "0", "--max-body-bytes", "12345"]) == 0
    assert seen["max_body_bytes"] == 12345 and seen["api_key"] is None
    assert main(["serve", "--port", "0"]) == 0
    assert seen["max_body_bytes"] == serve.DEFAULT_MAX_BODY_BYTES == guard.DEFAULT_MAX_BODY_BYTES
    assert main(["serve", "--port", "0", "--max-body-bytes", "0"]) == 2
    assert "--max-body-bytes" in capsys.readouterr().err
    assert seen["backend"] == "batch" and seen["slots"] == serve.DEFAULT_SLOTS
    assert seen["max_queued"] == serve.DEFAULT_MAX_QUEUED == server_app.DEFAULT_MAX_QUEUED
    assert main(["serve", "--port", "0", "--slots", "1", "--max-queued", "3"]) == 0
    assert seen["backend"] == "local" and seen["max_queued"] == 3
    for bad in (["--slots", "0"], ["--slots", "65"], ["--max-queued", "-1"]):
        assert main(["serve", "--port", "0", *bad]) == 2
        assert bad[0] in capsys.readouterr().err
