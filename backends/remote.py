"""RemoteBackend: any OpenAI-compatible ``/v1/chat/completions`` server (ours, vLLM, SGLang) over httpx.

Retries (tenacity, exponential backoff) on connection errors, timeouts, 429 and 5xx, waiting at
least what a ``Retry-After`` header asks (seconds or an HTTP date, capped at MAX_RETRY_AFTER_S);
any other 4xx is the caller's mistake and raises ``RemoteBackendError`` at once with the server's
message; a 400 about logprobs on a request that asked for them (servers that do not serve logprobs:
some llama.cpp builds, deployments that turn them off) is ``LogprobsRefusedError``, so that a
caller can ask again without them (the deployment audit does). Streaming reads server-sent
events through httpx-sse (the events' framing: multi-line ``data``, comments, CRLF), the chunks'
JSON here. ``transport`` is the httpx seam for tests.

finish_reason is what the local backend reports (``base.finish_reason``): "length" whenever the
server says ``max_tokens`` cut the reply, even in the middle of a call, and "tool_calls" only for
a reply that ended on its own with calls. A call the budget cut is in ``invalid_tool_calls``,
never a call: structured arguments that are not complete JSON, a last call whose arguments never
began, or a call in the text (servers without a tool parser) that is unfinished, parsed as the
local backend parses a cut reply (``base.reply_message``). Our server's own
``agentspark.invalid_tool_calls`` (calls it could not use, cut ones included) are taken too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..agent.tool_prompt import RAW_TEXT_KEY
from ..constraints import Grammar
from ..errors import AgentSparkError, InvalidRequestError
from ..sampling import SamplingParams
from .base import (
    AssistantMessage,
    Backend,
    BackendChunk,
    BackendResponse,
    InvalidToolCallRequest,
    ToolCallRequest,
    ToolChoice,
    finish_reason,
    reply_message,
)

_CUT = "the reply reached the token limit before this tool call was complete"
_SHORTER = "so the call was not made; write it again with shorter arguments"


def _logprob_items(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's (or a chunk choice's) ``logprobs.content`` items, as the server sent them."""
    block = choice.get("logprobs")
    return (block.get("content") or None) if isinstance(block, dict) else None


def response_format(grammar: Grammar) -> dict[str, Any]:
    """A request's grammar as OpenAI's response_format (what vLLM, SGLang and our server take);
    grammars it cannot say (Lark, regex) are refused rather than dropped."""
    if grammar.kind == "json":
        return {"type": "json_object"}
    if grammar.kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": json.loads(grammar.source)}}
    raise InvalidRequestError(f"the remote backend sends JSON grammars only (response_format); "
                              f"a {grammar.kind} grammar needs a local backend")


class RemoteBackendError(AgentSparkError):
    """The server refused the request or stayed unreachable after the retries."""


class LogprobsRefusedError(RemoteBackendError):
    """HTTP 400 to a request that asked for logprobs, with an error about logprobs (``about_logprobs``):
    the server does not serve them. Never retried here: asking again without them changes the
    request, which only the caller may decide."""


def about_logprobs(error_body: str) -> bool:
    """Whether a 400's body is about ``logprobs`` / ``top_logprobs``: OpenAI's error ``param``
    where the server names one (a 400 about another parameter is not, whatever its message
    quotes), else its message (vLLM, llama.cpp and our server name no param)."""
    try:
        data = json.loads(error_body)
    except ValueError:
        return "logprob" in error_body.lower()
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        param = error.get("param")
        if isinstance(param, str) and param:
            return "logprob" in param.lower()
        return "logprob" in str(error.get("message", error)).lower()
    message = data.get("message", error) if isinstance(data, dict) else data  # vLLM: {"object": "error", "message": ...}
    return "logprob" in str(message).lower()


