"""BatchBackend: many conversations at once through one BatchEngine (continuous batching).

The local backend serves one request at a time on one engine; this one hands every request to a
BatchWorker (agentspark/batch_worker.py), whose thread runs the batch engine's rounds for all of
them, so any number of callers (the server's handlers, an agent's parallel sub-agents) may call
``stream`` at once, each getting its own deltas. Chat templates, tools and tool_choice are those of
the local backend (the same ``prepare_request`` and ``relay``), and each request's output is what
the local backend gives it alone (batch.py: lossless request by request).

Sessions: there is no per-caller cache to keep; the engine's prefix reuse finds, for every
request, the free slot holding the longest prefix of its conversation, whoever sent it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..batch import BatchEngine
from ..batch_worker import BatchWorker
from ..errors import InvalidRequestError
from ..sampling import SamplingParams
from ..stats import EngineClock
from .base import Backend, BackendChunk, ToolChoice
from .local import PreparedRequest, forcing, prepare_request, relay, text_request, token_text


class BatchBackend(Backend):
    concurrent = True  # stream() may be called from many threads at once

    def __init__(self, engine: BatchEngine, *, speculative: bool = True, close_forced_calls: bool = False,
                 constrain_tool_calls: bool = True) -> None:
        """``constrain_tool_calls`` and ``close_forced_calls``: the local backend's (a forced call
        is a grammar by default; False is the older text path)."""
        if engine.tokenizer is None:
            raise InvalidRequestError("a batch backend needs a model with a tokenizer and a chat template")
        self.engine = engine
        self.worker = BatchWorker(engine)
        self.speculative = speculative and engine.drafter_name != "none"
        self.close_forced_calls = close_forced_calls
        self.constrain_tool_calls = constrain_tool_calls
        self.name = f"batch-{engine.drafter_name if self.speculative else 'plain'}"

    @property
    def slots(self) -> int:
        return self.engine.slots

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting for a slot)."""
        return self.worker.load()

    def engine_clock(self) -> EngineClock:
        return self.engine.clock  # read from the server's thread while the worker adds to it: floats, no lock

    def prepare(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                sampling: SamplingParams | None = None, tool_choice: ToolChoice = "auto", *,
                close_forced_call: bool | None = None, constrain_tool_call: bool | None = None) -> PreparedRequest:
        return prepare_request(self.engine.tokenizer, messages, tools, sampling, tool_choice,
                               **forcing(self, close_forced_call, constrain_tool_call))

    def open(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
             sampling: SamplingParams | None = None, tool_choice: ToolChoice = "auto") -> Iterator[BackendChunk]:
        """Check and queue the request now (a bad one raises here); its chunks as they come.
        Closing the iterator early cancels the request and frees its slot."""
        prepared = self.prepare(messages, tools, sampling, tool_choice)
        ticket = self.worker.submit(prepared.prompt_ids, prepared.params, speculative=self.speculative)
        return _closing(relay(ticket, prepared, tools if tool_choice != "none" else None, self.name,
                              token_text(self.engine.tokenizer)), ticket)

    def open_text(self, prompt: str | list[int], sampling: SamplingParams | None = None) -> Iterator[BackendChunk]:
        prepared = text_request(self.engine.tokenizer, prompt, sampling)
        ticket = self.worker.submit(prepared.prompt_ids, prepared.params, speculative=self.speculative)
        return _closing(relay(ticket, prepared, None, self.name, token_text(self.engine.tokenizer)), ticket)

    def stream(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               sampling: SamplingParams | None = None, tool_choice: ToolChoice = "auto") -> Iterator[BackendChunk]:
        yield from self.open(messages, tools, sampling, tool_choice)

    def close(self) -> None:
        """Stop the worker thread (requests still running end with an error)."""
        self.worker.close()


def _closing(chunks: Iterator[BackendChunk], ticket: Any) -> Iterator[BackendChunk]:
    try:
        yield from chunks
    finally:
        ticket.close()  # a no-op once the request has ended; else it cancels it
