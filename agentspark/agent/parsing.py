"""Find the tool calls a model wrote as text in an assistant message.

``parse_tool_calls`` never raises. A call counts only in the model's own call syntax, so a model
that quotes a call, echoes a tool's schema or shows an example in prose does not run anything:

1. The whole message (stripped) is one call object or a list of them, bare or as the only thing
   in one code fence (```` ```json ````, ```` ``` ````, ```` ```tool_call ````; the closing fence may be
   missing). Checked first, because the strings of such a message may hold tags or fences, which
   are then text, not markup. A list is several calls: that syntax carries several.
2. Hermes / Qwen tags: ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``, any
   number of them (one call each, or a list), with text around them. An unclosed last tag (the
   model stopped) still counts when the JSON inside is complete. Anything wrong inside a tag is an
   ``InvalidToolCall``.

Anything else — JSON objects in prose, a fenced call with text around it, several fenced calls —
is content. In format 1 only values that look like calls count: an object with ``"name"`` and one
of ``"arguments"`` / ``"parameters"`` / ``"args"`` (or OpenAI's ``{"type": "function", "function":
{...}}`` wrapper), and not a tool's definition (``"parameters"`` that is an object's JSON schema,
as the tools list shows it). Other JSON is left in the content.

``cut_off=True`` says the token budget ended the message (finish_reason "length"): a call the
model was still writing — an unclosed last tag, or a whole-message call whose JSON never ends —
becomes an ``InvalidToolCall`` that says so, never content and never a call.

A call's arguments may be an object or a JSON-encoded object string; ``null``, an empty string or
a missing arguments key (the last only inside tags) mean no arguments. IDs are
``f"{id_prefix}{i}"`` for the valid calls in order of appearance.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InvalidToolCall", "ParsedMessage", "ParsedToolCall", "parse_tool_calls"]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"
ARG_KEYS = ("arguments", "parameters", "args")
# The keys a call object may start with: a cut-off reply that opens with one of them was a call.
_CALL_KEYS = ("name", "type", "function", *ARG_KEYS)
_HINT = '; emit {"name": "<function-name>", "arguments": {...}}'
_TAG_HINT = '; emit {"name": "<function-name>", "arguments": {...}} inside <tool_call></tool_call>'
_FENCE_INFOS = ("", "json", "tool_call", "tool_calls")
_MAX_INFO = 40  # an info string is short; a longer first line is text
_WS = " \t\r\n"
_SHORTER = "so the call was not made; write it again with shorter arguments"

_DECODER = json.JSONDecoder()
# What is left, from a JSON error's position, when the text stopped inside a token: a number
# ("1." "1e-"), a literal ("tru"), a \\u escape ("u00", "ud83d\\ud").
_UNFINISHED_TOKEN = re.compile(r"[0-9.eE+\-]*|t(?:ru?)?|f(?:a(?:ls?)?)?|n(?:ul?)?|u[0-9a-fA-F]{0,4}(?:\\(?:u[0-9a-fA-F]{0,3})?)?")


@dataclass(frozen=True)
class ParsedToolCall:
    """A well-formed call, in LangChain's ``{"id", "name", "args"}`` shape."""

    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class InvalidToolCall:
    """Text that tried to be a tool call; ``error`` says what to fix (meant for the model)."""

    raw: str
    error: str


@dataclass(frozen=True)
class ParsedMessage:
    """The message text without tool-call spans, and the calls found in it."""

    content: str
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


# One parsed item before IDs are given: (name, args) or an InvalidToolCall.
_Item = tuple[str, dict] | InvalidToolCall


def parse_tool_calls(text: str, *, id_prefix: str = "call_", cut_off: bool = False) -> ParsedMessage:
    """Split an assistant message into content, tool calls and invalid tool calls. Never raises.

    ``cut_off``: the token budget ended the message, so a call still being written is reported
    as an invalid call that says so (see the module docstring)."""
    if not isinstance(text, str):
        text = "" if text is None else _safe_str(text)
    if not isinstance(id_prefix, str):
        id_prefix = _safe_str(id_prefix)
    try:
        return _parse(text, id_prefix, bool(cut_off))
    except Exception:  # noqa: BLE001 -- a last resort: _parse is written (and property-tested) not to raise
        return ParsedMessage(content=text.strip())


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 -- any object's __str__ may fail; the promise is not to raise
        return ""


