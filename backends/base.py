"""The one interface every backend implements: messages + tools + sampling in, an assistant
message (content and tool calls) with round statistics out; streaming as text deltas.

Messages are OpenAI-style dicts: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``;
an assistant message may carry ``"tool_calls": [{"id", "type": "function", "function":
{"name", "arguments": dict}}]`` and a tool message ``"tool_call_id"`` and ``"name"``. Inside
agentspark arguments stay dicts; the OpenAI wire format (a JSON string) exists only at the HTTP
boundary (the remote backend and our server).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..agent.parsing import parse_tool_calls
from ..agent.tool_prompt import RAW_TEXT_KEY
from ..sampling import SamplingParams
from ..stats import EngineClock, RequestStats

ToolChoice = Literal["auto", "none", "required"] | str  # or the name of one tool to force


@dataclass(frozen=True)
class ToolCallRequest:
    """A tool call the model asked for, in LangChain's shape."""

    id: str
    name: str
    args: dict[str, Any]

    def to_message_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.args}}


@dataclass(frozen=True)
class InvalidToolCallRequest:
    """Text that looked like a tool call but could not be used; fed back to the model."""

    raw: str
    error: str


@dataclass
class AssistantMessage:
    content: str
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCallRequest] = field(default_factory=list)
    raw_text: str | None = None  # what the model generated, markup included (local backends)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_message_dict() for c in self.tool_calls]
        if self.raw_text is not None:
            out[RAW_TEXT_KEY] = self.raw_text  # lets a plain template re-render the turn verbatim
        return out


@dataclass
class BackendResponse:
    message: AssistantMessage
    finish_reason: str  # "stop" | "length" | "tool_calls" (see ``finish_reason``)
    prompt_tokens: int
    completion_tokens: int
    backend: str
    stats: RequestStats | None = None  # round statistics where the backend can see them
    prompt_ids: list[int] | None = None  # local backends: for traces and audits
    completion_ids: list[int] | None = None  # local backends: the generated token ids
    forced_prefix: str = ""  # text the backend put in the model's mouth (tool_choice), if any
    forced_suffix: str = ""  # text the backend appended to close a forced call, if any
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content items, when asked (logprobs.py)


def reply_message(text: str, *, parse_tools: bool, cut_off: bool = False) -> AssistantMessage:
    """A model's raw reply as a message, tool calls parsed when tools were offered. ``cut_off``:
    the token budget ended the reply, so a call it was still writing lands in
    ``invalid_tool_calls`` (saying so), never in the content or in ``tool_calls``."""
    if not parse_tools:
        return AssistantMessage(content=text)
    parsed = parse_tool_calls(text, cut_off=cut_off)
    return AssistantMessage(
        content=parsed.content,
        tool_calls=[ToolCallRequest(id=c.id, name=c.name, args=dict(c.args)) for c in parsed.tool_calls],
        invalid_tool_calls=[InvalidToolCallRequest(raw=c.raw, error=c.error) for c in parsed.invalid_tool_calls],
    )


def finish_reason(message: AssistantMessage, generation: str) -> str:
    """The reply's finish_reason from what ended its generation ("stop" | "length").

    "length" whenever the budget cut the reply, calls or not: a client must be able to tell a
    truncated reply (a call it was writing is in ``invalid_tool_calls``); "tool_calls" only for
    a reply that ended on its own with calls."""
    if generation == "length":
        return "length"
    return "tool_calls" if message.tool_calls else generation


def response_record(response: BackendResponse) -> dict[str, Any]:
    """The assistant message as a trace records it (with the generated token ids when known)."""
    out = response.message.to_dict()
    if response.completion_ids is not None:
        out["token_ids"] = list(response.completion_ids)
    return out


@dataclass
class BackendChunk:
    delta: str
    response: BackendResponse | None = None  # set on the last chunk only
    logprobs: list[dict[str, Any]] | None = None  # logprobs.content items of the tokens behind this delta


class Backend(ABC):
    name: str = "backend"
    concurrent: bool = False  # True: stream() may run on many threads at once (BatchBackend)

    @abstractmethod
    def stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        """Yield text deltas; the last chunk carries the full response."""

    def open(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        """``stream``, for callers that want a bad request to raise now rather than at the first
        chunk (the server, before it sends a stream's headers). By default nothing is checked early."""
        return self.stream(messages, tools, sampling, tool_choice)

    def open_text(self, prompt: str | list[int], sampling: SamplingParams | None = None) -> Iterator[BackendChunk]:
        """A plain completion (the server's /v1/completions): ``prompt`` as text or token ids,
        continued as is, no chat template, no tools; checked now, chunks as ``open``'s. Backends
        that hold a model offer it; the others serve chat only."""
        from ..errors import InvalidRequestError

        raise InvalidRequestError(f"the {self.name} backend serves chat completions only, not plain completions")

    def load(self) -> tuple[int, int] | None:
        """(requests running, requests waiting) where the backend knows them, else None."""
        return None

    def engine_clock(self) -> EngineClock | None:
        """Where the backend's batch engine spent its rounds' time, where it has one, else None."""
        return None

    def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> BackendResponse:
        for chunk in self.stream(messages, tools, sampling, tool_choice):
            if chunk.response is not None:
                return chunk.response
        raise AssertionError(f"backend {self.name} ended its stream without a response")  # pragma: no cover

    def reset(self) -> None:
        """Forget per-session state (a local backend's reusable KV cache)."""
