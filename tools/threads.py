"""Run a blocking tool in its own daemon thread and await it from the event loop.

Why not ``asyncio.to_thread``: its threads belong to the loop's default executor, and both
``asyncio.run`` (which waits for that executor on shutdown) and interpreter exit (which joins
executor threads) would then wait for a tool we already gave up on after its timeout. A daemon
thread per call is truly abandoned: it may finish in the background, but nobody waits for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any


async def run_in_daemon_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await ``fn(*args, **kwargs)`` run in a fresh daemon thread (context variables copied)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled: the caller timed out and moved on
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def work() -> None:
        result, error = None, None
        try:
            result = context.run(fn, *args, **kwargs)
        except StopIteration as exc:  # a Future refuses StopIteration; keep the failure visible
            error = RuntimeError(f"tool raised StopIteration: {exc}")
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: the call was abandoned long ago

    threading.Thread(target=work, name=f"tool-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future