def _parse(text: str, id_prefix: str, cut_off: bool = False) -> ParsedMessage:
    # The cut-off check comes before the tags: a call cut inside a string may hold "<tool_call>".
    found = _parse_whole(text) or (_parse_cut_whole(text) if cut_off else None) or _parse_tags(text, cut_off)
    spans, items = found or ([], [])
    calls: list[ParsedToolCall] = []
    invalid: list[InvalidToolCall] = []
    for item in items:
        if isinstance(item, InvalidToolCall):
            invalid.append(item)
        else:
            calls.append(ParsedToolCall(id=f"{id_prefix}{len(calls)}", name=item[0], args=item[1]))
    return ParsedMessage(content=_cut(text, spans).strip(), tool_calls=calls, invalid_tool_calls=invalid)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the spans; only whitespace between two spans goes with them."""
    pieces, pos = [], 0
    for k, (start, end) in enumerate(spans):
        piece = text[pos:start]
        if k == 0 or piece.strip():
            pieces.append(piece)
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


# --------------------------------------------------------------------------------------------
# JSON helpers


def _decode(s: str, pos: int = 0) -> tuple[Any, int, str, int]:
    """``(value, end, "", -1)`` or ``(None, -1, error, error_pos)``; never raises."""
    try:
        value, end = _DECODER.raw_decode(s, pos)
    except json.JSONDecodeError as exc:
        at = "char" if exc.msg.endswith(" at") else "at char"  # "Unterminated string starting at"
        return None, -1, f"{exc.msg} {at} {exc.pos - pos}", exc.pos
    except RecursionError:
        return None, -1, "it is nested too deeply", pos
    except (ValueError, OverflowError) as exc:  # e.g. an integer with too many digits
        return None, -1, str(exc).split(";")[0], pos
    return value, end, "", -1


def _skip_ws(s: str, pos: int, chars: str = _WS) -> int:
    n = len(s)
    while pos < n and s[pos] in chars:
        pos += 1
    return pos


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _dump(value: Any, fallback: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return fallback


def _to_call(obj: Any, hint: str = _HINT) -> tuple[str, dict] | str:
    """``(name, args)`` for a well-formed call object, else an error message for the model."""
    if not isinstance(obj, dict):
        return f"a tool call must be a JSON object, got {_kind(obj)}{hint}"
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI's {"type": "function", "function": {...}}
    if "name" not in obj:
        return f'the tool call has no "name"{hint}'
    name = obj["name"]
    if not isinstance(name, str):
        return f'the tool call "name" must be a string, got {_kind(name)}{hint}'
    if not name.strip():
        return f'the tool call "name" is empty{hint}'
    if _is_definition(obj):
        return (f"this is the definition of the tool {name!r} (its parameters' JSON schema), not a call; "
                f"give the values of its arguments{hint}")
    key = next((k for k in ARG_KEYS if k in obj), None)
    if key is None:
        return name, {}
    args = obj[key]
    if args is None:
        return name, {}
    if isinstance(args, str):
        if not args.strip():
            return name, {}
        start = _skip_ws(args, 0)
        value, end, err, _ = _decode(args, start)
        if end >= 0 and _skip_ws(args, end) != len(args):
            err = f"unexpected text after the JSON at char {end - start}"
        if err:
            return f'"{key}" of {name!r} is a string that is not valid JSON ({err}); give "{key}" as a JSON object{hint}'
        if not isinstance(value, dict):
            return f'"{key}" of {name!r} must be a JSON object, got a string holding {_kind(value)}{hint}'
        return name, value
    if not isinstance(args, dict):
        return f'"{key}" of {name!r} must be a JSON object, got {_kind(args)}{hint}'
    return name, args


def _is_definition(fn: dict) -> bool:
    """A tool's definition as the tools list shows it (``"parameters"``: an object's JSON schema),
    which small models echo back: never a call, though its keys are a call's."""
    if any(k in fn for k in ("arguments", "args")):
        return False
    params = fn.get("parameters")
    return (isinstance(params, dict) and params.get("type") == "object"
            and (isinstance(params.get("properties"), dict) or "description" in fn))


