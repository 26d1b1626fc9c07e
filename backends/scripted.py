"""ScriptedBackend: answers from a script, for tests of everything above the backend.

Each script entry is the raw text a model would have produced (parsed for tool calls exactly as
the local backend parses a model's text), an ``AssistantMessage``, or a callable that receives
the request's messages and returns either. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import AgentSparkError
from ..sampling import SamplingParams
from .base import AssistantMessage, Backend, BackendChunk, BackendResponse, ToolChoice
from .messages import message_from_text

ScriptEntry = str | AssistantMessage | Callable[[list[dict[str, Any]]], "str | AssistantMessage"]


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
        self.requests.append({"messages": [dict(m) for m in messages], "tools": tools, "tool_choice": tool_choice})
        if index >= len(self.script):
            raise ScriptExhaustedError(f"the script has {len(self.script)} responses; request {index + 1} has none")
        entry = self.script[index]
        if callable(entry):
            entry = entry(messages)
        message = entry if isinstance(entry, AssistantMessage) else message_from_text(entry, parse_tools=bool(tools))
        text = entry if isinstance(entry, str) else message.content
        for piece in re.findall(r"\S*\s*", text):  # word-sized pieces, as a model streams
            if piece:
                yield BackendChunk(delta=piece)
        yield BackendChunk(
            delta="",
            response=BackendResponse(
                message=message,
                finish_reason="tool_calls" if message.tool_calls else "stop",
                prompt_tokens=sum(len(str(m.get("content", ""))) for m in messages),
                completion_tokens=len(text),
                backend=self.name,
            ),
        )
