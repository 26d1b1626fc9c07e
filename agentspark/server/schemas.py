"""Request and response shapes of the OpenAI chat-completions API, as far as we serve it.

Requests are pydantic models that ignore fields we do not use (OpenAI clients send many) but
take the fields we do use at their JSON type: no 'yes' for a boolean, no true for a count, no
1.0 for an integer (pydantic's lax mode would coerce them). Responses are built as plain dicts by
the small helpers at the bottom, so the wire shape is visible in one place; the ``*Body`` models
below only document those shapes in the OpenAPI schema (the fuzz test checks them against what
the server sends).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from ..backends.base import BackendResponse, ToolCallRequest
from ..sampling import MAX_SEED, MAX_TEMPERATURE, MAX_TOP_K


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


Content = str | list[ContentPart] | None


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict[str, Any] | None = None  # OpenAI sends a JSON string; a dict is tolerated


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Lenient):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")  # "schema" shadows pydantic's own
    strict: StrictBool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class DecodingFields(_Lenient):
    """What the chat and the plain completions requests share: the model and how to decode."""

    model: str | None = None  # absent means the served model
    # Bounds as SamplingParams enforces them (documented here for clients; JSON has no inf or NaN).
    temperature: StrictFloat | None = Field(None, ge=0, le=MAX_TEMPERATURE)  # None: DEFAULT_TEMPERATURE (1.0)
    top_p: StrictFloat | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=0, le=MAX_TOP_K)  # extension (vLLM and SGLang accept it too)
    max_tokens: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None


class ChatCompletionRequest(DecodingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    # true: tool_choice "required" may be answered with several calls (the constrained grammar);
    # absent or false: with one (OpenAI's default is true; a 135M model repeats a call it may repeat)
    parallel_tool_calls: StrictBool | None = None
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = None  # the target's logprobs of each generated token (agentspark/logprobs.py)
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)  # alternatives per token; needs logprobs: true
    # json_object / json_schema: decoding constrained to it (agentspark/constraints.py)
    response_format: ResponseFormat | None = None


# ---- response shapes, for the OpenAPI schema only ----------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class HealthBody(BaseModel):
    status: Literal["ok"]
    model: str
    backend: str


class ModelBody(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str
    created: int


class ModelListBody(BaseModel):
    object: Literal["list"]
    data: list[ModelBody]


class WireFunction(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class WireToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: WireFunction


class CompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[WireToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobBody(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobBody] | None
    refusal: None


class CompletionChoice(BaseModel):
    index: int
    message: CompletionMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class UsageBody(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class InvalidToolCall(BaseModel):
    raw: str
    error: str


class ExtensionBody(BaseModel):
    backend: str
    stats: dict[str, Any] | None
    forced_prefix: str
    invalid_tool_calls: list[InvalidToolCall]


class CompletionBody(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice] = Field(min_length=1, max_length=1)
    usage: UsageBody
    agentspark: ExtensionBody


class ChunkToolCall(WireToolCall):
    index: int


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChunkBody(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(max_length=1)  # [] on the usage chunk
    usage: UsageBody | None = None
    agentspark: ExtensionBody | None = None


# One server-sent event of a stream: its data is a chunk, an error that came after the headers
# (ErrorBody), or the final [DONE]. OpenAPI 3.1 has a text/event-stream schema describe one event.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"anyOf": [
        {"const": "[DONE]"},
        {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [
            {"$ref": "#/components/schemas/ChunkBody"}, {"$ref": "#/components/schemas/ErrorBody"}]}},
    ]}},
}


# ---- responses ------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def wire_tool_calls(calls: list[ToolCallRequest], ids: list[str], *, indexed: bool = False) -> list[dict[str, Any]]:
    out = []
    for i, (call, call_id) in enumerate(zip(calls, ids)):
        item: dict[str, Any] = {"id": call_id, "type": "function",
                                "function": {"name": call.name, "arguments": json.dumps(call.args, ensure_ascii=False)}}
        out.append({"index": i, **item} if indexed else item)
    return out


def usage(response: BackendResponse) -> dict[str, int]:
    return {
        "prompt_tokens": response.prompt_tokens,
        "completion_tokens": response.completion_tokens,
        "total_tokens": response.prompt_tokens + response.completion_tokens,
    }


def extension(response: BackendResponse) -> dict[str, Any]:
    """The ``agentspark`` field: what an OpenAI response has no slot for."""
    return {
        "backend": response.backend,
        "stats": response.stats.to_dict(rounds=False) if response.stats is not None else None,
        "forced_prefix": response.forced_prefix,
        "invalid_tool_calls": [{"raw": c.raw, "error": c.error} for c in response.message.invalid_tool_calls],
    }


def completion_body(response: BackendResponse, *, completion_id: str, created: int, model: str,
                    call_ids: list[str]) -> dict[str, Any]:
    message = response.message
    wire: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = wire_tool_calls(message.tool_calls, call_ids)
        if not message.content:
            wire["content"] = None
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": wire, "logprobs": choice_logprobs(response.logprobs),
                     "finish_reason": response.finish_reason}],
        "usage": usage(response),
        "agentspark": extension(response),
    }


def choice_logprobs(items: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A choice's ``logprobs``: None unless the request asked (then its tokens' items, maybe none)."""
    return None if items is None else {"content": items, "refusal": None}


def chunk_body(*, completion_id: str, created: int, model: str, delta: dict[str, Any] | None = None,
               finish_reason: str | None = None, logprobs: list[dict[str, Any]] | None = None,
               **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": choice_logprobs(logprobs),
                                         "finish_reason": finish_reason}]
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}