def _looks_like_call(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    fn = value.get("function")
    if "name" not in value and isinstance(fn, dict):
        return "name" in fn and (value.get("type") == "function" or any(k in fn for k in ARG_KEYS)) and not _is_definition(fn)
    return "name" in value and any(k in value for k in ARG_KEYS) and not _is_definition(value)


def _looks_like_calls(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_looks_like_call(v) for v in value)
    return _looks_like_call(value)


def _items_from_value(value: Any, raw: str, hint: str = _HINT) -> list[_Item]:
    """The calls in one JSON value: an object is one call, a list holds one call per element."""
    if isinstance(value, list):
        if not value:
            return [InvalidToolCall(raw, f"the tool call list is empty{hint}")]
        items: list[_Item] = []
        for element in value:
            call = _to_call(element, hint)
            items.append(InvalidToolCall(_dump(element, raw), call) if isinstance(call, str) else call)
        return items
    call = _to_call(value, hint)
    return [InvalidToolCall(raw, call) if isinstance(call, str) else call]


# --------------------------------------------------------------------------------------------
# 1. the whole message is a call (bare, or alone in one code fence)


def _parse_whole(text: str) -> tuple[list[tuple[int, int]], list[_Item]] | None:
    """A message that is one call object or a list of them and nothing else, bare or fenced
    (checked first: its strings may hold tags or fences, which are then text, not markup)."""
    start = _skip_ws(text, 0)
    j = _json_start(text, start)
    if j < 0:
        return None
    value, end, _, _ = _decode(text, j)
    if end < 0 or not _looks_like_calls(value):
        return None
    rest = text[end:].strip()
    # After a fenced call only its closing fence may follow (or a part of it: the model stopped).
    if rest and not (j != start and rest in ("`", "``", FENCE)):
        return None  # text after the call: the JSON is part of prose
    return [(start, len(text))], _items_from_value(value, text[start:].rstrip())


def _json_start(text: str, start: int) -> int:
    """Where a whole-message call's JSON would begin: at ``start`` for bare JSON, after the info
    line of a JSON (or untagged) fence that opens the message; -1 for neither."""
    n = len(text)
    if start < n and text[start] in "{[":
        return start
    if not text.startswith(FENCE, start):
        return -1
    after = start + len(FENCE)
    first = _skip_ws(text, after, " \t")
    if first < n and text[first] in "{[":  # ```{"name": ...}``` on one line
        return first
    nl = text.find("\n", after, after + _MAX_INFO + 1)
    if nl < 0 or text[after:nl].strip().lower() not in _FENCE_INFOS:
        return -1
    j = _skip_ws(text, nl + 1)
    return j if j < n and text[j] in "{[" else -1


def _parse_cut_whole(text: str) -> tuple[list[tuple[int, int]], list[_Item]] | None:
    """A message the token budget ended while it was writing a whole-message call: JSON that
    opens the message like a call and runs, unfinished, to its end."""
    start = _skip_ws(text, 0)
    j = _json_start(text, start)
    if j < 0 or not _opens_a_call(text, j):
        return None
    _, end, err, err_pos = _decode(text, j)
    if end >= 0 or not _unfinished(text, err, err_pos):
        return None  # complete JSON, or broken before the end: not a call the budget cut
    raw = text[start:].rstrip()
    return [(start, len(text))], [InvalidToolCall(raw, f"the reply reached the token limit before this tool call's "
                                                       f"JSON was complete ({err}), {_SHORTER}{_HINT}")]


def _unfinished(s: str, err: str, err_pos: int) -> bool:
    """Whether a JSON error only says that the text stopped before the JSON ended."""
    if err.startswith("Unterminated string"):
        return True
    tail = s[err_pos:].rstrip()
    return len(tail) <= 12 and _UNFINISHED_TOKEN.fullmatch(tail) is not None


def _opens_a_call(text: str, j: int) -> bool:
    """Whether the JSON at ``j`` starts like a call: ``{`` (maybe in a list) and then nothing
    yet, or a first key that is, or was cut inside, one a call has (not ``{"answer": ...``)."""
    n = len(text)
    if text[j] == "[":
        j = _skip_ws(text, j + 1)
        if j >= n:
            return True
    if text[j] != "{":
        return False
    j = _skip_ws(text, j + 1)
    if j >= n:
        return True
    if text[j] != '"':
        return False
    close = text.find('"', j + 1)
    key = text[j + 1 : close if close >= 0 else n]
    return key in _CALL_KEYS if close >= 0 else any(k.startswith(key) for k in _CALL_KEYS)


# --------------------------------------------------------------------------------------------
# 2. <tool_call> tags


def _parse_tags(text: str, cut_off: bool = False) -> tuple[list[tuple[int, int]], list[_Item]] | None:
    pos = text.find(OPEN_TAG)
    if pos < 0:
        return None
    spans: list[tuple[int, int]] = []
    items: list[_Item] = []
    next_close = -2  # -2: not searched yet; -1: there is none after this point
    while pos >= 0:
        body_start = pos + len(OPEN_TAG)
        next_open = text.find(OPEN_TAG, body_start)
        if next_close != -1 and next_close < body_start:
            next_close = text.find(CLOSE_TAG, body_start)
        if next_close >= 0 and (next_open < 0 or next_close < next_open):
            body_end, span_end, closed = next_close, next_close + len(CLOSE_TAG), True
        else:
            body_end = next_open if next_open >= 0 else len(text)
            span_end, closed = body_end, False
        raw = text[pos:span_end]
        items.extend(_parse_tag_body(text[body_start:body_end], raw, closed, next_open < 0, cut_off))
        spans.append((pos, span_end))
        pos = next_open
    return spans, items


def _unfence(s: str) -> str:
    """``s`` without a Markdown code fence around it (some models fence the JSON inside tags)."""
    if not s.startswith(FENCE):
        return s
    nl = s.find("\n")
    if nl >= 0:
        rest = s[nl + 1 :]
    else:
        rest = s[len(FENCE) :]
        i = 0
        while i < len(rest) and (rest[i].isalnum() or rest[i] == "_"):
            i += 1
        rest = rest[i:]
    rest = rest.rstrip()
    rest = rest.removesuffix(FENCE)
    return rest.strip()




def _without_partial_close(s: str) -> str:
    """``s`` without a start of ``</tool_call>`` at its end (the model stopped while closing)."""
    for k in range(len(CLOSE_TAG) - 1, 0, -1):
        if s.endswith(CLOSE_TAG[:k]):
            return s[:-k].rstrip()
    return s


def _parse_tag_body(body: str, raw: str, closed: bool, is_last: bool, cut_off: bool = False) -> list[_Item]:
    ends_inside = not closed and is_last  # the message ended inside this block
    body = body.strip()
    inner = _unfence(_without_partial_close(body) if ends_inside else body)
    if not closed and not is_last:
        unclosed = "the <tool_call> block has no </tool_call> before the next <tool_call>"
    elif ends_inside:
        unclosed = ("the reply reached the token limit inside the <tool_call> block" if cut_off
                    else "the message ended inside the <tool_call> block")
    else:
        unclosed = ""
    if not inner:
        what = unclosed or "the <tool_call> block is empty"
        return [InvalidToolCall(raw, f"{what}; put one JSON object between <tool_call> and </tool_call>{_TAG_HINT}")]
    values: list[tuple[Any, int, int]] = []
    n, pos = len(inner), 0
    while True:
        pos = _skip_ws(inner, pos, _WS + ",")
        if pos >= n:
            break
        if values and _skip_ws(inner, pos, _WS + "}") >= n:
            break  # stray closing braces after a complete object (a common slip): ignored
        value, end, err, err_pos = _decode(inner, pos)
        if end < 0:
            return [InvalidToolCall(raw, _tag_json_error(inner, pos, values, err, err_pos, unclosed, ends_inside, cut_off))]
        values.append((value, pos, end))
        pos = end
    items: list[_Item] = []
    for value, start, end in values:
        items.extend(_items_from_value(value, raw if len(values) == 1 else inner[start:end], _TAG_HINT))
    return items


def _tag_json_error(inner: str, pos: int, values: list, err: str, err_pos: int, unclosed: str,
                    ends_inside: bool, cut_off: bool) -> str:
    """What is wrong with the JSON at ``pos`` inside a tag, said so the model can fix it."""
    if values:
        snippet = inner[pos : pos + 30]
        return f"unexpected text after the tool call JSON: {snippet!r}; put only the JSON object inside the tags"
    if ends_inside and _unfinished(inner, err, err_pos):
        if cut_off:
            return f"{unclosed} before its JSON was complete ({err}), {_SHORTER}{_TAG_HINT}"
        return f"{unclosed} and its JSON is incomplete ({err}){_TAG_HINT}"
    where = f" ({unclosed})" if unclosed else ""
    return f"tool call JSON is malformed{where}: {err}{_TAG_HINT}"
