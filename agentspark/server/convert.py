"""From an OpenAI request to what a Backend takes: the request body parsed and validated
(``parse_request``, run on a worker thread), internal messages (tool-call arguments as dicts,
tool messages named after their call), tool dicts, a tool_choice string, SamplingParams."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..backends.base import ToolChoice
from ..constraints import Grammar
from ..sampling import SamplingParams
from .errors import APIError, validation_error
from .schemas import ChatCompletionRequest, ChatMessage, Content, DecodingFields, ToolDef

# OpenAI's default; the engine itself defaults to greedy (0), so say temperature=0 for greedy.
DEFAULT_TEMPERATURE = 1.0


# A lone surrogate can only come from a \uD800-\uDFFF escape once the body is strict UTF-8; a
# match is usually a valid pair (clients with ensure_ascii escape emoji so), so it only gates the walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> Any:
    # Python's json module takes NaN and Infinity, which are not JSON (and made temperature inf).
    raise ValueError(f"{name} is not valid JSON; send a finite number")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_at(value: Any) -> str | None:
    """The path (``messages[0].content``) of the first string holding a lone surrogate, or None.

    Such strings (from a \\ud800 escape) are no valid Unicode: the tokenizer and the UTF-8
    response encoder failed on them deep inside. Iterative, since JSON nesting is unbounded."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _has_surrogate(item):
                return path or "body"
        elif isinstance(item, dict):
            for key in item:
                if _has_surrogate(key):
                    return f"{path} (a key)" if path else "body (a key)"
            stack.extend((f"{path}.{key}" if path else key, child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", item[i]) for i in reversed(range(len(item))))
    return None


def load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"The request body is not UTF-8 text ({exc}); send JSON encoded as UTF-8.") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply to parse; flatten it.") from None
    except ValueError as exc:  # JSONDecodeError and _no_constant's
        raise APIError(400, f"The request body is not valid JSON: {exc}") from None
    where = _surrogate_at(data) if _SURROGATE_ESCAPE.search(text) else None
    if where is not None:
        raise APIError(400, f"{where}: the text contains a lone UTF-16 surrogate (like \\ud800), which is not "
                            "valid Unicode; send well-formed text (pair each surrogate or drop it)", param=where)
    return data


# The long lists of a request, validated BATCH items per pydantic call. The parse runs on a worker
# thread, but each pydantic call holds the GIL throughout: one call over 150,000 messages took
# 0.8 s, all of it stolen from the event loop (and /health); between batches the loop gets its turn.
_BATCHED = {"messages": TypeAdapter(list[ChatMessage]), "tools": TypeAdapter(list[ToolDef])}
BATCH = 2048


def parse_request(body: bytes) -> ChatCompletionRequest:
    """A chat-completions body -> the validated request; APIError (400) for anything malformed.

    CPU-bound on big bodies: the app runs it on a worker thread, off the event loop."""
    data = load_json(body)
    try:
        return _validate(data)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from None
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply to validate; flatten it.") from None


def _long_lists(data: Any) -> dict[str, list]:
    if not isinstance(data, dict):
        return {}
    return {name: data[name] for name in _BATCHED if isinstance(data.get(name), list) and len(data[name]) > BATCH}


def _validate(data: Any) -> ChatCompletionRequest:
    """ChatCompletionRequest.model_validate(data), its long lists a batch at a time."""
    long = _long_lists(data)
    if not long:
        return ChatCompletionRequest.model_validate(data)
    req = ChatCompletionRequest.model_validate({**data, **{name: items[:BATCH] for name, items in long.items()}})
    whole = {name: getattr(req, name) for name in long}
    for name, items in long.items():
        for start in range(BATCH, len(items), BATCH):
            whole[name] += _batch(name, items, start)
    return req.model_copy(update=whole)


def _batch(name: str, items: list, start: int) -> list:
    try:
        return _BATCHED[name].validate_python(items[start:start + BATCH])
    except ValidationError as exc:  # name the item's place in the whole list, as one call would
        errors = [{**e, "loc": (name, start + e["loc"][0], *e["loc"][1:])} for e in exc.errors()]
        raise validation_error(errors) from None


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
    _check_unique(names)
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


def _check_unique(names: list[str]) -> None:
    # A tool call names its tool: with two tools of one name, which one the model called is a guess.
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise APIError(400, f"tools[{i}].function.name: {name!r} is offered twice; give each tool its own name",
                           param=f"tools[{i}].function.name")
        seen.add(name)


# Fields of OpenAI's API this server takes without acting on them: they change nothing a reply
# contains (who asked, bookkeeping), or only a value that changes nothing is accepted.
_HARMLESS = ("user", "metadata", "store", "service_tier", "prompt_cache_key",
             "safety_identifier")
_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "modalities": ["text"]}


def refuse_unsupported(req: DecodingFields) -> None:
    """Every field the server would otherwise ignore: a 400 naming it, unless harmless or neutral
    (a penalty of 0, an empty logit_bias): a client must not believe it got what it asked for."""
    for name, value in (req.model_extra or {}).items():
        if name in _HARMLESS:
            continue
        if name in _NEUTRAL:
            if value is None or value == _NEUTRAL[name]:
                continue
            raise APIError(400, f"{name} is not supported by this server (only {json.dumps(_NEUTRAL[name])} or null)",
                           param=name, code="unsupported_parameter")
        raise APIError(400, f"{name!r} is not a parameter this server supports", param=name,
                       code="unsupported_parameter")


def response_grammar(req: ChatCompletionRequest) -> Grammar | None:
    """response_format as the grammar decoding is constrained to (None for text or none)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if req.tools and req.tool_choice != "none":
        raise APIError(400, "response_format json_object/json_schema together with tools is not supported yet: "
                       "send one or the other (or tool_choice 'none')", param="response_format")
    if fmt.type == "json_object":
        return Grammar("json")
    schema = fmt.json_schema.json_schema if fmt.json_schema is not None else None
    if not isinstance(schema, dict):
        raise APIError(400, "response_format.json_schema.schema: a JSON schema object is required for type "
                       "'json_schema'", param="response_format.json_schema.schema")
    return Grammar.json_schema(schema)


def sampling(req: ChatCompletionRequest, default_max_tokens: int) -> SamplingParams:
    """Raises InvalidSamplingError (-> 400) for values the engine refuses."""
    if req.n not in (None, 1):
        raise APIError(400, f"n={req.n} is not supported; this server returns exactly one choice (n=1)", param="n")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    refuse_unsupported(req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return decoding_params(req, default_max_tokens if max_tokens is None else max_tokens,
                           grammar=response_grammar(req), logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                           parallel_tool_calls=bool(req.parallel_tool_calls))


def decoding_params(req: DecodingFields, max_new_tokens: int, **more: Any) -> SamplingParams:
    """The sampling parameters both routes share (the server's default temperature, OpenAI's 1.0,
    where the request names none), plus the route's own ``more``."""
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        max_new_tokens=max_new_tokens,
        stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
        **more,
    )
