"""Put tools into a chat prompt, whether or not the model's chat template knows about tools.

A template that renders ``tools`` gets them (and OpenAI-shaped ``tool_calls``) as they are. For a
template that only knows system / user / assistant turns, the tools go into the system prompt in
the Hermes style (``<tools>`` signatures, ``<tool_call>`` calls, ``<tool_response>`` results),
which is the format ``parsing.parse_tool_calls`` reads back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequestError

__all__ = [
    "apply_chat_template_with_tools",
    "render_tool_calls_text",
    "render_tools_system_prompt",
    "template_supports_tools",
]

CALL_FORMAT = '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)
_TOOLS_NAME = re.compile(r"(?<![\w.])tools\b")


# --------------------------------------------------------------------------------------------
# does the template know tools?


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the tokenizer's chat template uses a ``tools`` variable in its Jinja logic
    (``{% if tools %}``, ``{{ tools | tojson }}``, ``{% for t in tools %}``...). The word in plain
    template text or inside a string literal does not count."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        return _uses_tools(template)
    if isinstance(template, Mapping):  # named templates ({"default": ..., "tool_use": ...})
        return any(isinstance(t, str) and _uses_tools(t) for t in template.values())
    if isinstance(template, (list, tuple)):  # [{"name": ..., "template": ...}]
        return any(isinstance(t, Mapping) and isinstance(t.get("template"), str) and _uses_tools(t["template"]) for t in template)
    return False


def _uses_tools(template: str) -> bool:
    pos = 0
    while True:
        start = _next_tag(template, pos)
        if start < 0:
            return False
        close = "}}" if template[start + 1] == "{" else "%}"
        end = template.find(close, start + 2)
        body = template[start + 2 : end if end >= 0 else len(template)]
        if _TOOLS_NAME.search(_STRING_LITERAL.sub("''", body)):
            return True
        if end < 0:
            return False
        pos = end + 2


def _next_tag(template: str, pos: int) -> int:
    found = [i for i in (template.find("{{", pos), template.find("{%", pos)) if i >= 0]
    return min(found) if found else -1


# --------------------------------------------------------------------------------------------
# the Hermes-style system prompt


def _tool_schema(tool: Any) -> dict:
    """An OpenAI-format tool dict; a bare ``{"name", "description", "parameters"}`` is wrapped."""
    if not isinstance(tool, Mapping):
        raise InvalidRequestError(
            f"a tool must be a dict like {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {type(tool).__name__}"
        )
    fn = tool.get("function")
    if isinstance(fn, Mapping):
        schema = dict(tool)
    elif "name" in tool:
        fn, schema = tool, {"type": "function", "function": dict(tool)}
    else:
        raise InvalidRequestError('a tool needs a "function" object with a "name" (OpenAI format)')
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequestError(f'a tool\'s function "name" must be a non-empty string, got {fn.get("name")!r}')
    return schema


def render_tools_system_prompt(tools: list[dict], system: str | None) -> str:
    """The caller's system text (if any), then the tool signatures and the call format."""
    lines = [json.dumps(_tool_schema(t), ensure_ascii=False, sort_keys=False) for t in tools]
    parts = []
    if system and system.strip():
        parts.append(system.rstrip() + "\n\n")
    parts.append(
        "# Tools\n\n"
        "You may call one or more functions to help with the user's request. "
        "The functions you can call are described by the JSON signatures inside <tools></tools> tags:\n"
        "<tools>\n" + "\n".join(lines) + "\n</tools>\n\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        "<tool_call></tool_call> tags, in exactly this format:\n"
        + CALL_FORMAT
        + "\nUse one <tool_call> block per call. Each result comes back to you inside "
        "<tool_response></tool_response> tags."
    )
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# messages


