"""LocalBackend: our engine behind the backend interface (speculative, or plain target decoding).

Chat template and tools: models whose template renders tools get them through
``apply_chat_template(tools=...)``; others get them in the system prompt, Hermes style, and their
``<tool_call>`` text is parsed back. A session keeps the engine's KV cache between rounds, so each
round prefills only what was appended (tool results, the next user turn).

tool_choice: "auto" offers the tools; "none" hides them; "required" or a tool's name force a call.
By default (``constrain_tool_calls=True``) a forced call is a grammar (``tool_call_grammar``): the
model writes the whole call, only an offered tool's name (the named one) and arguments of its
schema, and the grammar closes it. ``constrain_tool_calls=False`` is the older text path, kept for
``agentspark serve --tool-calls forced`` and for rebuilding rounds recorded on it (their traces
carry ``forced_prefix``): the start of the call is put in the model's mouth — for a named tool up
to the value of its first required argument (``forced_prefix`` says exactly what was forced) — and
with ``close_forced_calls`` the model writes only that argument's value and the call is closed for
it (``forced_suffix``), unless the token budget cut the value.

finish_reason is "length" whenever the budget cut the reply, even in the middle of a call: the
fragment of that call is in ``invalid_tool_calls``, never reported as a call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..agent.tool_prompt import apply_chat_template_with_tools
from ..constraints import Grammar
from ..engine import Engine, StreamChunk
from ..errors import InvalidRequestError
from ..logprobs import wire_logprobs
from ..prompts import encode_prompt
from ..sampling import SamplingParams
from .base import Backend, BackendChunk, BackendResponse, ToolChoice, finish_reason, reply_message


def forced_prefix(tool_choice: ToolChoice, tools: list[dict[str, Any]] | None) -> str:
    """The text a tool_choice puts at the start of the reply ('' for auto/none).

    Raises InvalidRequestError when the named tool's ``parameters`` is not the JSON schema of an
    object this needs (``properties`` an object of schemas, ``required`` a list of names)."""
    if tool_choice in ("auto", "none"):
        return ""
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice == "required":
        if not names:
            raise InvalidRequestError("tool_choice 'required' needs at least one tool")
        return '<tool_call>\n{"name": "'
    if tool_choice not in names:
        raise InvalidRequestError(f"tool_choice {tool_choice!r} names no offered tool; offered: {names}")
    # Force the call's opening up to its first required argument's value, so that even a small
    # model writes an arguments object of the right shape.
    schema = next(t["function"] for t in tools or [] if t["function"]["name"] == tool_choice)
    prefix = '<tool_call>\n{"name": ' + json.dumps(tool_choice) + ', "arguments": {'
    first = _first_required_argument(tool_choice, schema.get("parameters"))
    if first is not None:
        name, kind = first
        prefix += json.dumps(name) + ": " + ('"' if kind == "string" else "")
    return prefix


def _first_required_argument(tool: str, params: Any) -> tuple[str, Any] | None:
    """(name, JSON-schema type) of a tool's first required argument, None if it requires none.

    Tool schemas come straight from clients, so each shape this reads is checked: a schema that
    is not an object, ``properties`` that is not an object of schemas, or ``required`` that is not
    a list of names would otherwise fail deep in here as a server error."""
    where = f"tool {tool!r}: function.parameters"
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise InvalidRequestError(f"{where} must be a JSON schema object, got {type(params).__name__}")
    properties = params.get("properties") or {}
    required = params.get("required") or []
    if not isinstance(properties, dict):
        raise InvalidRequestError(f"{where}.properties must be an object mapping argument names to schemas, "
                                  f"got {type(properties).__name__}")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InvalidRequestError(f"{where}.required must be a list of argument names (strings), got {required!r}")
    if not required:
        return None
    schema = properties.get(required[0], {})
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"{where}.properties[{required[0]!r}] must be a JSON schema object, "
                                  f"got {type(schema).__name__}")
    return required[0], schema.get("type")


CLOSE_FORCED_CALL = '"}}\n</tool_call>'  # closes a forced call after its first string argument


@dataclass(frozen=True)
class PreparedRequest:
    prompt_ids: list[int]
    prefix: str  # forced into the model's reply ('' if none)
    params: SamplingParams
    suffix: str  # appended to close the forced call ('' if none)


class LocalBackend(Backend):
    def __init__(
        self, engine: Engine, *, speculative: bool = True, reuse_cache: bool = True, close_forced_calls: bool = False,
        constrain_tool_calls: bool = True,
    ) -> None:
        """``constrain_tool_calls``: a forced tool_choice is a grammar (the default) or, False, the
        text path (module docstring; ``close_forced_calls`` applies to that path only)."""
        if engine.tokenizer is None:
            raise InvalidRequestError("a local backend needs a model with a tokenizer and a chat template")
        self.engine = engine
        self.speculative = speculative and engine.drafter is not None
        self.reuse_cache = reuse_cache
        self.close_forced_calls = close_forced_calls
        self.constrain_tool_calls = constrain_tool_calls
        self.name = f"local-{engine.drafter.name if self.speculative else 'plain'}"

    def reset(self) -> None:
        self.engine.reset()

    def prepare(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
        *,
        close_forced_call: bool | None = None,
        constrain_tool_call: bool | None = None,
    ) -> PreparedRequest:
        """What the engine runs for a request: prompt ids (ending with the forced prefix, if any)
        and sampling parameters (with the tool-call grammar, if any); ``close_forced_call`` and
        ``constrain_tool_call`` override the backend's settings for this request (audits rebuild a
        recorded round with them)."""
        return prepare_request(self.engine.tokenizer, messages, tools, sampling, tool_choice,
                               **forcing(self, close_forced_call, constrain_tool_call))

    def open(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        """``stream``, with the request checked now (tools, template, the prompt against the
        context): a bad one raises here, before the caller commits to a streamed response."""
        prepared = self.prepare(messages, tools, sampling, tool_choice)
        self.engine.check(prepared.prompt_ids, prepared.params)
        return self._stream(prepared, tools if tool_choice != "none" else None)

    def open_text(self, prompt: str | list[int], sampling: SamplingParams | None = None) -> Iterator[BackendChunk]:
        prepared = text_request(self.engine.tokenizer, prompt, sampling)
        self.engine.check(prepared.prompt_ids, prepared.params)
        return self._stream(prepared, None)

    def stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        sampling: SamplingParams | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> Iterator[BackendChunk]:
        offered = tools if tool_choice != "none" else None
        yield from self._stream(self.prepare(messages, tools, sampling, tool_choice), offered)

    def _stream(self, prepared: PreparedRequest, offered: list[dict[str, Any]] | None) -> Iterator[BackendChunk]:
        chunks = self.engine.stream(prepared.prompt_ids, prepared.params, speculative=self.speculative,
                                    reuse_cache=self.reuse_cache)
        yield from relay(chunks, prepared, offered, self.name, token_text(self.engine.tokenizer))


def forcing(backend: Any, close_forced_call: bool | None, constrain_tool_call: bool | None) -> dict[str, bool]:
    """``prepare_request``'s forcing keywords: a request's overrides, else the backend's settings."""
    return {"close_forced_call": backend.close_forced_calls if close_forced_call is None else close_forced_call,
            "constrain_tool_calls": backend.constrain_tool_calls if constrain_tool_call is None else constrain_tool_call}


