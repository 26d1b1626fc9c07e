"""``POST /v1/completions``: OpenAI's (legacy) completions API for plain prompts.

The prompt is continued as is: no chat template, no tools (``agentspark generate``'s rule for
text). One prompt per request (a string, a list of one string, token ids, or a list of one list
of token ids) and one choice. Defaults as OpenAI's: ``max_tokens`` 16, temperature 1.0 (send 0 for
greedy: the same policy as the chat route). ``logprobs: k`` (0..5) reports every generated token's
log-probability under the target and the k best alternatives, in the legacy shape (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``). ``echo``, ``suffix``, ``best_of`` > 1 and
``n`` > 1 are refused by name, as are penalties and unknown fields (convert.refuse_unsupported).
Admission, queueing, disconnects and metrics are the chat route's (app.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, ValidationError
from starlette.concurrency import run_in_threadpool

from ..backends.base import Backend
from ..sampling import SamplingParams
from . import schemas
from .convert import decoding_params, load_json, refuse_unsupported
from .errors import APIError, validation_error
from .metrics import RequestTimer, ServerMetrics
from .runner import Job
from .streaming import DisconnectWatch, JobStreamingResponse, StreamEnd, guarded_chunks, sse

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for this API (the chat route's is the server's own)
MAX_LEGACY_LOGPROBS = 5  # OpenAI's bound on the completions API's logprobs


class CompletionRequest(schemas.DecodingFields):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    best_of: StrictInt | None = None
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LEGACY_LOGPROBS)
    echo: StrictBool | None = None
    suffix: str | None = None


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    text: str
    index: int
    logprobs: LegacyLogprobs | None
    finish_reason: str | None


class TextCompletionBody(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: schemas.UsageBody | None = None
    agentspark: schemas.ExtensionBody | None = None


def parse_completion(body: bytes) -> CompletionRequest:
    try:
        return CompletionRequest.model_validate(load_json(body))
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from None


def prompt_of(req: CompletionRequest) -> str | list[int]:
    """The one prompt: text or token ids."""
    p = req.prompt
    if isinstance(p, list) and p and isinstance(p[0], (str, list)):
        if len(p) != 1:
            raise APIError(400, f"one prompt per request, got {len(p)}; send them as separate requests", param="prompt")
        p = p[0]
    if not p:
        raise APIError(400, "the prompt is empty", param="prompt")
    return p


def text_sampling(req: CompletionRequest) -> SamplingParams:
    """The request's sampling parameters; what this route cannot honour is a 400 naming it."""
    for name, value, fine in (("n", req.n, (None, 1)), ("best_of", req.best_of, (None, 1)),
                              ("echo", req.echo, (None, False)), ("suffix", req.suffix, (None, ""))):
        if value not in fine:
            raise APIError(400, f"{name}={value!r} is not supported by this server", param=name,
                           code="unsupported_parameter")
    refuse_unsupported(req)
    return decoding_params(req, DEFAULT_COMPLETION_TOKENS if req.max_tokens is None else req.max_tokens,
                           logprobs=req.logprobs)


def legacy_logprobs(items: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat-shaped logprobs items -> the completions API's lists; ``offset``: where in the
    completion's text the first token starts."""
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item["token"])
    return {"tokens": [i["token"] for i in items], "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [{t["token"]: t["logprob"] for t in i["top_logprobs"]} for i in items],
            "text_offset": offsets}


def _body(completion_id: str, model: str, text: str, logprobs: dict[str, Any] | None, finish: str | None,
          **extra: Any) -> dict[str, Any]:
    return {"id": completion_id, "object": "text_completion", "created": schemas.now(), "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}], **extra}


async def text_events(job: Job, watch: DisconnectWatch, timer: RequestTimer, *, completion_id: str, model: str,
                      include_usage: bool) -> AsyncIterator[str]:
    """The stream: each delta (with its tokens' logprobs), the finish, usage if asked, [DONE]."""

    offset = 0
    async for current in guarded_chunks(job, watch, timer):
        if isinstance(current, StreamEnd):
            end = current
            break
        if current.delta or current.logprobs:
            lp = None if current.logprobs is None else legacy_logprobs(current.logprobs, offset)
            yield sse(_body(completion_id, model, current.delta, lp, None))
            offset += len(current.delta)
    if end.final is None:
        if end.error_event:
            yield end.error_event
        return
    final = end.final
    ext = schemas.extension(final)
    yield sse(_body(completion_id, model, "", None, final.finish_reason, agentspark=ext))
    if include_usage:
        yield sse({**_body(completion_id, model, "", None, None), "choices": [], "usage": schemas.usage(final)})
    yield "data: [DONE]\n\n"


def add_text_completions(v1: APIRouter, *, backend: Backend, model_name: str, known: Callable[[str], bool],
                         unknown: Callable[[str], APIError], start: Callable[..., Any], collect: Callable[..., Any],
                         metrics: ServerMetrics, auth: dict) -> None:
    """Register ``POST /v1/completions`` on ``v1``; ``start`` and ``collect`` are the chat route's
    admission-and-queue and its wait for a non-streamed response (app.py)."""
    errors = {status: {"model": schemas.ErrorBody} for status in (400, 404, 413, 429)}

    body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/CompletionRequest"}}}}}

    @v1.post("/completions", response_model=None, openapi_extra=body,
             responses={200: {"model": TextCompletionBody, "description": "The completion, or with stream: true "
                              "its server-sent events (text_completion objects, then data: [DONE])"},
                        **errors, **auth})
    async def completions(request: Request) -> Response:
        timer = RequestTimer(metrics)
        req = await run_in_threadpool(parse_completion, await request.body())
        if req.model is not None and not known(req.model):
            raise unknown(req.model)
        prompt, params = prompt_of(req), text_sampling(req)
        job = await start(lambda: backend.open_text(prompt, params))
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        watch = DisconnectWatch(request)
        if req.stream:
            events = text_events(job, watch, timer, completion_id=completion_id, model=model_name,
                                 include_usage=bool(req.stream_options and req.stream_options.include_usage))
            return JobStreamingResponse(events, job, timer)
        final = await collect(job, watch, timer)
        if isinstance(final, Response):
            return final
        lp = None if final.logprobs is None else legacy_logprobs(final.logprobs, 0)
        return JSONResponse(_body(completion_id, model_name, final.message.content, lp, final.finish_reason,
                                  usage=schemas.usage(final), agentspark=schemas.extension(final)))
