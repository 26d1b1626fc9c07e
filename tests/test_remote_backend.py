"""RemoteBackend offline, against httpx.MockTransport: retries (429, 5xx, connection errors,
timeouts) and their limits, 4xx refused at once, the request body in OpenAI's wire format, tool
calls from structured fields and from text, and server-sent-event streaming."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from agentspark.backends.base import AssistantMessage, BackendResponse, ToolCallRequest
from agentspark.backends.remote import RemoteBackend, RemoteBackendError
from agentspark.errors import AgentSparkError
from agentspark.sampling import SamplingParams

BASE_URL = "http://remote.test"
MODEL = "test-model"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "Current time.", "parameters": {"type": "object", "properties": {}}},
}


# ---- helpers ----------------------------------------------------------------------------------


class Server:
    """A scripted MockTransport handler: answers with ``script`` in order (the last entry repeats);
    an entry is an httpx.Response, an exception to raise, or a callable(request) -> Response."""

    def __init__(self, *script: Any) -> None:
        assert script
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item(f"{item.__name__} (mock)", request=request)
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        # A fresh copy each time: a Response's stream can be read only once.
        return httpx.Response(item.status_code, headers=item.headers, content=item.content)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def backend(server: Callable[[httpx.Request], httpx.Response], **kw: Any) -> RemoteBackend:
    kw.setdefault("backoff", 0.0)  # no real sleeping between retries
    return RemoteBackend(BASE_URL, MODEL, transport=httpx.MockTransport(server), **kw)


def completion(content: str | None = "hello", *, tool_calls: list[dict] | None = None, finish: str = "stop",
               usage: dict | None = None) -> httpx.Response:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage if usage is not None else {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }
    return httpx.Response(200, json=body)


def api_error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": type_, "param": None, "code": code}})


def wire_call(id_: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def delta_chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": choices,
            **extra}


def sse_response(body: bytes, piece: int | None = None, then_raise: BaseException | None = None) -> Callable:
    """A handler answering 200 text/event-stream; ``piece`` splits the body into small network
    reads (lines cross them); ``then_raise`` breaks the connection after the body."""

    def handler(request: httpx.Request) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            step = piece or len(body) or 1
            for i in range(0, len(body), step):
                yield body[i:i + step]
            if then_raise is not None:
                raise then_raise

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())

    return handler


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def final(chunks: list) -> BackendResponse:
    assert chunks and chunks[-1].response is not None
    assert all(c.response is None for c in chunks[:-1]), "only the last chunk carries the response"
    assert chunks[-1].delta == ""
    return chunks[-1].response


# ---- 1. transient failures are retried -------------------------------------------------------


@pytest.mark.parametrize("failure", [
    pytest.param(api_error(429, "Rate limit reached", "rate_limit_error"), id="429"),
    pytest.param(api_error(500, "internal error", "server_error"), id="500"),
    pytest.param(httpx.Response(502, text="<html>Bad Gateway</html>"), id="502"),
    pytest.param(api_error(503, "overloaded", "server_error"), id="503"),
    pytest.param(httpx.ConnectError, id="ConnectError"),
    pytest.param(httpx.ReadTimeout, id="ReadTimeout"),
    pytest.param(httpx.RemoteProtocolError, id="RemoteProtocolError"),
])
def test_transient_failure_then_success_is_retried(failure):
    server = Server(failure, completion("hello after retry"))
    b = backend(server, retries=4)
    r = b.complete(user("hi"))
    assert r.message.content == "hello after retry"
    assert len(server.requests) == 2
    assert server.bodies[0] == server.bodies[1], "the retry resends the same request"


@pytest.mark.parametrize("failure", [api_error(429, "slow down"), api_error(503, "overloaded"), httpx.ConnectError],
                         ids=["429", "503", "ConnectError"])
def test_transient_failure_then_success_is_retried_when_streaming(failure):
    server = Server(failure, sse_response(sse(delta_chunk({"content": "ok"}), delta_chunk({}, "stop"), "[DONE]")))
    chunks = list(backend(server, retries=2).stream(user("hi")))
    assert final(chunks).message.content == "ok"
    assert "".join(c.delta for c in chunks) == "ok"
    assert len(server.requests) == 2


def test_several_transient_failures_in_a_row_within_the_limit():
    server = Server(api_error(429, "a"), httpx.ConnectError, api_error(502, "b"), completion("finally"))
    r = backend(server, retries=3).complete(user("hi"))
    assert r.message.content == "finally"
    assert len(server.requests) == 4


def test_retries_wait_with_exponential_backoff(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    server = Server(api_error(503, "x"), api_error(503, "x"), api_error(503, "x"), completion("ok"))
    r = backend(server, retries=4, backoff=0.5).complete(user("hi"))
    assert r.message.content == "ok"
    assert slept == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("header,at_least", [("3", 3.0), ("0.25", 0.25), ("999", 60.0), ("soon", None)])
def test_retry_after_is_honoured(monkeypatch, status, header, at_least):
    """A 429 or 503 with Retry-After waits at least that long before the retry (capped at a
    minute; an unreadable header leaves the exponential backoff alone)."""
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    busy = httpx.Response(status, headers={"retry-after": header}, json={"error": {"message": "busy"}})
    server = Server(busy, completion("ok"))
    assert backend(server, retries=2, backoff=0.1).complete(user("hi")).message.content == "ok"
    assert slept == [at_least if at_least is not None else 0.1]


def test_retry_after_is_honoured_when_streaming(monkeypatch):
    """The stream's request goes through the same retries: a 429 with Retry-After before the
    events waits that long, then the events are read."""
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    busy = httpx.Response(429, headers={"retry-after": "2"}, json={"error": {"message": "busy"}})
    server = Server(busy, sse_response(sse(delta_chunk({"content": "ok"}), delta_chunk({}, "stop"), "[DONE]")))
    assert final(list(backend(server, retries=1, backoff=0.1).stream(user("hi")))).message.content == "ok"
    assert slept == [2.0] and len(server.requests) == 2


def test_retry_after_as_an_http_date():
    from email.utils import formatdate

    from agentspark.backends.remote import retry_after_s

    later = retry_after_s(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 25 < later <= 30
    assert retry_after_s(formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert retry_after_s(None) is None and retry_after_s("") is None


def test_a_stream_that_is_not_an_event_stream_is_an_error():
    server = Server(completion("a JSON body where events were asked for"))
    with pytest.raises(RemoteBackendError, match="text/event-stream"):
        list(backend(server).stream(user("hi")))


def test_default_backoff_is_positive_and_retries_are_on_by_default(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("tenacity.nap.time.sleep", slept.append)
    server = Server(api_error(503, "x"), completion("ok"))
    b = RemoteBackend(BASE_URL, MODEL, transport=httpx.MockTransport(server))
    assert b.complete(user("hi")).message.content == "ok"
    assert len(server.requests) == 2
    assert len(slept) == 1 and slept[0] > 0


# ---- 2. persistent transient failures give up -------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_persistent_503_raises_after_the_configured_attempts(retries):
    server = Server(api_error(503, "The model is overloaded, try again later", "server_error"))
    b = backend(server, retries=retries)
    with pytest.raises(RemoteBackendError) as info:
        b.complete(user("hi"))
    assert len(server.requests) == retries + 1
    text = str(info.value)
    assert "503" in text
    assert "The model is overloaded, try again later" in text
    assert f"failed after {retries} retries" in text
    assert isinstance(info.value, AgentSparkError)  # the CLI reports these without a traceback


def test_persistent_503_raises_when_streaming():
    server = Server(api_error(503, "busy busy"))
    with pytest.raises(RemoteBackendError, match=r"503.*busy busy"):
        list(backend(server, retries=2).stream(user("hi")))
    assert len(server.requests) == 3


def test_persistent_connect_error_raises_and_names_the_cause():
    server = Server(httpx.ConnectError)
    with pytest.raises(RemoteBackendError, match="ConnectError") as info:
        backend(server, retries=2).complete(user("hi"))
    assert len(server.requests) == 3
    assert BASE_URL in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


# ---- 3. client errors are not retried ---------------------------------------------------------


@pytest.mark.parametrize("status, message, type_, code", [
    (400, "'messages' must contain at least one message.", "invalid_request_error", None),
    (401, "Incorrect API key provided.", "authentication_error", "invalid_api_key"),
    (404, "The model 'nope' does not exist.", "invalid_request_error", "model_not_found"),
])
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
def test_client_errors_raise_at_once_with_the_server_message(status, message, type_, code, streaming):
    server = Server(api_error(status, message, type_, code), completion("must not be reached"))
    b = backend(server, retries=4)
    with pytest.raises(RemoteBackendError) as info:
        if streaming:
            list(b.stream(user("hi")))
        else:
            b.complete(user("hi"))
    assert len(server.requests) == 1
    text = str(info.value)
    assert str(status) in text
    assert message in text
    assert "refused" in text


def openai_400(message: str, param: str | None) -> httpx.Response:
    return httpx.Response(400, json={"error": {"message": message, "type": "invalid_request_error", "param": param,
                                               "code": None}})


LOGPROBS = SamplingParams(logprobs=2)


@pytest.mark.parametrize("refusal", [
    pytest.param(openai_400("This model does not support top_logprobs.", "top_logprobs"), id="openai-param"),
    pytest.param(httpx.Response(400, json={"error": {"code": 400, "message": "logprobs is not supported",
                                                     "type": "invalid_request_error"}}), id="llama.cpp-message"),
    pytest.param(httpx.Response(400, json={"object": "error", "message": "Logprobs are disabled", "code": 400}),
                 id="vllm-message"),
    pytest.param(httpx.Response(400, text="logprobs not allowed"), id="plain-text"),
])
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
def test_a_400_about_logprobs_is_logprobs_refused_and_not_retried(refusal, streaming):
    from agentspark.backends.remote import LogprobsRefusedError

    server = Server(refusal, completion("must not be reached"))
    b = backend(server, retries=4)
    with pytest.raises(LogprobsRefusedError, match="refused logprobs: HTTP 400"):
        list(b.stream(user("hi"), sampling=LOGPROBS)) if streaming else b.complete(user("hi"), sampling=LOGPROBS)
    assert len(server.requests) == 1  # asking again without logprobs is the caller's decision


@pytest.mark.parametrize("refusal,sampling", [
    pytest.param(openai_400("max_tokens is too large (with logprobs on)", "max_tokens"), LOGPROBS,
                 id="param-names-another-field"),
    pytest.param(openai_400("'messages' must contain at least one message.", None), LOGPROBS, id="message-about-else"),
    pytest.param(openai_400("logprobs is not supported", None), SamplingParams(), id="logprobs-not-asked"),
])
def test_other_400s_stay_plain_refusals(refusal, sampling):
    from agentspark.backends.remote import LogprobsRefusedError

    server = Server(refusal, completion("must not be reached"))
    with pytest.raises(RemoteBackendError, match="refused the request: HTTP 400") as info:
        backend(server, retries=4).complete(user("hi"), sampling=sampling)
    assert not isinstance(info.value, LogprobsRefusedError) and len(server.requests) == 1


# ---- 4. the request -----------------------------------------------------------------------


HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Zürich and the time?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            wire_call("call_0", "get_weather", {"city": "Zürich", "days": [1, 2]}),
            wire_call("call_1", "get_time", '{"tz": "CET"}'),  # already a string: left alone
        ],
        "agentspark_raw_text": '<tool_call>{"name": "get_weather", ...}</tool_call>',
    },
    {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
    {"role": "assistant", "content": "Sunny, noon.", "agentspark_raw_text": "Sunny, noon.<|im_end|>"},
    {"role": "user", "content": "Thanks. Again?"},
]


def test_request_body_is_openai_wire_format():
    server = Server(completion("ok"))
    b = backend(server, api_key="sk-secret")
    history = copy.deepcopy(HISTORY)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=7, max_new_tokens=64, stop=("\nUser:", "###"))
    b.complete(history, tools=[WEATHER_TOOL, TIME_TOOL], sampling=sampling, tool_choice="auto")

    assert history == HISTORY, "the caller's messages are not modified"
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url == f"{BASE_URL}/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-secret"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)

    assert body["model"] == MODEL
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["top_k"] == 20
    assert body["seed"] == 7
    assert body["max_tokens"] == 64
    assert body["stop"] == ["\nUser:", "###"]
    assert body["stream"] is False
    assert "stream_options" not in body
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert body["tool_choice"] == "auto"

    messages = body["messages"]
    assert len(messages) == len(HISTORY)
    assert all("agentspark_raw_text" not in m for m in messages)
    assert messages[0] == HISTORY[0] and messages[1] == HISTORY[1]
    assert messages[3] == HISTORY[3] and messages[4] == HISTORY[4]
    assert messages[5] == {"role": "assistant", "content": "Sunny, noon."}
    calls = messages[2]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_0", "call_1"]
    assert all(c["type"] == "function" for c in calls)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(isinstance(c["function"]["arguments"], str) for c in calls)
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Zürich", "days": [1, 2]}
    assert "Zürich" in calls[0]["function"]["arguments"]  # not \u-escaped
    assert calls[1]["function"]["arguments"] == '{"tz": "CET"}'


@pytest.mark.parametrize("choice, wire", [
    ("none", "none"),
    ("required", "required"),
    ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_on_the_wire(choice, wire):
    server = Server(completion("ok"))
    backend(server).complete(user("hi"), tools=[WEATHER_TOOL], tool_choice=choice)
    assert server.bodies[0]["tool_choice"] == wire


def test_defaults_without_tools_or_api_key():
    server = Server(completion("ok"))
    backend(server).complete(user("hi"))
    (request,) = server.requests
    assert "authorization" not in request.headers
    body = json.loads(request.content)
    assert "tools" not in body and "tool_choice" not in body
    assert "stop" not in body and "seed" not in body and "top_k" not in body
    defaults = SamplingParams()
    assert body["temperature"] == defaults.temperature
    assert body["max_tokens"] == defaults.max_new_tokens
    assert body["messages"] == user("hi")


def test_streaming_request_asks_for_a_stream_with_usage():
    server = Server(sse_response(sse(delta_chunk({"content": "x"}), "[DONE]")))
    list(backend(server, api_key="k").stream(user("hi"), tools=[WEATHER_TOOL], tool_choice="required",
                                                 sampling=SamplingParams(max_new_tokens=5, stop="END")))
    body = server.bodies[0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [WEATHER_TOOL] and body["tool_choice"] == "required"
    assert body["max_tokens"] == 5 and body["stop"] == ["END"]
    assert server.requests[0].headers["authorization"] == "Bearer k"


def test_base_url_trailing_slash_and_timeout():
    server = Server(completion("ok"))
    b = RemoteBackend(BASE_URL + "/", MODEL, timeout=7.5, transport=httpx.MockTransport(server))
    b.complete(user("hi"))
    (request,) = server.requests
    assert request.url == f"{BASE_URL}/v1/chat/completions"
    assert request.extensions["timeout"]["read"] == 7.5
    assert b.name == f"remote:{MODEL}"


# ---- 5. non-streaming responses -----------------------------------------------------------


def test_structured_tool_calls_become_tool_call_requests():
    server = Server(completion(None, finish="tool_calls", tool_calls=[
        wire_call("call_a", "get_weather", '{"city": "Paris"}'),
        wire_call("call_b", "get_time", ""),  # no arguments
    ], usage={"prompt_tokens": 40, "completion_tokens": 12}))
    r = backend(server).complete(user("Weather?"), tools=[WEATHER_TOOL, TIME_TOOL])
    assert isinstance(r.message, AssistantMessage)
    assert r.message.content == ""
    assert r.message.tool_calls == [
        ToolCallRequest(id="call_a", name="get_weather", args={"city": "Paris"}),
        ToolCallRequest(id="call_b", name="get_time", args={}),
    ]
    assert r.message.invalid_tool_calls == []
    assert r.finish_reason == "tool_calls"
    assert (r.prompt_tokens, r.completion_tokens) == (40, 12)
    assert r.backend == f"remote:{MODEL}"


def test_tool_calls_force_the_tool_calls_finish_reason_and_ids_are_filled_in():
    server = Server(completion("", finish="stop", tool_calls=[{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome"}}}]))  # no id, arguments as an object
    r = backend(server).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert r.finish_reason == "tool_calls"
    assert r.message.tool_calls == [ToolCallRequest(id="call_0", name="get_weather", args={"city": "Rome"})]


@pytest.mark.parametrize("arguments", ['{"city": "Paris"', "not json at all", "[1, 2]", '"a string"'],
                         ids=["truncated", "garbage", "list", "string"])
def test_invalid_tool_call_arguments_become_invalid_tool_calls(arguments):
    server = Server(completion("", finish="tool_calls", tool_calls=[
        wire_call("call_a", "get_weather", arguments),
        wire_call("call_b", "get_time", "{}"),
    ]))
    r = backend(server).complete(user("Weather?"), tools=[WEATHER_TOOL, TIME_TOOL])  # never raises
    assert r.message.tool_calls == [ToolCallRequest(id="call_b", name="get_time", args={})]
    assert len(r.message.invalid_tool_calls) == 1
    invalid = r.message.invalid_tool_calls[0]
    assert invalid.raw == arguments
    assert "not valid JSON" in invalid.error


def test_only_invalid_tool_calls_still_returns_a_message():
    server = Server(completion("thinking", finish="tool_calls", tool_calls=[wire_call("c", "get_weather", "{oops")]))
    r = backend(server).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert r.message.tool_calls == []
    assert len(r.message.invalid_tool_calls) == 1
    assert r.message.content == "thinking"
    assert r.finish_reason == "tool_calls"  # the server's own reason is kept when no call is usable


def test_text_tool_call_is_parsed_when_tools_were_offered():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    server = Server(completion(text))
    r = backend(server).complete(user("Weather in Oslo?"), tools=[WEATHER_TOOL])
    assert len(r.message.tool_calls) == 1
    call = r.message.tool_calls[0]
    assert (call.name, call.args) == ("get_weather", {"city": "Oslo"})
    assert "<tool_call>" not in r.message.content
    assert r.message.content.strip() == "Let me check."
    assert r.finish_reason == "tool_calls"


def test_text_tool_call_stays_text_without_tools():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    r = backend(Server(completion(text))).complete(user("hi"))
    assert r.message.tool_calls == []
    assert r.message.content == text
    assert r.finish_reason == "stop"


def test_broken_text_tool_call_becomes_invalid_not_an_exception():
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    r = backend(Server(completion(text))).complete(user("hi"), tools=[WEATHER_TOOL])
    assert r.message.tool_calls == []
    assert len(r.message.invalid_tool_calls) == 1


def test_plain_answer_finish_reason_and_usage():
    server = Server(completion("The answer is 4.", finish="length", usage={"prompt_tokens": 5, "completion_tokens": 9}))
    r = backend(server).complete(user("2+2?"))
    assert r.message.content == "The answer is 4."
    assert r.message.tool_calls == [] and r.message.invalid_tool_calls == []
    assert r.finish_reason == "length"
    assert (r.prompt_tokens, r.completion_tokens) == (5, 9)


def test_missing_usage_and_content_default_to_zero_and_empty():
    body = {"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": None}]}
    r = backend(Server(httpx.Response(200, json=body))).complete(user("hi"))
    assert r.message.content == ""
    assert r.finish_reason == "stop"
    assert (r.prompt_tokens, r.completion_tokens) == (0, 0)


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>proxy login</html>"),
    httpx.Response(200, json={"choices": []}),
    httpx.Response(200, json={"object": "list"}),
], ids=["html", "no-choices", "no-choices-key"])
def test_unreadable_success_response_raises(response):
    server = Server(response)
    with pytest.raises(RemoteBackendError, match="unreadable"):
        backend(server).complete(user("hi"))
    assert len(server.requests) == 1


# ---- 6. streaming --------------------------------------------------------------------------


def streamed_tool_calls_body() -> bytes:
    return (
        sse(delta_chunk({"role": "assistant", "content": ""}),
            delta_chunk({"content": "Checking "}),
            delta_chunk({"content": "both"}),
            delta_chunk({"content": " now."}))
        + b": keep-alive comment\n\n"
        + sse(
            delta_chunk({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}),
            delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            delta_chunk({"tool_calls": [{"index": 1, "id": "call_t", "type": "function",
                                         "function": {"name": "get_time", "arguments": '{"tz":'}}]}),
            delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Zürich"}'}}]}),
            delta_chunk({"tool_calls": [{"index": 1, "function": {"arguments": ' "CET"}'}}]}),
            delta_chunk({}, "tool_calls"),
            delta_chunk(None, usage={"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48}),
            "[DONE]",
        )
        + b"data: this is not JSON and must never be parsed after [DONE]\n\n"
    )


@pytest.mark.parametrize("piece", [None, 1, 7], ids=["whole", "bytewise", "7-byte-reads"])
def test_stream_deltas_tool_calls_finish_and_usage(piece):
    server = Server(sse_response(streamed_tool_calls_body(), piece=piece))
    chunks = list(backend(server).stream(user("Weather and time?"), tools=[WEATHER_TOOL, TIME_TOOL]))
    r = final(chunks)
    deltas = [c.delta for c in chunks[:-1]]
    assert deltas == ["Checking ", "both", " now."]
    assert "".join(deltas) == r.message.content == "Checking both now."
    assert r.message.tool_calls == [
        ToolCallRequest(id="call_w", name="get_weather", args={"city": "Zürich"}),
        ToolCallRequest(id="call_t", name="get_time", args={"tz": "CET"}),
    ]
    assert r.message.invalid_tool_calls == []
    assert r.finish_reason == "tool_calls"
    assert (r.prompt_tokens, r.completion_tokens) == (31, 17)
    assert r.backend == f"remote:{MODEL}"
    assert len(server.requests) == 1


def test_stream_plain_text_finish_reason_length():
    body = sse(delta_chunk({"role": "assistant"}), delta_chunk({"content": "one "}), delta_chunk({"content": "two"}),
               delta_chunk({}, "length"), delta_chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2}), "[DONE]")
    chunks = list(backend(Server(sse_response(body))).stream(user("count")))
    r = final(chunks)
    assert "".join(c.delta for c in chunks) == r.message.content == "one two"
    assert r.message.tool_calls == []
    assert r.finish_reason == "length"
    assert (r.prompt_tokens, r.completion_tokens) == (3, 2)


def test_stream_without_done_or_usage_still_ends_with_a_response():
    body = sse(delta_chunk({"content": "hi"}), delta_chunk({}, "stop"))
    r = final(list(backend(Server(sse_response(body))).stream(user("hi"))))
    assert r.message.content == "hi"
    assert r.finish_reason == "stop"
    assert (r.prompt_tokens, r.completion_tokens) == (0, 0)


def test_stream_text_tool_call_is_parsed_when_tools_were_offered():
    pieces = ['<tool_call>\n{"name": "get_weather", ', '"arguments": {"city": "Lima"}}', "\n</tool_call>"]
    body = sse(*[delta_chunk({"content": p}) for p in pieces], delta_chunk({}, "stop"), "[DONE]")
    chunks = list(backend(Server(sse_response(body))).stream(user("Weather?"), tools=[WEATHER_TOOL]))
    r = final(chunks)
    assert [c.delta for c in chunks[:-1]] == pieces
    assert [(c.name, c.args) for c in r.message.tool_calls] == [("get_weather", {"city": "Lima"})]
    assert r.finish_reason == "tool_calls"


def test_stream_invalid_tool_call_arguments_become_invalid_tool_calls():
    body = sse(delta_chunk({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "get_weather",
                                                                                 "arguments": '{"city": '}}]}),
               delta_chunk({}, "tool_calls"), "[DONE]")
    r = final(list(backend(Server(sse_response(body))).stream(user("Weather?"), tools=[WEATHER_TOOL])))
    assert r.message.tool_calls == []
    assert len(r.message.invalid_tool_calls) == 1
    assert r.message.invalid_tool_calls[0].raw == '{"city": '


def test_stream_error_event_raises():
    # Once the headers are sent a server reports a failure as an SSE event (ours does, so does vLLM).
    body = sse(delta_chunk({"content": "partial"}),
               {"error": {"message": "CUDA out of memory", "type": "server_error", "param": None, "code": None}})
    server = Server(sse_response(body))
    it = backend(server).stream(user("hi"))
    with pytest.raises(RemoteBackendError, match="CUDA out of memory"):
        list(it)
    assert len(server.requests) == 1  # mid-stream failures are not retried: text was already yielded


def test_stream_connection_lost_mid_stream_raises_remote_backend_error():
    body = sse(delta_chunk({"content": "partial"}))
    server = Server(sse_response(body, then_raise=httpx.ReadTimeout("read timed out")))
    seen: list[str] = []
    with pytest.raises(RemoteBackendError, match="ReadTimeout"):
        for c in backend(server).stream(user("hi")):
            seen.append(c.delta)
    assert seen == ["partial"]


def test_stream_malformed_event_raises_remote_backend_error():
    body = sse(delta_chunk({"content": "ok"})) + b"data: {not json\n\n"
    with pytest.raises(RemoteBackendError):
        list(backend(Server(sse_response(body))).stream(user("hi")))


def test_abandoned_stream_closes_the_response():
    closed: list[bool] = []

    class Body(httpx.SyncByteStream):
        def __iter__(self):
            yield sse(delta_chunk({"content": "a"}), delta_chunk({"content": "b"}), "[DONE]")

        def close(self):
            closed.append(True)

    server = Server(lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body()))
    it = backend(server).stream(user("hi"))
    assert next(it).delta == "a"
    it.close()
    assert closed == [True]


# ---- 7. timeouts ---------------------------------------------------------------------------


def test_read_timeout_is_retried_then_succeeds():
    server = Server(httpx.ReadTimeout, httpx.ReadTimeout, completion("late but fine"))
    r = backend(server, retries=2).complete(user("hi"))
    assert r.message.content == "late but fine"
    assert len(server.requests) == 3


@pytest.mark.parametrize("timeout_cls", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout])
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
def test_persistent_timeout_raises_remote_backend_error(timeout_cls, streaming):
    server = Server(timeout_cls)
    b = backend(server, retries=2)
    with pytest.raises(RemoteBackendError) as info:
        if streaming:
            list(b.stream(user("hi")))
        else:
            b.complete(user("hi"))
    assert len(server.requests) == 3
    assert timeout_cls.__name__ in str(info.value)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, timeout_cls) for e in chain), chain


def test_close_closes_the_client():
    b = backend(Server(completion("ok")))
    b.close()
    assert b.client.is_closed


@pytest.mark.parametrize(
    "url,message",
    [("::::", "not a valid URL"), ("ftp://x", "http:// or https://"), ("localhost:8000", "http:// or https://"),
     ("http://[", "no valid host"), ("http://", "no valid host"), ("http://a b", "no valid host"),
     ("http://x:99999", "outside 1..65535"), ("", "http:// or https://")],
)
def test_a_bad_base_url_is_refused_at_once(url, message):
    """Not an InvalidURL crash, and not four retries' worth of backoff before a misleading error."""
    def server(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with pytest.raises(RemoteBackendError, match=message) as info:
        RemoteBackend(url, MODEL, transport=httpx.MockTransport(server))
    assert "e.g. http://localhost:8000" in str(info.value)


@pytest.mark.parametrize("url", ["http://localhost:8000", "https://api.example.com/", "http://[::1]:8000/v1",
                                 "http://127.0.0.1:9"])
def test_good_base_urls_are_taken(url):
    RemoteBackend(url, MODEL).close()


# ---- 8. replies cut by max_tokens (finish_reason "length") --------------------------------
# As the local backend reports them (tests/test_backend_finish_reason.py): "length" whenever the
# server says the budget cut the reply, the fragment of a call in invalid_tool_calls, never a call.

CUT_TEXT_CALLS = [
    pytest.param('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', "Let me check.", id="tag"),
    pytest.param('{"name": "get_weather", "arguments": {"city": "Pa', "", id="whole-json"),
    pytest.param('```json\n{"name": "get_weather", "arguments": {"city": "Pa', "", id="fence"),
]


@pytest.mark.parametrize("text, content", CUT_TEXT_CALLS)
def test_a_text_call_cut_by_max_tokens_is_length_with_the_fragment_in_invalid_tool_calls(text, content):
    r = backend(Server(completion(text, finish="length"))).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert r.finish_reason == "length"
    assert r.message.tool_calls == [] and r.message.content == content
    [bad] = r.message.invalid_tool_calls
    assert "token limit" in bad.error and bad.raw.endswith('"Pa')
    # the same text when the server says the reply ended on its own is not called "cut"
    whole = backend(Server(completion(text, finish="stop"))).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert whole.finish_reason == "stop" and "token limit" not in " ".join(b.error for b in whole.message.invalid_tool_calls)


@pytest.mark.parametrize("text, content", CUT_TEXT_CALLS)
def test_a_streamed_text_call_cut_by_max_tokens_is_length(text, content):
    pieces = [text[:20], text[20:]]
    body = sse(*[delta_chunk({"content": p}) for p in pieces], delta_chunk({}, "length"), "[DONE]")
    chunks = list(backend(Server(sse_response(body))).stream(user("Weather?"), tools=[WEATHER_TOOL]))
    r = final(chunks)
    assert r.finish_reason == "length"
    assert r.message.tool_calls == [] and r.message.content == content
    [bad] = r.message.invalid_tool_calls
    assert "token limit" in bad.error and bad.raw.endswith('"Pa')


def test_a_complete_text_call_then_a_cut_is_a_call_but_length():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\nNow I will'
    r = backend(Server(completion(text, finish="length"))).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert r.finish_reason == "length"
    assert [(c.name, c.args) for c in r.message.tool_calls] == [("get_weather", {"city": "Oslo"})]


def test_structured_calls_cut_by_max_tokens_are_length():
    """A server with a tool parser: complete calls are calls, the cut last one is a fragment."""
    server = Server(completion(None, finish="length", tool_calls=[
        wire_call("call_a", "get_time", "{}"),
        wire_call("call_b", "get_weather", '{"city": "Pa'),
    ]))
    r = backend(server).complete(user("Weather?"), tools=[WEATHER_TOOL, TIME_TOOL])
    assert r.finish_reason == "length"
    assert r.message.tool_calls == [ToolCallRequest(id="call_a", name="get_time", args={})]
    [bad] = r.message.invalid_tool_calls
    assert bad.raw == '{"city": "Pa' and "token limit" in bad.error
    whole = backend(Server(completion(None, finish="length", tool_calls=[wire_call("c", "get_time", "{}")])))
    assert whole.complete(user("Time?"), tools=[TIME_TOOL]).finish_reason == "length"  # not "tool_calls"


def test_a_streamed_call_cut_before_its_arguments_is_not_a_call():
    """vLLM streams a call's name first: cut right there, it is no call with no arguments."""
    body = sse(delta_chunk({"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                                            "function": {"name": "get_weather", "arguments": ""}}]}),
               delta_chunk({}, "length"), "[DONE]")
    r = final(list(backend(Server(sse_response(body))).stream(user("Weather?"), tools=[WEATHER_TOOL])))
    assert r.finish_reason == "length" and r.message.tool_calls == []
    [bad] = r.message.invalid_tool_calls
    assert "get_weather" in bad.raw and "token limit" in bad.error and "no arguments" in bad.error
    # the same call in a reply that ended on its own is a call without arguments, as before
    done = sse(delta_chunk({"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                                            "function": {"name": "get_time", "arguments": ""}}]}),
               delta_chunk({}, "tool_calls"), "[DONE]")
    r = final(list(backend(Server(sse_response(done))).stream(user("Time?"), tools=[TIME_TOOL])))
    assert r.finish_reason == "tool_calls" and r.message.tool_calls == [ToolCallRequest("c0", "get_time", {})]


def test_our_servers_invalid_tool_calls_extension_is_taken():
    """Our server leaves a call it could not use out of the message and reports it in its
    ``agentspark`` field; the remote backend keeps it, as the local backend would have."""
    reported = {"raw": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', "error": "the reply reached the token limit"}
    response = completion("Let me check.", finish="length")
    body = json.loads(response.content)
    body["agentspark"] = {"backend": "x", "stats": None, "forced_prefix": "", "invalid_tool_calls": [reported]}
    r = backend(Server(httpx.Response(200, json=body))).complete(user("Weather?"), tools=[WEATHER_TOOL])
    assert r.finish_reason == "length" and r.message.content == "Let me check." and r.message.tool_calls == []
    assert [(b.raw, b.error) for b in r.message.invalid_tool_calls] == [(reported["raw"], reported["error"])]