def tool_call_grammar(tools: list[dict[str, Any]], tool_choice: ToolChoice, *, parallel: bool = False) -> Grammar:
    """The reply a ``required`` or named tool_choice allows: one Hermes-style call
    (``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``, the markup our parser reads)
    naming an offered tool (the named one) with arguments of its schema (only the declared ones,
    unless the schema says otherwise), then the end. ``parallel`` (``required`` only): one or more
    such calls, a newline between them, the model ending after any."""
    names = [t["function"]["name"] for t in tools or []]
    if tool_choice == "required" and not names:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool")
    if tool_choice != "required" and tool_choice not in names:
        raise InvalidRequestError(f"tool_choice {tool_choice!r} names no offered tool; offered: {names}")
    calls = []
    for t in tools or []:
        fn = t["function"]
        if tool_choice != "required" and fn["name"] != tool_choice:
            continue
        params = fn.get("parameters")
        _first_required_argument(fn["name"], params)  # the same checks of the schema's shape
        arguments = dict(params) if isinstance(params, dict) and params else {"type": "object", "properties": {}}
        arguments.setdefault("additionalProperties", False)  # only the declared arguments, as OpenAI's strict mode
        calls.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                      "properties": {"name": {"const": fn["name"]}, "arguments": arguments}})
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    several = parallel and tool_choice == "required"
    lark = "\n".join([
        'start: call ("\\n" call)*' if several else "start: call",
        r'call: "<tool_call>\n" body "\n</tool_call>"',  # Lark's own escapes
        f"body: %json {json.dumps(schema)}",
    ])
    return Grammar("lark", lark)


