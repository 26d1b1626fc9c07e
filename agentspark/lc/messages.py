"""LangChain messages and tool_choice values -> what agentspark backends take (OpenAI-style dicts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from ..agent.tool_prompt import RAW_TEXT_KEY
from ..backends.messages import message_from_text

__all__ = ["check_tool_choice", "normalize_tool_choice", "to_backend_messages"]

_MEDIA = {"image", "image_url", "audio", "input_audio", "video", "file"}
_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}


def _text(content: Any) -> str:
    """A message's content as text: content-block lists keep their text blocks, joined."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in _MEDIA:
            raise ValueError(f"ChatAgentSpark models read text only; got a {block['type']!r} content block")
    return "".join(parts)


def _ai_to_dict(m: AIMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant", "content": _text(m.content)}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function",
                              "function": {"name": c["name"], "arguments": dict(c["args"])}}
                             for i, c in enumerate(m.tool_calls)]
    raw = m.additional_kwargs.get(RAW_TEXT_KEY)
    if isinstance(raw, str):
        # Only when the message still says what the raw text says (it may have been edited).
        parsed = message_from_text(raw, parse_tools=True)
        calls = [(c["name"], c["args"]) for c in m.tool_calls]
        if (parsed.content == out["content"] and [(c.name, c.args) for c in parsed.tool_calls] == calls) or (
            raw == out["content"] and not calls
        ):
            out[RAW_TEXT_KEY] = raw
    return out


def to_backend_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> the OpenAI-style dicts every agentspark backend takes."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, from earlier AI messages
    for m in messages:
        if isinstance(m, AIMessage):  # AIMessageChunk too
            out.append(_ai_to_dict(m))
            names.update({c["id"]: c["name"] for c in m.tool_calls if c.get("id")})
        elif isinstance(m, ToolMessage):
            tool: dict[str, Any] = {"role": "tool", "tool_call_id": m.tool_call_id, "content": _text(m.content)}
            name = m.name or names.get(m.tool_call_id)
            if name:
                tool["name"] = name
            out.append(tool)
        elif isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m.content)})
        elif isinstance(m, ChatMessage) and m.role in _ROLES:
            out.append({"role": _ROLES[m.role], "content": _text(m.content)})
        else:
            raise ValueError(f"ChatAgentSpark cannot send a {type(m).__name__} (type {m.type!r}); use system, "
                             "human, AI or tool messages")
    return out


def normalize_tool_choice(choice: Any) -> str:
    """LangChain's tool_choice ("auto"/"any"/"required"/"none"/a name/an OpenAI dict/bool) -> ours."""
    if choice is None:
        return "auto"
    if isinstance(choice, bool):
        return "required" if choice else "none"
    if isinstance(choice, dict):
        fn = choice["function"] if isinstance(choice.get("function"), dict) else choice
        if isinstance(fn.get("name"), str):
            return fn["name"]
    elif isinstance(choice, str) and choice:
        return "required" if choice == "any" else choice
    raise ValueError(f"unsupported tool_choice {choice!r}; use 'auto', 'any', 'required', 'none' or a tool name")


def check_tool_choice(choice: str, tools: list[dict[str, Any]] | None) -> None:
    """Fail early (a ValueError) on a tool_choice the bound tools cannot satisfy."""
    names = [t["function"]["name"] for t in tools or []]
    if choice == "required" and not names:
        raise ValueError("tool_choice 'required'/'any' needs tools; call bind_tools first")
    if choice not in ("auto", "none", "required") and choice not in names:
        raise ValueError(f"tool_choice {choice!r} names no bound tool; bound: {names}")