def _text(content: Any) -> str:
    """Message content as text: None is empty, text parts are joined, other JSON is dumped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return json.dumps(content, ensure_ascii=False)


def _call_parts(call: Any) -> tuple[Any, str, dict]:
    """(id, name, args) of an OpenAI-style or LangChain-style tool call."""
    if not isinstance(call, Mapping):
        raise InvalidRequestError(f"a tool call must be a dict, got {type(call).__name__}")
    fn = call.get("function") if isinstance(call.get("function"), Mapping) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f'a tool call needs a non-empty string "name", got {name!r}')
    args: Any = {}
    for key in ("arguments", "args", "parameters"):
        if key in fn:
            args = fn[key]
            break
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as exc:
            raise InvalidRequestError(f"the arguments of tool call {name!r} are not valid JSON: {exc}") from exc
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise InvalidRequestError(f"the arguments of tool call {name!r} must be a JSON object, got {type(args).__name__}")
    return call.get("id"), name, dict(args)


def render_tool_calls_text(tool_calls: list[Any]) -> str:
    """Tool calls as the ``<tool_call>`` blocks the Hermes format expects, one per line group."""
    blocks = []
    for call in tool_calls:
        _, name, args = _call_parts(call)
        blocks.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>")
    return "\n".join(blocks)


# An assistant message may carry the text the model generated, tool-call markup and all: a plain
# template re-renders that turn from it verbatim, so the re-rendered prompt starts with exactly
# the tokens the engine's KV cache already holds (the session then prefills only what is new).
RAW_TEXT_KEY = "agentspark_raw_text"


def _for_native_template(message: dict) -> dict:
    """OpenAI-shaped ``tool_calls`` (arguments as a dict, as Hugging Face templates expect)."""
    message = {k: v for k, v in message.items() if k != RAW_TEXT_KEY}
    calls = message.get("tool_calls")
    if not calls:
        return message
    out = dict(message)
    shaped = []
    for call in calls:
        call_id, name, args = _call_parts(call)
        item: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
        if call_id is not None:
            item = {"id": call_id, **item}
        shaped.append(item)
    out["tool_calls"] = shaped
    if out.get("content") is None:
        out["content"] = ""
    return out


def _for_plain_template(messages: list[dict]) -> list[dict]:
    """Only system / user / assistant turns with text content: assistant tool calls become
    ``<tool_call>`` text, runs of tool results become one user turn of ``<tool_response>`` blocks."""
    out: list[dict] = []
    responses: list[str] = []

    def flush() -> None:
        if responses:
            out.append({"role": "user", "content": "\n".join(responses)})
            responses.clear()

    for message in messages:
        if message.get("role") == "tool":
            responses.append("<tool_response>\n" + _text(message.get("content")) + "\n</tool_response>")
            continue
        flush()
        m = {k: v for k, v in message.items() if k not in ("tool_calls", RAW_TEXT_KEY)}
        content = _text(message.get("content"))
        calls = message.get("tool_calls")
        if isinstance(message.get(RAW_TEXT_KEY), str):
            content = message[RAW_TEXT_KEY]
        elif calls:
            text = render_tool_calls_text(calls)
            content = f"{content}\n{text}" if content else text
        m["content"] = content
        out.append(m)
    flush()
    return out


def _with_tools_system(messages: list[dict], tools: list[dict]) -> list[dict]:
    for i, m in enumerate(messages):
        if m.get("role") == "system":
            merged = dict(m, content=render_tools_system_prompt(tools, _text(m.get("content"))))
            return [*messages[:i], merged, *messages[i + 1 :]]
    return [{"role": "system", "content": render_tools_system_prompt(tools, None)}, *messages]


def _token_ids(out: Any) -> list[int]:
    """transformers 5 may answer a list of ids, a BatchEncoding/dict, a tensor or a batch of one."""
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if len(out) == 1 and isinstance(out[0], (list, tuple)):
        out = list(out[0])
    return [int(i) for i in out]


def apply_chat_template_with_tools(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Prompt token ids for ``messages`` with ``tools`` offered to the model.

    A template with tool support gets ``tools=`` and OpenAI-shaped ``tool_calls``. Otherwise the
    tools are written into the first system message (one is inserted at the front if there is
    none) and tool calls / tool results become plain text turns (see ``_for_plain_template``);
    that rewrite also happens without tools, so a history with tool turns always renders."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("this tokenizer has no chat template; tools need a chat model")
    if not all(isinstance(m, Mapping) for m in messages):
        raise InvalidRequestError("messages must be dicts with a role and content")
    msgs = [dict(m) for m in messages]
    kwargs: dict[str, Any] = {}
    if template_supports_tools(tokenizer):
        msgs = [_for_native_template(m) for m in msgs]
        if tools:
            kwargs["tools"] = [_tool_schema(t) for t in tools]
    else:
        msgs = _for_plain_template(msgs)
        if tools:
            msgs = _with_tools_system(msgs, tools)
    out = tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs)
    return _token_ids(out)