def prepare_request(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    sampling: SamplingParams | None, tool_choice: ToolChoice, *,
                    close_forced_call: bool, constrain_tool_calls: bool = False) -> PreparedRequest:
    """A chat request as the engine runs it: prompt ids (ending with the forced prefix, if any) and
    sampling parameters (module docstring: tool_choice, closing forced calls). With
    ``constrain_tool_calls`` a ``required`` or named tool_choice is a grammar instead of a forced
    prefix: the model writes the whole call, only as the offered tools allow, and the grammar ends it."""
    offered = tools if tool_choice != "none" else None
    if constrain_tool_calls and tool_choice not in ("auto", "none"):
        params = sampling or SamplingParams()
        if params.grammar is not None:
            raise InvalidRequestError("a tool_choice that forces a call and a grammar (response_format) exclude each other")
        prompt_ids = apply_chat_template_with_tools(tokenizer, messages, offered)
        grammar = tool_call_grammar(offered, tool_choice, parallel=params.parallel_tool_calls)
        return PreparedRequest(prompt_ids, "", replace(params, grammar=grammar), "")
    prefix = forced_prefix(tool_choice, offered)
    prompt_ids = apply_chat_template_with_tools(tokenizer, messages, offered)
    if prefix:
        prompt_ids = prompt_ids + list(tokenizer.encode(prefix, add_special_tokens=False))
    params = sampling or SamplingParams()
    # A forced call that ends inside a string value: when closing, the model writes only that
    # value (generation stops at its closing quote) and the call is closed for it.
    closing = close_forced_call and prefix.endswith('"') and tool_choice not in ("auto", "none", "required")
    if closing:
        params = replace(params, stop=(*params.stop, '"'))
    return PreparedRequest(prompt_ids, prefix, params, CLOSE_FORCED_CALL if closing else "")


def text_request(tokenizer: Any, prompt: str | list[int], sampling: SamplingParams | None) -> PreparedRequest:
    """A plain completion's request: the prompt tokenized as is (``agentspark generate``'s rule)."""
    return PreparedRequest(encode_prompt(tokenizer, prompt), "", sampling or SamplingParams(), "")


def token_text(tokenizer: Any) -> Callable[[int], str]:
    """A token id's text alone (logprobs' ``token``)."""
    return lambda token_id: tokenizer.decode([token_id])


def relay(chunks: Iterable[StreamChunk], prepared: PreparedRequest, offered: list[dict[str, Any]] | None,
          backend: str, decode: Callable[[int], str]) -> Iterator[BackendChunk]:
    """An engine's stream of a prepared request as backend chunks: the forced prefix first, the
    text deltas (with their tokens' logprobs where the request asked; ``decode`` names them), the
    closing suffix, then the response (the reply parsed for tool calls)."""
    prompt_ids, prefix, suffix = prepared.prompt_ids, prepared.prefix, prepared.suffix
    if prefix:
        yield BackendChunk(delta=prefix)
    result = None
    for chunk in chunks:
        logprobs = None if chunk.logprobs is None else wire_logprobs(chunk.logprobs, decode)
        if chunk.delta or logprobs:
            yield BackendChunk(delta=chunk.delta, logprobs=logprobs)
        result = chunk.result or result
    assert result is not None
    cut_off = result.finish_reason == "length"
    # A forced call is closed only when the model finished its value: closing one the budget
    # cut would invent a call with a truncated argument (read_file("notes.tx")).
    suffix = "" if cut_off else suffix
    if suffix:
        yield BackendChunk(delta=suffix)
    text = prefix + result.text + suffix
    message = reply_message(text, parse_tools=bool(offered), cut_off=cut_off)
    message.raw_text = text
    yield BackendChunk(
        delta="",
        response=BackendResponse(
            message=message,
            finish_reason=finish_reason(message, result.finish_reason),
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(result.token_ids),
            backend=backend,
            stats=result.stats,
            prompt_ids=prompt_ids,
            completion_ids=list(result.token_ids),
            forced_prefix=prefix,
            forced_suffix=suffix,
            logprobs=None if result.logprobs is None else wire_logprobs(result.logprobs, decode),
        ),
    )
