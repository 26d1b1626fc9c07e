"""Runs backend generations on worker threads (lanes), with cancellation.

A single-request backend (the local engine) gets one lane: requests queue in arrival order and the
event loop stays free. A concurrent backend (the batch backend, whose own thread runs every
request's rounds) gets a lane per admitted request, each only relaying its request's chunks. A job
iterates the backend's stream on that thread and hands each chunk to the event loop through an
asyncio queue. ``cancel()`` (client gone, server stopping) is checked between chunks; the
backend generator is then closed, which stops the engine mid-request. A job cancelled while
still queued never touches the backend.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..backends.base import BackendChunk

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Job:
    def __init__(self, start: Callable[[], Iterator[BackendChunk]], loop: asyncio.AbstractEventLoop) -> None:
        self._start = start
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.done = threading.Event()
        self.chunks_pulled = 0

    # ---- worker thread ----
    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
            self._cancelled.set()

    def run(self) -> None:
        try:
            if self._cancelled.is_set():
                return
            stream = self._start()
            try:
                for chunk in stream:
                    self.chunks_pulled += 1
                    if self._cancelled.is_set():
                        break
                    self._put(chunk)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # stops the engine if we broke off early
        except BaseException as exc:  # handed to the request handler, which answers with it
            self._put(_Failure(exc))
        finally:
            self._put(_END)
            self.done.set()

    # ---- event loop ----
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next(self, timeout: float | None = None) -> BackendChunk | None:
        """The next chunk; None at the end; raises what the backend raised, or TimeoutError."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            return None
        if isinstance(item, _Failure):
            raise item.exc
        return item


class Runner:
    """The lanes every generation of an app goes through."""

    def __init__(self, lanes: int = 1) -> None:
        self.lanes = lanes
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: set[Job] = set()
        self.start()

    @property
    def active(self) -> int:
        """Jobs submitted and not yet done (running or queued for a lane)."""
        return len(self._jobs)

    def start(self) -> None:
        """Open the lane (again): an app's lifespan may run more than once, as test clients
        start and stop it per test, and each run must serve, not fail on a closed executor."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="agentspark-generate")

    def submit(self, start: Callable[[], Iterator[BackendChunk]], on_done: Callable[[], None] | None = None) -> Job:
        """Run ``start()``'s stream on a lane; ``on_done`` is called on the event loop once the job
        is done (finished, failed or cancelled)."""
        if self._executor is None:
            raise RuntimeError("the runner is shut down (the app's lifespan has ended)")
        loop = asyncio.get_running_loop()
        job = Job(start, loop)
        self._jobs.add(job)
        future = loop.run_in_executor(self._executor, job.run)

        def done(_: object) -> None:
            self._jobs.discard(job)
            if on_done is not None:
                on_done()

        future.add_done_callback(done)
        return job

    def shutdown(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
