"""Tool calls and tool results as plain, immutable data.

``ToolCall`` has LangChain's shape (``id``, ``name``, ``args``) so calls parsed from any chat
format map onto it directly; ``ToolResult`` carries a status instead of raising, because a model's
mistake (bad arguments, a tool that does not exist, a tool that fails or hangs) is information the
model should see in its next turn, not a crash of the agent loop.

Statuses: "ok"; "error" (the tool raised); "invalid_arguments"; "unknown_tool"; "timeout"; and
"repeated", which no tool returns: the agent loop's guard gave it to a call identical to one made
earlier in the same user turn, answered with a note (and the earlier result) instead of run again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

from pydantic import BaseModel

ToolStatus = Literal["ok", "error", "invalid_arguments", "unknown_tool", "timeout", "repeated"]


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: ``args`` are the (not yet validated) arguments by name."""

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolResult:
    """What became of one ``ToolCall``; ``content`` is the text the model is shown either way."""

    call_id: str
    name: str
    content: str
    status: ToolStatus
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_openai_message(self) -> dict[str, str]:
        """The chat message that returns this result to an OpenAI-style model."""
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.content}


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def render_content(value: Any) -> str:
    """A tool's return value as model-facing text: strings pass through, the rest becomes JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default, ensure_ascii=False)
