"""Server-sent events for ``stream: true``: content deltas as the backend produces them, then
the tool calls, the finish reason, the usage (on request) and ``data: [DONE]``.

When tools are offered, text that may be the start of a tool call (``<``, ``{``, ``[`` or a
backtick: the markup the tool-call parser recognises) is held back until the message is complete;
the parsed content then fixes what remains to send. So the concatenated deltas equal the
non-streamed ``content`` and never carry tool-call markup.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..backends.base import BackendChunk, BackendResponse
from . import schemas
from .errors import translate
from .metrics import RequestTimer
from .runner import Job

log = logging.getLogger("agentspark.server")

_MAY_START_A_CALL = "<{[`"
POLL_S = 0.25  # how often a waiting request checks whether its client is still there


class ClientGone(Exception):
    pass


class DisconnectWatch:
    """Asks the server whether a request's client is still there, at most every POLL_S seconds."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.last = time.monotonic()

    async def gone(self, *, force: bool = False) -> bool:
        if not force and time.monotonic() - self.last < POLL_S:
            return False
        self.last = time.monotonic()
        return await self.request.is_disconnected()


async def next_chunk(job: Job, watch: DisconnectWatch) -> BackendChunk | None:
    """The job's next chunk; ClientGone once the client has disconnected (checked while chunks
    flow and while we wait for one)."""
    while True:
        if await watch.gone():
            raise ClientGone()
        try:
            return await job.next(timeout=POLL_S)
        except (TimeoutError, asyncio.TimeoutError):
            if await watch.gone(force=True):
                raise ClientGone() from None


class ContentFilter:
    """Decides which text of a stream is content that can be sent right away."""

    def __init__(self, parse_tools: bool) -> None:
        self.parse_tools = parse_tools
        self.text = ""
        self.sent = ""
        self.holding = False

    def feed(self, delta: str) -> str:
        self.text += delta
        if not self.parse_tools:
            piece = delta
        elif self.holding:
            return ""
        else:
            cut = min((i for i in (self.text.find(c) for c in _MAY_START_A_CALL) if i >= 0), default=-1)
            self.holding = cut >= 0
            safe = (self.text[:cut] if self.holding else self.text).strip()  # the parser strips content
            piece = safe[len(self.sent):]
        self.sent += piece
        return piece

    def finish(self, content: str) -> str:
        if content.startswith(self.sent):
            return content[len(self.sent):]
        log.warning("streamed content is not a prefix of the parsed content; the remainder is dropped")
        return ""


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@dataclass
class StreamEnd:
    """What ``guarded_chunks`` yields last: the final response, or None when the stream ended
    otherwise (the client left: nothing more to send; an error: ``error_event`` carries it)."""

    final: BackendResponse | None
    error_event: str | None = None


async def guarded_chunks(job: Job, watch: DisconnectWatch,
                         timer: RequestTimer) -> AsyncIterator[BackendChunk | StreamEnd]:
    """A streamed request's chunks as they come, then its StreamEnd. A client that leaves cancels
    the job; an error after the headers cancels it and becomes an event (the status is sent
    already); the timer hears of each outcome."""
    final: BackendResponse | None = None
    try:
        while (current := await next_chunk(job, watch)) is not None:
            timer.saw(current.delta)
            final = current.response or final
            yield current
        if final is None:
            raise RuntimeError("the backend ended its stream without a response")
    except ClientGone:
        job.cancel()
        timer.ended("cancelled")
        yield StreamEnd(None)
        return
    except Exception as exc:  # headers are gone already: the error travels as an event
        job.cancel()
        timer.ended("error")
        yield StreamEnd(None, sse(translate(exc).body()))
        return
    timer.finished(final.stats, final.completion_tokens)
    yield StreamEnd(final)


async def sse_events(job: Job, watch: DisconnectWatch, timer: RequestTimer, *, completion_id: str, model: str,
                     parse_tools: bool, include_usage: bool, call_ids: Callable[[int], list[str]]) -> AsyncIterator[str]:
    """The stream's events; the first (the assistant role) goes out before the request has made
    a token, so a queued request's client sees its headers and the role at once."""
    created = schemas.now()

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        return sse(schemas.chunk_body(completion_id=completion_id, created=created, model=model,
                                      delta=delta, finish_reason=finish, **extra))

    yield chunk({"role": "assistant", "content": ""})
    filt = ContentFilter(parse_tools)
    pending: list[dict[str, Any]] | None = None  # logprobs of tokens whose text has not gone out yet
    async for current in guarded_chunks(job, watch, timer):
        if isinstance(current, StreamEnd):
            end = current
            break
        if current.logprobs is not None:
            pending = (pending or []) + current.logprobs
        piece = filt.feed(current.delta) if current.delta else ""
        if piece:
            yield chunk({"content": piece}, logprobs=pending)
            pending = None
    if end.final is None:
        if end.error_event:
            yield end.error_event
        return
    final = end.final
    message = final.message
    rest = filt.finish(message.content)
    if rest or pending:  # the tokens held back (a stop string's prefix, tool-call markup) and their logprobs
        yield chunk({"content": rest}, logprobs=pending)
    if message.tool_calls:
        calls = schemas.wire_tool_calls(message.tool_calls, call_ids(len(message.tool_calls)), indexed=True)
        yield chunk({"tool_calls": calls})
    ext = schemas.extension(final)
    yield chunk({}, final.finish_reason, agentspark=ext)
    if include_usage:
        yield chunk(None, usage=schemas.usage(final), agentspark=ext)
    yield "data: [DONE]\n\n"


class JobStreamingResponse(StreamingResponse):
    """A StreamingResponse that cancels its job however the response ends (done, disconnect, error)."""

    def __init__(self, content: AsyncIterator[str], job: Job, timer: RequestTimer) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job, self.timer = job, timer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()
            self.timer.ended("cancelled")  # a no-op when the stream reached its end
