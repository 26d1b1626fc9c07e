"""The OpenAI-compatible server over real HTTP on loopback: the official openai client, raw
httpx for malformed requests, our RemoteBackend, concurrency and client-disconnect cancellation.
ScriptedBackend (and small Backend subclasses) stand in for the engine here."""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack

import httpx
import openai
import pytest

from agentspark.backends.base import AssistantMessage, Backend, BackendChunk, BackendResponse
from agentspark.backends.remote import RemoteBackend
from agentspark.backends.scripted import ScriptedBackend
from agentspark.server import create_app, serve_in_thread

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-key"
MODEL = "agentspark-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = 'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def serve():
    """serve(backend_or_app, **create_app_kwargs) -> base URL of a live server on 127.0.0.1."""
    with ExitStack() as stack:

        def start(backend_or_app, **kwargs) -> str:
            app = backend_or_app
            if isinstance(backend_or_app, Backend):
                kwargs.setdefault("model_name", MODEL)
                kwargs.setdefault("api_key", KEY)
                app = create_app(backend_or_app, **kwargs)
            return stack.enter_context(serve_in_thread(app))

        yield start


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- the official openai client ------------------------------------------------------------


def test_models_list(serve):
    url = serve(ScriptedBackend([]))
    models = client(url).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "agentspark" and isinstance(models.data[0].created, int)
    assert client(url).models.retrieve(MODEL).id == MODEL


