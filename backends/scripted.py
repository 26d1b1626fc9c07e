"""ScriptedBackend: answers from a script, for tests of everything above the backend.

Each script entry is the raw text a model would have produced (parsed for tool calls exactly as
the local backend parses a model's text), a ``CutOff`` (raw text the token budget ended: parsed
and reported as the local backend reports a reply cut by ``max_new_tokens``), an
``AssistantMessage``, or a callable that receives the request's messages and returns one of
those. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import AgentSparkError
from ..sampling import SamplingParams
from .base import AssistantMessage, Backend, BackendChunk, BackendResponse, ToolChoice, finish_reason, reply_message


@dataclass(frozen=True)
class CutOff:
    """A scripted reply that the token budget ended (finish_reason "length")."""

    text: str


ScriptReply = str | CutOff | AssistantMessage
ScriptEntry = ScriptReply | Callable[[list[dict[str, Any]]], ScriptReply]


class ScriptExhaustedError(AgentSparkError):
    pass


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, script: Sequence[ScriptEntry]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []

    def stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        index = len(self.requests)
        self.requests.append({"messages": [dict(m) for m in messages], "tools": tools, "tool_choice": tool_choice,
                              "sampling": sampling})
        if index >= len(self.script):
            raise ScriptExhaustedError(f"the script has {len(self.script)} responses; request {index + 1} has none")
        entry = self.script[index]
        if callable(entry):
            entry = entry(messages)
        generation = "length" if isinstance(entry, CutOff) else "stop"
        if isinstance(entry, AssistantMessage):
            message, text = entry, entry.content
        else:
            text = entry.text if isinstance(entry, CutOff) else entry
            message = reply_message(text, parse_tools=bool(tools), cut_off=generation == "length")
        for piece in re.findall(r"\S*\s*", text):  # word-sized pieces, as a model streams
            if piece:
                yield BackendChunk(delta=piece)
        yield BackendChunk(
            delta="",
            response=BackendResponse(
                message=message,
                finish_reason=finish_reason(message, generation),
                prompt_tokens=sum(len(str(m.get("content", ""))) for m in messages),
                completion_tokens=len(text),
                backend=self.name,
            ),
        )
