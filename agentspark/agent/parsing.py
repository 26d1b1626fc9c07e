"""Find the tool calls a model wrote as text in an assistant message.

``parse_tool_calls`` never raises. It recognises these formats and uses only the first one
present in a message (so a call is never counted twice and prose examples of another format stay
text):

0. The whole message (stripped) is one call object or a list of them. Checked first, because the
   strings of such a message may hold tags or fences, which are then text, not markup.
1. Hermes / Qwen tags: ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``, any
   number of them, with text around them. An unclosed last tag (the model stopped) still counts
   when the JSON inside is complete. Anything wrong inside a tag is an ``InvalidToolCall``.
2. Fenced JSON: a ```` ```json ```` (or bare ```` ``` ````) block holding one call object or a
   list of them.
3. Bare JSON: call objects or lists of them in the text, found by a balanced-bracket scan that
   respects JSON strings (code fences of other kinds are not scanned).

In formats 0, 2 and 3 only values that look like calls count: an object with ``"name"`` and one of
``"arguments"`` / ``"parameters"`` / ``"args"`` (or OpenAI's ``{"type": "function", "function":
{...}}`` wrapper). Other JSON is left in the content.

A call's arguments may be an object or a JSON-encoded object string; ``null``, an empty string or
a missing arguments key (the last only inside tags) mean no arguments. IDs are
``f"{id_prefix}{i}"`` for the valid calls in order of appearance.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InvalidToolCall", "ParsedMessage", "ParsedToolCall", "parse_tool_calls"]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"
ARG_KEYS = ("arguments", "parameters", "args")
_HINT = '; emit {"name": "<function-name>", "arguments": {...}}'
_TAG_HINT = '; emit {"name": "<function-name>", "arguments": {...}} inside <tool_call></tool_call>'
_FENCE_INFOS = ("", "json", "tool_call", "tool_calls")
_WS = " \t\r\n"

# A bare object nested deeper than this in other brackets is not looked at (keeps the scan linear).
_MAX_SCAN_DEPTH = 8
_SCAN_CHARS = re.compile(r'[{}\[\]"\\\n]')

_DECODER = json.JSONDecoder()


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


def parse_tool_calls(text: str, *, id_prefix: str = "call_") -> ParsedMessage:
    """Split an assistant message into content, tool calls and invalid tool calls. Never raises."""
    if not isinstance(text, str):
        text = "" if text is None else _safe_str(text)
    if not isinstance(id_prefix, str):
        id_prefix = _safe_str(id_prefix)
    try:
        return _parse(text, id_prefix)
    except Exception:  # noqa: BLE001 -- a last resort: _parse is written (and property-tested) not to raise
        return ParsedMessage(content=text.strip())


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 -- any object's __str__ may fail; the promise is not to raise
        return ""


def _parse(text: str, id_prefix: str) -> ParsedMessage:
    found = _parse_whole(text) or _parse_tags(text)
    if found is None:
        spans, items, other_fences = _parse_fences(text)
        if not items:
            spans, items = _parse_bare(text, other_fences)
    else:
        spans, items = found
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


def _looks_like_call(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    if "name" in value and any(k in value for k in ARG_KEYS):
        return True
    fn = value.get("function")
    return isinstance(fn, dict) and "name" in fn and (
        value.get("type") == "function" or any(k in fn for k in ARG_KEYS)
    )


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
# 0. the whole message is JSON


def _parse_whole(text: str) -> tuple[list[tuple[int, int]], list[_Item]] | None:
    """A message that is one call object or a list of them, and nothing else (checked first:
    its strings may hold tags or fences, which are then text, not markup)."""
    start = _skip_ws(text, 0)
    if start >= len(text) or text[start] not in "{[":
        return None
    value, end, _, _ = _decode(text, start)
    if end < 0 or _skip_ws(text, end) != len(text) or not _looks_like_calls(value):
        return None
    return [(start, end)], _items_from_value(value, text[start:end])


# --------------------------------------------------------------------------------------------
# 1. <tool_call> tags


def _parse_tags(text: str) -> tuple[list[tuple[int, int]], list[_Item]] | None:
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
        items.extend(_parse_tag_body(text[body_start:body_end], raw, closed, is_last=next_open < 0))
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


def _parse_tag_body(body: str, raw: str, closed: bool, is_last: bool) -> list[_Item]:
    inner = _unfence(body.strip())
    cut_off = not closed and is_last
    if not closed and not is_last:
        unclosed = "the <tool_call> block has no </tool_call> before the next <tool_call>"
    elif cut_off:
        unclosed = "the message ended inside the <tool_call> block"
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
            if values:
                snippet = inner[pos : pos + 30]
                error = f"unexpected text after the tool call JSON: {snippet!r}; put only the JSON object inside the tags"
            elif cut_off and (err_pos >= n or err.startswith("Unterminated string")):
                error = f"{unclosed} and its JSON is incomplete ({err}){_TAG_HINT}"
            else:
                where = f" ({unclosed})" if unclosed else ""
                error = f"tool call JSON is malformed{where}: {err}{_TAG_HINT}"
            return [InvalidToolCall(raw, error)]
        values.append((value, pos, end))
        pos = end
    items: list[_Item] = []
    for value, start, end in values:
        items.extend(_items_from_value(value, raw if len(values) == 1 else inner[start:end], _TAG_HINT))
    return items


# --------------------------------------------------------------------------------------------
# 2. fenced JSON


def _parse_fences(text: str) -> tuple[list[tuple[int, int]], list[_Item], list[tuple[int, int]]]:
    """(spans of call fences, their items, spans of all other fences)."""
    spans: list[tuple[int, int]] = []
    items: list[_Item] = []
    others: list[tuple[int, int]] = []
    n = len(text)
    budget = 4 * n + 4096  # chars that decodes past a fence's first ``` may scan, summed (keeps this linear)
    pos = text.find(FENCE)
    next_nl = -2  # -2: not searched yet; -1: there is none after this point
    while pos >= 0:
        after = pos + len(FENCE)
        first = _skip_ws(text, after, " \t")
        if first < n and text[first] in "{[":  # ```{"name": ...}``` on one line
            info, body_start = "", first
        else:
            if next_nl != -1 and next_nl < after:
                next_nl = text.find("\n", after)
            line_end = next_nl if next_nl >= 0 else n
            info = text[after : min(line_end, after + 40)].strip()  # an info string is short
            body_start = line_end + 1 if next_nl >= 0 else n
        close = text.find(FENCE, body_start)
        span_end = close + len(FENCE) if close >= 0 else n
        j = _skip_ws(text, body_start)
        if info.lower() in _FENCE_INFOS and j < n and text[j] in "{[":
            # decode slices, never the whole text from j: a JSON error counts lines up to its position
            chunk = text[j : close if close >= 0 else n]
            value, end, err, err_pos = _decode(chunk)
            if end < 0 and close >= 0 and budget > 0 and (err_pos >= len(chunk) or err.startswith("Unterminated string")):
                budget -= n - j  # the JSON may go on past this ``` (a string may hold backticks)
                value, end, _, _ = _decode(text[j:])
            end = end + j if end >= 0 else -1
            if end >= 0 and _looks_like_calls(value):
                k = _skip_ws(text, end)
                if k >= n or text.startswith(FENCE, k):
                    call_end = min(k + len(FENCE), n)
                    spans.append((pos, call_end))
                    items.extend(_items_from_value(value, text[pos:call_end]))
                    pos = text.find(FENCE, call_end)
                    continue
        others.append((pos, span_end))
        pos = text.find(FENCE, span_end) if close >= 0 else -1
    return spans, items, others


# --------------------------------------------------------------------------------------------
# 3. bare JSON


def _parse_bare(text: str, fences: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[_Item]]:
    names = []
    at = text.find('"name"')
    while at >= 0:
        names.append(at)
        at = text.find('"name"', at + 1)
    if not names:
        return [], []
    spans: list[tuple[int, int]] = []
    items: list[_Item] = []
    consumed, region_start = 0, 0
    for fence_start, fence_end in [*fences, (len(text), len(text))]:
        for start, end in _candidates(text, region_start, fence_start, names):
            if start < consumed:
                continue
            raw = text[start:end]
            value, stop, _, _ = _decode(raw)
            if stop != len(raw):
                continue  # not JSON: what is inside it may still be
            consumed = end  # JSON that is not a call is data: nothing inside it is a call either
            if _looks_like_calls(value):
                spans.append((start, end))
                items.extend(_items_from_value(value, raw))
        region_start = fence_end
    return spans, items


def _candidates(text: str, a: int, b: int, names: list[int]) -> list[tuple[int, int]]:
    """Matched ``{...}`` / ``[...]`` spans in ``text[a:b]`` that may be calls, outermost first.

    One pass: brackets inside JSON strings are skipped (a raw newline ends a string, since JSON
    strings cannot hold one, so a stray quote in prose spoils one line at most)."""
    stack: list[tuple[int, str]] = []
    pairs: list[tuple[int, int]] = []
    in_str, skip = False, -1
    for m in _SCAN_CHARS.finditer(text, a, b):
        i = m.start()
        if i == skip:
            continue
        c = text[i]
        if in_str:
            if c == "\\":
                skip = i + 1
            elif c == '"' or c == "\n":
                in_str = False
            continue
        if c == '"':
            in_str = bool(stack)
        elif c == "{" or c == "[":
            stack.append((i, c))
        elif c in "}]" and stack and stack[-1][1] == ("{" if c == "}" else "["):  # closes the innermost
            start, opener = stack.pop()
            if len(stack) >= _MAX_SCAN_DEPTH:
                continue
            j = _skip_ws(text, start + 1)
            if j >= i or text[j] != ('"' if opener == "{" else "{"):
                continue
            k = bisect.bisect_left(names, start)
            if k < len(names) and names[k] < i:  # it holds a "name" somewhere
                pairs.append((start, i + 1))
    pairs.sort()
    return pairs
