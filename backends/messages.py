"""From a model's raw text to an AssistantMessage (tool calls parsed), shared by every backend
that sees text: the local backends, the scripted backend, and remote servers without tool parsing."""

from __future__ import annotations

from ..agent.parsing import parse_tool_calls
from .base import AssistantMessage, InvalidToolCallRequest, ToolCallRequest


def message_from_text(text: str, *, parse_tools: bool) -> AssistantMessage:
    """Parse tool calls out of ``text`` when tools were offered; otherwise it is all content."""
    if not parse_tools:
        return AssistantMessage(content=text)
    parsed = parse_tool_calls(text)
    return AssistantMessage(
        content=parsed.content,
        tool_calls=[ToolCallRequest(id=c.id, name=c.name, args=dict(c.args)) for c in parsed.tool_calls],
        invalid_tool_calls=[InvalidToolCallRequest(raw=c.raw, error=c.error) for c in parsed.invalid_tool_calls],
    )
