"""BatchWorker: a BatchEngine driven by one thread of its own, fed by any number of others.

The engine is not thread-safe and need not be: only the worker's thread touches it. Other threads
(the server's request handlers) ``submit`` a request, which is checked on their own thread
(``BatchEngine.prepare``: a bad prompt raises there, before anything is queued), and get a
``Ticket`` to iterate its chunks from. Between rounds the worker takes in the new requests and the
cancellations, runs one ``step`` and hands every request the chunks that round committed for it.
A round that raises ends every request it held with that error (``BatchEngine.fail_all``); the
worker serves on.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

from .batch import BatchEngine, BatchRequest
from .request import StreamChunk
from .errors import AgentSparkError
from .prompts import Prompt
from .sampling import SamplingParams

log = logging.getLogger("agentspark")


class WorkerClosedError(AgentSparkError):
    """The batch worker was shut down before the request ended."""


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Ticket:
    """One request's chunks as they are committed; ``close()`` (or leaving the iteration early)
    cancels it. Iterate it from one thread."""

    def __init__(self, worker: BatchWorker, handle: BatchRequest) -> None:
        self.worker, self.handle = worker, handle
        self._chunks: queue.SimpleQueue[StreamChunk | _Failure] = queue.SimpleQueue()
        self._ended = False

    def __iter__(self) -> Iterator[StreamChunk]:
        try:
            while not self._ended:
                item = self._chunks.get()
                if isinstance(item, _Failure):
                    self._ended = True
                    raise item.exc
                if item.result is not None:
                    self._ended = True
                yield item
        finally:
            self.close()

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self.worker.cancel(self.handle)


class BatchWorker:
    def __init__(self, engine: BatchEngine, *, name: str = "agentspark-batch") -> None:
        self.engine = engine
        self._name = name
        self._wake = threading.Condition()
        self._inbox: list[Ticket] = []
        self._cancels: list[BatchRequest] = []
        self._tickets: dict[int, Ticket] = {}  # id(handle) -> its ticket, while the engine holds it
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def slots(self) -> int:
        return self.engine.slots

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, speculative: bool = True) -> Ticket:
        """Check the request here (raises for a bad one), queue it for the worker; its ticket."""
        handle = self.engine.prepare(prompt, params, speculative=speculative)
        ticket = Ticket(self, handle)
        with self._wake:
            if self._closed:
                raise WorkerClosedError("the batch worker is shut down")
            self._inbox.append(ticket)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return ticket

    def cancel(self, handle: BatchRequest) -> None:
        with self._wake:
            self._cancels.append(handle)
            self._wake.notify()

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting for a slot): read without stopping the worker."""
        with self._wake:
            inbox = len(self._inbox)
        return len(self.engine.running), len(self.engine.waiting) + inbox

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker: requests still held end with WorkerClosedError."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # ---- the worker's thread ----------------------------------------------------------------
    def _serve(self) -> None:
        engine = self.engine
        while True:
            with self._wake:
                while not (self._closed or self._inbox or self._cancels or not engine.idle):
                    self._wake.wait()
                if self._closed:
                    break
                new, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            for ticket in new:
                engine.enqueue(ticket.handle)
                self._tickets[id(ticket.handle)] = ticket
            for handle in cancels:
                engine.cancel(handle)
                self._tickets.pop(id(handle), None)
            try:
                touched = engine.step()
            except Exception as exc:  # noqa: BLE001 (every request learns it; the worker serves on)
                log.error("a batched round failed; its requests end with the error", exc_info=exc)
                for handle in engine.fail_all(exc):
                    self._fail(handle, exc)
                continue
            for handle in touched:
                self._deliver(handle)
        closed = WorkerClosedError("the batch worker was shut down before the request ended")
        with self._wake:
            pending, self._inbox = self._inbox, []
        for ticket in pending:
            ticket._chunks.put(_Failure(closed))
        for handle in engine.fail_all(closed):
            self._fail(handle, closed)

    def _deliver(self, handle: BatchRequest) -> None:
        ticket = self._tickets.get(id(handle))
        if ticket is None:  # cancelled meanwhile: nobody listens
            handle.chunks.clear()
            return
        for chunk in handle.chunks:
            ticket._chunks.put(chunk)
        handle.chunks.clear()  # delivered: a long request does not keep them all
        if handle.done:
            del self._tickets[id(handle)]

    def _fail(self, handle: BatchRequest, exc: BaseException) -> None:
        ticket = self._tickets.pop(id(handle), None)
        if ticket is not None:
            ticket._chunks.put(_Failure(exc))
