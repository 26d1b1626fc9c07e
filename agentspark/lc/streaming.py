"""Streaming helpers for ChatAgentSpark: which text is safe to emit while tool calls may be coming
(``Gate``), and a blocking iterator pumped to the event loop (``iterate_in_thread``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.utils.json import parse_partial_json

__all__ = ["Gate", "iterate_in_thread", "reads_as_object"]

_BARRIERS = ("<tool_call>", "```", "{", "[")  # where tool-call markup can begin in a model's text


class Gate:
    """Decides which streamed text is safe to emit now (see ``agentspark.langchain_chat``)."""

    def __init__(self, hold: bool) -> None:
        self.hold, self.text, self.sent, self.cut = hold, "", "", 0
        self.frozen = False  # a barrier was seen: nothing more streams until the end

    def feed(self, delta: str) -> str:
        if not self.hold:
            self.sent += delta
            return delta
        self.text += delta
        if self.frozen:
            return ""
        found = [i for i in (self.text.find(b, self.cut) for b in _BARRIERS) if i >= 0]
        if found:
            self.cut, self.frozen = min(found), True
        else:
            tail = len(self.text)
            for i in range(max(self.cut, tail - len(_BARRIERS[0]) + 1), tail):
                if any(b.startswith(self.text[i:]) for b in _BARRIERS):
                    tail = i
                    break
            self.cut = tail
        return self._advance(self.text[: self.cut].strip())

    def _advance(self, target: str) -> str:
        if not target.startswith(self.sent):
            return ""  # cannot happen for parsed text; never emit what could need taking back
        new, self.sent = target[len(self.sent):], target
        return new

    def finish(self, content: str) -> str:
        return self._advance(content)


def reads_as_object(raw: str) -> bool:
    """Whether LangChain's chunk parser would read ``raw`` as a JSON object (a valid-looking call)."""
    try:
        return isinstance(parse_partial_json(raw), dict)
    except Exception:  # noqa: BLE001 -- not JSON at all
        return False


_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Iterate a blocking iterator in a daemon thread; items reach the event loop through a queue.
    Leaving early stops the iterator at its next item (and closes it, in its thread)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stopped = threading.Event()

    def put(item: Any, exc: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, exc))
        except RuntimeError:  # the loop is gone: nobody is listening
            stopped.set()

    def pump() -> None:
        iterator = None
        try:
            iterator = make()
            for item in iterator:
                if stopped.is_set():
                    break
                put(item)
        except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, raised there
            put(_END, exc)
        else:
            put(_END)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(pump,), name="agentspark-astream", daemon=True).start()
    try:
        while True:
            item, exc = await queue.get()
            if item is _END:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stopped.set()