MAX_RETRY_AFTER_S = 60.0  # a server asking for longer gets this; the caller's timeout still bounds the whole


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx); ``retry_after``: seconds the
    server asked to wait (its Retry-After header), if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header -> seconds to wait (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _wait_at_least_retry_after(backoff: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    """The exponential backoff, or the server's Retry-After where it asks for longer."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = getattr(exc, "retry_after", None)
        return max(backoff(state), min(asked, MAX_RETRY_AFTER_S)) if asked is not None else backoff(state)

    return wait


def to_wire(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our messages -> OpenAI wire format (tool-call arguments as JSON strings)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != RAW_TEXT_KEY}
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": c["function"]["arguments"]
                                   if isinstance(c["function"]["arguments"], str)
                                   else json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
                for c in m["tool_calls"]
            ]
        out.append(m)
    return out


def from_wire(message: dict[str, Any], *, parse_text_tools: bool, cut_off: bool = False,
              extension: dict[str, Any] | None = None) -> AssistantMessage:
    """A server's assistant message -> ours; servers without a tool parser leave calls in the text.

    ``cut_off``: the server's finish_reason was "length", so the last call may be a fragment (see
    the module docstring). ``extension``: our server's ``agentspark`` field, whose
    ``invalid_tool_calls`` are the calls it could not use (they are not in its message)."""
    calls, invalid = [], []
    wire_calls = message.get("tool_calls") or []
    for k, c in enumerate(wire_calls):
        fn = c.get("function") or {}
        name, raw = fn.get("name") or "", fn.get("arguments")
        cut_here = cut_off and k == len(wire_calls) - 1  # only the last call can have been cut
        if cut_here and (not name or raw is None or raw == ""):  # cut before its arguments began
            missing = "arguments" if name else "name"
            invalid.append(InvalidToolCallRequest(raw=json.dumps(fn, ensure_ascii=False),
                                                  error=f"{_CUT} (it has no {missing} yet), {_SHORTER}"))
            continue
        raw = raw or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
            calls.append(ToolCallRequest(id=c.get("id") or f"call_{len(calls)}", name=name, args=args))
        except (ValueError, TypeError) as exc:
            error = (f"{_CUT} (its arguments are not complete JSON: {exc}), {_SHORTER}" if cut_here
                     else f"tool call arguments are not valid JSON: {exc}")
            invalid.append(InvalidToolCallRequest(raw=str(raw), error=error))
    reported = extension.get("invalid_tool_calls") if isinstance(extension, dict) else None
    for bad in reported if isinstance(reported, list) else []:
        if isinstance(bad, dict):
            invalid.append(InvalidToolCallRequest(raw=str(bad.get("raw", "")), error=str(bad.get("error", ""))))
    content = message.get("content") or ""
    if not calls and not invalid and parse_text_tools:
        return reply_message(content, parse_tools=True, cut_off=cut_off)
    return AssistantMessage(content=content, tool_calls=calls, invalid_tool_calls=invalid)


def checked_base_url(base_url: str) -> str:
    """``base_url`` if it is an http(s) URL with a host, else a RemoteBackendError saying so.

    httpx raises its own InvalidURL for some malformed URLs, and accepts others (``ftp://x``,
    ``http://[``, ``localhost:8000`` read as scheme "localhost") only to fail every request after
    the retries; either way the mistake is the URL's, and is reported here, at once.
    """
    hint = "give the server's address, e.g. http://localhost:8000"
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise RemoteBackendError(f"base URL {base_url!r} is not a valid URL ({exc}); {hint}") from exc
    if url.scheme not in ("http", "https"):
        raise RemoteBackendError(f"base URL {base_url!r} must start with http:// or https://; {hint}")
    if not url.host or "%" in url.host:  # httpx percent-encodes what cannot be in a host name
        raise RemoteBackendError(f"base URL {base_url!r} has no valid host name; {hint}")
    if url.port is not None and not 0 < url.port < 65536:
        raise RemoteBackendError(f"base URL {base_url!r} has port {url.port}, outside 1..65535; {hint}")
    return base_url


def server_root(base_url: str) -> str:
    """The server's root, to which ``/v1/...`` paths are added: ``base_url`` without trailing
    slashes and without a final ``/v1``. OpenAI's clients, vLLM's, SGLang's and llama.cpp's docs
    give base URLs ending in ``/v1`` (``http://localhost:8000/v1``); taken as they are, every
    request went to ``/v1/v1/chat/completions`` and 404ed (found against a real llama-server)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class RemoteBackend(Backend):
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = f"remote:{model}"
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self.base_url = server_root(checked_base_url(base_url))  # names the server (the audit keys its refusals by it)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers, transport=transport)

    def _body(self, messages, tools, sampling: SamplingParams, tool_choice, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_wire(messages),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "stream": stream,
        }
        if sampling.top_k:
            body["top_k"] = sampling.top_k  # vLLM and SGLang accept it; OpenAI ignores unknown fields
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.grammar is not None:
            body["response_format"] = response_format(sampling.grammar)
        if sampling.logprobs is not None:
            body["logprobs"] = True
            if sampling.logprobs:
                body["top_logprobs"] = sampling.logprobs
        if tools:
            body["tools"] = tools
            if sampling.parallel_tool_calls:  # else the server's own default (OpenAI's: true)
                body["parallel_tool_calls"] = True
            body["tool_choice"] = tool_choice if tool_choice in ("auto", "none", "required") else {
                "type": "function", "function": {"name": tool_choice}}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _send(self, body: dict[str, Any], stream: bool) -> httpx.Response:
        """POST with retries on transient failures; the response is open (streaming) or read."""

        def attempt() -> httpx.Response:
            try:
                request = self.client.build_request("POST", "/v1/chat/completions", json=body)
                response = self.client.send(request, stream=stream)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code == 429 or response.status_code >= 500:
                response.read()
                response.close()
                raise _Transient(f"HTTP {response.status_code}: {response.text[:200]}",
                                 retry_after_s(response.headers.get("retry-after")))
            if response.status_code >= 400:
                response.read()
                response.close()
                if response.status_code == 400 and "logprobs" in body and about_logprobs(response.text):
                    raise LogprobsRefusedError(f"{self.name} at {self.base_url} refused logprobs: HTTP 400: "
                                               f"{response.text[:500]}")
                raise RemoteBackendError(f"{self.name} refused the request: HTTP {response.status_code}: {response.text[:500]}")
            return response

        try:
            for round_ in Retrying(
                retry=retry_if_exception(lambda e: isinstance(e, _Transient)),
                stop=stop_after_attempt(self.retries + 1),
                wait=_wait_at_least_retry_after(wait_exponential(multiplier=self.backoff, max=10 * self.backoff)),
                reraise=True,
            ):
                with round_:
                    return attempt()
        except _Transient as exc:
            raise RemoteBackendError(f"{self.name} at {self.client.base_url} failed after {self.retries} retries: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        sampling = sampling or SamplingParams()
        response = self._send(self._body(messages, tools, sampling, tool_choice, stream=True), stream=True)
        content, finish, usage, extension = "", "stop", {}, None
        calls: dict[int, dict[str, Any]] = {}
        logprobs: list[dict[str, Any]] | None = None if sampling.logprobs is None else []
        try:
            for message in EventSource(response).iter_sse():
                data = message.data.strip()
                if not data:
                    continue
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("error"):  # after the headers a server reports failures as an event
                    err = event["error"]
                    err = err.get("message", err) if isinstance(err, dict) else err
                    raise RemoteBackendError(f"{self.name} failed mid-stream: {err}")
                usage = event.get("usage") or usage
                extension = event.get("agentspark") or extension  # our server, on its last chunks
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    items = _logprob_items(choice) if logprobs is not None else None
                    if items:
                        logprobs.extend(items)
                    if delta.get("content") or items:
                        content += delta.get("content") or ""
                        yield BackendChunk(delta=delta.get("content") or "", logprobs=items)
                    for tc in delta.get("tool_calls") or []:  # arguments arrive in pieces
                        slot = calls.setdefault(tc.get("index", 0), {"id": "", "function": {"name": "", "arguments": ""}})
                        slot["id"] = tc.get("id") or slot["id"]
                        fn = tc.get("function") or {}
                        slot["function"]["name"] += fn.get("name") or ""
                        slot["function"]["arguments"] += fn.get("arguments") or ""
                    finish = choice.get("finish_reason") or finish
        except (httpx.HTTPError, SSEError, ValueError) as exc:  # connection lost, not an event stream, a malformed event
            raise RemoteBackendError(f"{self.name} stream broke off: {type(exc).__name__}: {exc}") from exc
        finally:
            response.close()
        message = from_wire({"content": content, "tool_calls": [calls[i] for i in sorted(calls)]},
                            parse_text_tools=bool(tools), cut_off=finish == "length", extension=extension)
        yield BackendChunk(
            delta="",
            response=BackendResponse(
                message=message,
                finish_reason=finish_reason(message, finish),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                backend=self.name,
                logprobs=logprobs,
            ),
        )

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> BackendResponse:
        sampling = sampling or SamplingParams()
        response = self._send(self._body(messages, tools, sampling, tool_choice, stream=False), stream=False)
        try:
            data = response.json()
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise RemoteBackendError(f"{self.name} sent an unreadable response: {response.text[:300]}") from exc
        finish = choice.get("finish_reason") or "stop"
        message = from_wire(choice.get("message") or {}, parse_text_tools=bool(tools), cut_off=finish == "length",
                            extension=data.get("agentspark"))
        usage = data.get("usage") or {}
        return BackendResponse(
            message=message,
            finish_reason=finish_reason(message, finish),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            backend=self.name,
            logprobs=None if sampling.logprobs is None else _logprob_items(choice) or [],
        )

    def close(self) -> None:
        self.client.close()
