"""From an OpenAI request to what a Backend takes: internal messages (tool-call arguments as
dicts, tool messages named after their call), tool dicts, a tool_choice string, SamplingParams."""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import ToolChoice
from ..sampling import SamplingParams
from .errors import APIError
from .schemas import ChatCompletionRequest, ChatMessage, Content

# OpenAI's default; the engine itself defaults to greedy (0), so say temperature=0 for greedy.
DEFAULT_TEMPERATURE = 1.0


def _text(content: Content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise APIError(400, f"{where}[{i}]: only text content parts are supported, got {part.type!r}",
                           param=f"{where}[{i}]")
        texts.append(part.text)
    return "\n".join(texts)


def _arguments(raw: str | dict[str, Any] | None, where: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        args = json.loads(raw)
    except ValueError as exc:
        raise APIError(400, f"{where} is not valid JSON: {exc}", param=where) from None
    if not isinstance(args, dict):
        raise APIError(400, f"{where} must encode a JSON object, got {type(args).__name__}", param=where)
    return args


def to_internal(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Wire messages -> agentspark's (arguments parsed; a tool message gets its call's name)."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool-call id -> function name (the latest call with that id)
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        content = _text(m.content, f"{where}.content")
        if m.role in ("system", "developer", "user"):
            out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if m.tool_calls:
                calls = []
                for j, c in enumerate(m.tool_calls):
                    args = _arguments(c.function.arguments, f"{where}.tool_calls[{j}].function.arguments")
                    calls.append({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}})
                    names[c.id] = c.function.name
                msg["tool_calls"] = calls
            out.append(msg)
        else:  # tool
            if not m.tool_call_id:
                raise APIError(400, f"{where}: a tool message needs tool_call_id", param=f"{where}.tool_call_id")
            msg = {"role": "tool", "content": content, "tool_call_id": m.tool_call_id}
            name = m.name or names.get(m.tool_call_id)
            if name:
                msg["name"] = name
            out.append(msg)
    return out


def tools_and_choice(req: ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, ToolChoice]:
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    names = [t["function"]["name"] for t in tools or []]
    choice = req.tool_choice
    if choice is None:
        return tools, "auto"
    if isinstance(choice, str):
        if choice == "required" and not names:
            raise APIError(400, "tool_choice 'required' needs at least one tool", param="tool_choice")
        return tools, choice
    if choice.function.name not in names:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools {names}",
                       param="tool_choice")
    return tools, choice.function.name


def sampling(req: ChatCompletionRequest, default_max_tokens: int) -> SamplingParams:
    """Raises InvalidSamplingError (-> 400) for values the engine refuses."""
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n} is not supported; this server returns exactly one choice (n=1)", param="n")
    if req.logprobs:
        raise APIError(400, "logprobs are not supported", param="logprobs")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        max_new_tokens=default_max_tokens if max_tokens is None else max_tokens,
        stop=stop,
    )