def test_chat_completion_non_streaming(serve):
    backend = ScriptedBackend(["Hello there, friend."])
    r = client(serve(backend)).chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be kind."}, *user("hi")],
        temperature=0.5, top_p=0.9, max_tokens=40, seed=7, stop=["END"], extra_body={"top_k": 5})
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content == "Hello there, friend."
    assert choice.message.tool_calls is None
    assert r.usage.prompt_tokens == len("Be kind.") + len("hi")
    assert r.usage.completion_tokens == len("Hello there, friend.")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    ext = r.model_extra["agentspark"]
    assert ext == {"backend": "scripted", "stats": None, "forced_prefix": "", "invalid_tool_calls": []}
    assert backend.requests[0]["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]


def test_sampling_parameters_reach_the_backend():
    seen = []

    class Recorder(ScriptedBackend):
        def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
            seen.append(sampling)
            return super().stream(messages, tools, sampling, tool_choice)

    backend = Recorder(["a", "b"])
    with serve_in_thread(create_app(backend, model_name=MODEL)) as url:
        c = client(url, key="anything")  # no api_key configured: any key (or none) is accepted
        c.chat.completions.create(model=MODEL, messages=user("x"), temperature=0.25, top_p=0.5, seed=3,
                                  max_completion_tokens=9, stop="STOP", extra_body={"top_k": 4})
        c.chat.completions.create(model=MODEL, messages=user("y"))
    first, second = seen
    assert (first.temperature, first.top_p, first.top_k, first.seed, first.max_new_tokens, first.stop) == (
        0.25, 0.5, 4, 3, 9, ("STOP",))
    assert (second.temperature, second.top_p, second.top_k, second.max_new_tokens, second.stop) == (1.0, 1.0, 0, 256, ())


def test_streaming_with_usage(serve):
    text = "Streaming works word by word."
    stream = client(serve(ScriptedBackend([text]))).chat.completions.create(
        model=MODEL, messages=user("go"), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2 and "".join(pieces) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == len(text)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.model_extra["agentspark"]["backend"] == "scripted"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_streaming_without_usage_ends_with_done(serve):
    url = serve(ScriptedBackend(["one two"]))
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "messages": user("x"), "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    assert all(b["choices"] for b in bodies)  # no usage chunk unless asked for
    assert bodies[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_round_trip(serve):
    def answer(messages):
        last = messages[-1]
        assert last["role"] == "tool" and last["name"] == "get_weather"
        return f"The weather: {last['content']}"

    backend = ScriptedBackend([CALL_TEXT, answer])
    c = client(serve(backend))
    messages = user("Weather in Paris?")
    r = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look that up."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments) == {"city": "Paris"}
    assert backend.requests[0]["tools"] == [WEATHER_TOOL] and backend.requests[0]["tool_choice"] == "auto"

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "The weather: sunny, 21 C"
    sent = backend.requests[1]["messages"]
    assert sent[1]["tool_calls"] == [{"id": call.id, "type": "function",
                                      "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert sent[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call.id, "name": "get_weather"}


def test_streamed_tool_call_hides_markup(serve):
    stream = client(serve(ScriptedBackend([CALL_TEXT]))).chat.completions.create(
        model=MODEL, messages=user("Weather?"), tools=[WEATHER_TOOL], stream=True)
    content, calls, finish = "", [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert content == "Let me look that up." and "<tool_call>" not in content
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_a_call_cut_by_max_tokens_is_length_with_the_fragment_in_invalid_tool_calls(serve):
    """Not "tool_calls" with the fragment left in content: a client can tell the reply was cut."""
    from agentspark.backends.scripted import CutOff

    cut = 'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    url = serve(ScriptedBackend([CutOff(cut), CutOff(cut)]))
    r = client(url).chat.completions.create(model=MODEL, messages=user("Weather?"), tools=[WEATHER_TOOL], max_tokens=24)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None and choice.message.content == "Let me look that up."
    [bad] = r.model_extra["agentspark"]["invalid_tool_calls"]
    assert bad["raw"].startswith("<tool_call>") and "token limit" in bad["error"]
    stream = client(url).chat.completions.create(
        model=MODEL, messages=user("Weather?"), tools=[WEATHER_TOOL], max_tokens=24, stream=True)
    content, calls, finish, ext = "", [], None, None
    for chunk in stream:
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            calls += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
        ext = (chunk.model_extra or {}).get("agentspark") or ext
    assert (content, calls, finish) == ("Let me look that up.", [], "length")
    assert [c["raw"] for c in ext["invalid_tool_calls"]] == [bad["raw"]]


def test_only_tool_calls_means_null_content_and_named_tool_choice(serve):
    backend = ScriptedBackend(['<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'])
    r = client(serve(backend)).chat.completions.create(
        model=MODEL, messages=user("Oslo?"), tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].message.content is None
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert backend.requests[0]["tool_choice"] == "get_weather"


# ---- errors -------------------------------------------------------------------------------


def test_errors_through_the_openai_client(serve):
    backend = ScriptedBackend(["never used"])
    url = serve(backend)
    c = client(url)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model=MODEL, messages=user("x"), temperature=-1)
    assert bad.value.status_code == 400 and "temperature" in bad.value.message
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model=MODEL, messages=user("x"), n=2)
    assert bad.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=user("x"), top_p=0)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=user("x"), max_tokens=0)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model=MODEL, messages=user("x"), tools=[WEATHER_TOOL],
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    assert bad.value.body["param"] == "tool_choice"
    with pytest.raises(openai.NotFoundError) as missing:
        c.chat.completions.create(model="gpt-4o", messages=user("x"))
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4o")
    with pytest.raises(openai.AuthenticationError) as auth:
        client(url, key="wrong").chat.completions.create(model=MODEL, messages=user("x"))
    assert auth.value.body["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    assert backend.requests == []  # nothing reached the backend


def _post(url: str, content: bytes, key: str | None = KEY, path: str = "/v1/chat/completions") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}{path}", content=content, headers=headers)


def _assert_openai_error(r: httpx.Response, status: int, param: str | None = None, type_="invalid_request_error"):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"] == type_
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    "body,param",
    [
        (b"{this is not json", None),
        (b'{"model": "agentspark-test"}', "messages"),
        (b'{"model": "agentspark-test", "messages": []}', "messages"),
        (b'{"model": "agentspark-test", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "agentspark-test", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
         "temperature"),
        (b'{"model": "agentspark-test", "messages": [{"role": "assistant", "content": null, "tool_calls": '
         b'[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}',
         "messages[0].tool_calls[0].function.arguments"),
        (b'{"model": "agentspark-test", "messages": [{"role": "tool", "content": "r"}]}', "messages[0].tool_call_id"),
        (b'{"model": "agentspark-test", "messages": [{"role": "user", "content": '
         b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}', "messages[0].content[0]"),
        (b"[1, 2]", None),
    ],
)
def test_malformed_requests_are_400_in_openai_shape(serve, body, param):
    backend = ScriptedBackend([])
    _assert_openai_error(_post(serve(backend), body), 400, param)
    assert backend.requests == []


def test_auth_and_unknown_routes(serve):
    url = serve(ScriptedBackend([]))
    body = json.dumps({"model": MODEL, "messages": user("x")}).encode()
    _assert_openai_error(_post(url, body, key=None), 401, type_="authentication_error")
    _assert_openai_error(_post(url, body, key="nope"), 401, type_="authentication_error")
    _assert_openai_error(httpx.get(f"{url}/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}), 404)
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed


def test_backend_failures(serve):
    def boom(messages):
        raise RuntimeError("secret internal detail")

    url = serve(ScriptedBackend([boom, boom]))
    body = json.dumps({"model": MODEL, "messages": user("x")}).encode()
    err = _assert_openai_error(_post(url, body), 500, type_="server_error")
    assert "secret" not in err["message"]
    # An AgentSparkError from the backend (here: the script ran out) is the request's fault: 400.
    url2 = serve(ScriptedBackend([]))
    err = _assert_openai_error(_post(url2, body), 400)
    assert "script" in err["message"]
    # Streaming: a stream's headers go out once its request is checked (queued or not), so a
    # backend that fails later says so in an event, in OpenAI's error shape, with no detail leaked.
    stream_body = json.dumps({"model": MODEL, "messages": user("x"), "stream": True}).encode()
    r = _post(url, stream_body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["type"] == "server_error" and "secret" not in r.text


# ---- our RemoteBackend against our server ---------------------------------------------------


def test_remote_backend_round_trip(serve):
    backend = ScriptedBackend(["Plain answer here.", "Streamed answer here.", CALL_TEXT, CALL_TEXT,
                               lambda m: f"Done: {m[-1]['content']}"])
    remote = RemoteBackend(serve(backend), MODEL, api_key=KEY, retries=0)
    try:
        r = remote.complete(user("hi"))
        assert r.message.content == "Plain answer here." and r.finish_reason == "stop"
        assert r.completion_tokens == len("Plain answer here.")

        chunks = list(remote.stream(user("hi")))
        assert "".join(c.delta for c in chunks) == "Streamed answer here."
        assert chunks[-1].response.message.content == "Streamed answer here."
        assert chunks[-1].response.completion_tokens == len("Streamed answer here.")

        r = remote.complete(user("Weather?"), tools=[WEATHER_TOOL])
        assert r.finish_reason == "tool_calls" and r.message.content == "Let me look that up."
        assert [(c.name, c.args) for c in r.message.tool_calls] == [("get_weather", {"city": "Paris"})]

        streamed = [c for c in remote.stream(user("Weather?"), tools=[WEATHER_TOOL])][-1].response
        assert [(c.name, c.args) for c in streamed.message.tool_calls] == [("get_weather", {"city": "Paris"})]
        assert streamed.message.content == "Let me look that up."

        call = r.message.tool_calls[0]
        history = user("Weather?") + [r.message.to_dict(),
                                      {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": "rain"}]
        final = remote.complete(history, tools=[WEATHER_TOOL])
        assert final.message.content == "Done: rain" and not final.message.tool_calls
        assert backend.requests[-1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    finally:
        remote.close()


def test_remote_backend_reports_a_cut_call_as_the_local_backend_does(serve):
    """Through our server and back: "length", the fragment in invalid_tool_calls (from the
    server's extension: its message has neither the call nor the fragment), not a plain answer."""
    from agentspark.backends.scripted import CutOff

    cut = 'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    local = ScriptedBackend([CutOff(cut)]).complete(user("Weather?"), [WEATHER_TOOL])
    remote = RemoteBackend(serve(ScriptedBackend([CutOff(cut), CutOff(cut)])), MODEL, api_key=KEY, retries=0)
    try:
        for r in (remote.complete(user("Weather?"), tools=[WEATHER_TOOL]),
                  list(remote.stream(user("Weather?"), tools=[WEATHER_TOOL]))[-1].response):
            assert r.finish_reason == local.finish_reason == "length"
            assert r.message.content == local.message.content == "Let me look that up."
            assert r.message.tool_calls == []
            assert r.message.invalid_tool_calls == local.message.invalid_tool_calls
            assert "token limit" in r.message.invalid_tool_calls[0].error
    finally:
        remote.close()


# ---- concurrency and cancellation ------------------------------------------------------------


class OverlapCounter(Backend):
    """Wraps a backend, sleeping per chunk and recording whether two generations ever overlapped."""

    def __init__(self, inner: Backend, delay: float = 0.02) -> None:
        self.inner, self.delay, self.name = inner, delay, inner.name
        self.active = self.max_active = self.calls = 0
        self.lock = threading.Lock()

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for chunk in self.inner.stream(messages, tools, sampling, tool_choice):
                time.sleep(self.delay)
                yield chunk
        finally:
            with self.lock:
                self.active -= 1


def test_concurrent_requests_are_serialized_and_all_answered(serve):
    echo = lambda messages: f"echo: {messages[-1]['content']} done"  # noqa: E731
    backend = OverlapCounter(ScriptedBackend([echo] * 4))
    url = serve(backend)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            c = client(url)
            if i % 2:
                r = c.chat.completions.create(model=MODEL, messages=user(f"request {i}"))
                results[i] = r.choices[0].message.content
            else:
                parts = c.chat.completions.create(model=MODEL, messages=user(f"request {i}"), stream=True)
                results[i] = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert httpx.get(f"{url}/health").status_code == 200  # the event loop is not blocked meanwhile
    assert time.monotonic() - t0 < 0.5
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert results == {i: f"echo: request {i} done" for i in range(4)}
    assert backend.calls == 4 and backend.max_active == 1


class SlowBackend(Backend):
    """Yields ``n`` chunks, sleeping ``delay`` before each; counts what it produced."""

    name = "slow"

    def __init__(self, n: int = 200, delay: float = 0.05) -> None:
        self.n, self.delay = n, delay
        self.produced = 0
        self.calls = 0
        self.finished = threading.Event()

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        self.calls += 1
        self.finished.clear()
        try:
            for i in range(self.n):
                time.sleep(self.delay)
                self.produced += 1
                yield BackendChunk(delta=f"w{i} ")
            text = "".join(f"w{i} " for i in range(self.n))
            yield BackendChunk(delta="", response=BackendResponse(
                message=AssistantMessage(content=text), finish_reason="stop", prompt_tokens=1,
                completion_tokens=self.n, backend=self.name))
        finally:
            self.finished.set()  # the generator was closed (cancelled) or ran out


def read_until(lines, marker: str) -> str:
    for line in lines:
        if marker in line:
            return line
    raise AssertionError(f"the stream ended without {marker!r}")


def test_streaming_disconnect_cancels_generation(serve):
    backend = SlowBackend()
    url = serve(backend)
    body = {"model": MODEL, "messages": user("long"), "stream": True}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert '"w0 "' in read_until(lines, '"content": "w')  # read one content chunk, then hang up
            time.sleep(0.3)
            assert backend.produced >= 3 and not backend.finished.is_set()  # still generating meanwhile
    assert backend.finished.wait(5), "the backend was never stopped"
    assert backend.produced < 40, backend.produced  # 200 chunks would take 10 s

    backend.n, backend.produced = 3, 0  # the next request is served normally
    r = client(url).chat.completions.create(model=MODEL, messages=user("short"))
    assert r.choices[0].message.content == "w0 w1 w2 " and backend.calls == 2


def test_non_streaming_disconnect_cancels_running_and_queued_generations(serve):
    backend = SlowBackend()
    url = serve(backend)
    body = {"model": MODEL, "messages": user("long")}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(headers=headers, timeout=10) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as first:
            lines = first.iter_lines()
            read_until(lines, '"content": "w0')  # the first one is running
            with pytest.raises(httpx.ReadTimeout):  # queued behind it; its client gives up
                httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=0.4)
            time.sleep(0.6)  # the server notices that the queued request's client left
    assert backend.finished.wait(5)
    time.sleep(0.3)
    assert backend.calls == 1  # the queued request was cancelled before it started

    backend.produced = 0
    with pytest.raises(httpx.ReadTimeout):  # a running non-streaming generation, client gives up
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=0.4)
    assert backend.finished.wait(5)
    assert backend.calls == 2 and backend.produced < 40, backend.produced

    backend.n = 2
    r = client(url).chat.completions.create(model=MODEL, messages=user("short"))
    assert r.choices[0].message.content == "w0 w1 "


def test_plain_completions_need_a_backend_that_holds_a_model(serve):
    """/v1/completions on a chat-only backend (scripted, remote): a 400 saying so, in the API's words."""
    url = serve(ScriptedBackend(["ok"]))
    err = _assert_openai_error(_post(url, json.dumps({"model": MODEL, "prompt": "Once"}).encode(),
                                     path="/v1/completions"), 400)
    assert "chat completions only" in err["message"]


def test_fields_it_would_ignore_are_refused_by_name(serve):
    """A client must not believe it got what it asked for: penalties, logit_bias, unknown fields
    are a 400 naming them; their neutral values and bookkeeping fields pass."""
    url = serve(ScriptedBackend(["ok"] * 3))
    base = {"model": MODEL, "messages": user("x")}
    for extra, param in (({"presence_penalty": 0.5}, "presence_penalty"), ({"frequency_penalty": -1}, "frequency_penalty"),
                         ({"logit_bias": {"42": 5}}, "logit_bias"), ({"best_of": 2}, "best_of")):
        err = _assert_openai_error(_post(url, json.dumps({**base, **extra}).encode()), 400, param=param)
        assert param in err["message"] and err["code"] == "unsupported_parameter"
    # logprobs are served (tests/test_logprobs.py); alternatives without them are a mistake, said so
    err = _assert_openai_error(_post(url, json.dumps({**base, "top_logprobs": 3}).encode()), 400, param="top_logprobs")
    assert "logprobs: true" in err["message"]
    fine = {"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "user": "u-1", "metadata": {"a": "b"},
            "parallel_tool_calls": True, "store": False}
    r = _post(url, json.dumps({**base, **fine}).encode())
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"


def test_parallel_tool_calls_reach_the_backend(serve):
    """parallel_tool_calls: true lets a required tool_choice be answered with several calls (the
    constrained grammar: tests/test_constraints.py); absent or false, one. A non-boolean is a 400."""
    backend = ScriptedBackend(["ok"] * 3)
    url = serve(backend)
    base = {"model": MODEL, "messages": user("x")}
    for extra, expected in (({"parallel_tool_calls": True}, True), ({}, False), ({"parallel_tool_calls": False}, False)):
        assert _post(url, json.dumps({**base, **extra}).encode()).status_code == 200
        assert backend.requests[-1]["sampling"].parallel_tool_calls is expected
    _assert_openai_error(_post(url, json.dumps({**base, "parallel_tool_calls": "yes"}).encode()), 400,
                         param="parallel_tool_calls")


def test_served_model_aliases(serve):
    """More names for the served model: /v1/models lists them, requests may name any; others 404."""
    from agentspark.server import create_app, serve_in_thread

    app = create_app(ScriptedBackend(["ok", "ok"]), model_name=MODEL, aliases=["gpt-4o-mini", MODEL])
    with serve_in_thread(app) as url:
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == [MODEL, "gpt-4o-mini"]
        assert httpx.get(f"{url}/v1/models/gpt-4o-mini").status_code == 200
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": user("x")})
        assert r.status_code == 200 and r.json()["model"] == MODEL
        bad = httpx.post(f"{url}/v1/chat/completions", json={"model": "other", "messages": user("x")})
        assert bad.status_code == 404 and "gpt-4o-mini" in bad.json()["error"]["message"]
