"""create_app: an OpenAI-compatible HTTP server (``/v1/models``, ``/v1/chat/completions``, and
``/v1/completions`` for plain prompts where the backend holds a model: completions.py) for any Backend.

Generations run on worker threads (runner.py): one at a time for a single-request backend, all at
once for a concurrent one (the batch backend); a client that disconnects cancels its generation,
queued or running, and with the batch backend frees only its slot. Admission is bounded: past the
backend's concurrency plus ``max_queued`` waiting, 429 with Retry-After. A stream's headers go out
as soon as its request is checked, queued or not. ``GET /metrics``: Prometheus text (metrics.py). Defaults follow OpenAI where the engine's differ:
temperature 1.0 when the request names none (send 0 for greedy), and ``max_tokens`` defaults to
``default_max_tokens``. Response extension: ``"agentspark": {"backend", "stats", "forced_prefix",
"invalid_tool_calls"}`` on completions, and on the last chunks of a stream.

Before any route, RequestGuard (guard.py) checks the API key from the headers and caps the body
(413); the chat route then parses and validates its body on a worker thread, so neither a
client without a key nor a big body holds up the event loop (and /health with it).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from ..backends.base import Backend, BackendResponse
from . import schemas
from .convert import parse_request, sampling, to_internal, tools_and_choice
from .errors import APIError, install_error_handlers, translate
from .guard import DEFAULT_MAX_BODY_BYTES, OPEN_PATHS, RequestGuard, check_api_key
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import RequestTimer, ServerMetrics
from .completions import CompletionRequest, add_text_completions
from .runner import Job, Runner
from .streaming import ClientGone, DisconnectWatch, JobStreamingResponse, next_chunk, sse_events

DEFAULT_MAX_QUEUED = 64


def _call_ids(n: int) -> list[str]:
    """Fresh ids for the tool calls of one response (a backend's own ids repeat across rounds)."""
    return [f"call_{uuid.uuid4().hex[:24]}" for _ in range(n)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": schemas.ErrorBody} for status in statuses}


def create_app(backend: Backend, *, model_name: str, api_key: str | None = None,
               default_max_tokens: int = 256, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_queued: int = DEFAULT_MAX_QUEUED, aliases: Sequence[str] = ()) -> FastAPI:
    """``api_key`` None serves without a key; with one, every path but /health needs it.
    ``max_body_bytes`` caps request bodies (413 above it). Admission: as many requests as the
    backend runs at once (a batch backend's slots, else 1) plus ``max_queued`` waiting; past that
    429 with Retry-After. ``aliases``: more names the served model answers to (listed by /v1/models;
    replies name ``model_name``)."""
    check_api_key(api_key)  # "" must not quietly mean "no key"
    if not isinstance(max_queued, int) or max_queued < 0:
        raise ValueError(f"max_queued must be an integer >= 0, got {max_queued!r}")
    concurrency = getattr(backend, "slots", 1) if backend.concurrent else 1
    admission = Admission(concurrency + max_queued)
    # a concurrent backend's requests each hold a lane that only relays; otherwise one lane runs them
    runner = Runner(lanes=admission.limit if backend.concurrent else 1)

    def load() -> tuple[int, int]:
        own = backend.load()
        if own is not None:
            return own
        return min(admission.count, 1), max(0, admission.count - 1)

    metrics = ServerMetrics(load, backend.engine_clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        runner.start()
        yield
        runner.shutdown()

    # With a key, /openapi.json needs it like /v1 (guard.py); the /docs and /redoc pages would fetch
    # it without the key, so they are not served at all.
    pages = {"docs_url": None, "redoc_url": None} if api_key else {}
    app = FastAPI(title="agentspark", summary="OpenAI-compatible speculative decoding server", lifespan=lifespan,
                  **pages)
    app.state.backend, app.state.runner, app.state.model_name = backend, runner, model_name
    app.state.metrics, app.state.admission = metrics, admission
    install_error_handlers(app)
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes)
    _complete_openapi(app, keyed=bool(api_key))
    created = schemas.now()
    auth = _errors(401) if api_key else {}

    v1 = APIRouter(prefix="/v1")
    names = list(dict.fromkeys([model_name, *aliases]))  # in order, each once
    cards = {name: {"id": name, "object": "model", "owned_by": "agentspark", "created": created} for name in names}

    @app.get("/health", response_model=None, responses={200: {"model": schemas.HealthBody}})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "backend": backend.name}

    @v1.get("/models", response_model=None, responses={200: {"model": schemas.ModelListBody}, **auth})
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": list(cards.values())}

    @v1.get("/models/{model_id:path}", response_model=None,
            responses={200: {"model": schemas.ModelBody}, **_errors(404), **auth})
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in cards:
            raise _unknown_model(model_id, names)
        return cards[model_id]

    def prepare(body: bytes) -> tuple[schemas.ChatCompletionRequest, list[dict[str, Any]], Any, Any, Any]:
        """From the body to the backend's arguments: CPU-bound for big bodies, so run on a worker thread."""
        req = parse_request(body)
        if req.model is not None and req.model not in cards:
            raise _unknown_model(req.model, names)
        messages = to_internal(req.messages)
        tools, choice = tools_and_choice(req)
        return req, messages, tools, choice, sampling(req, default_max_tokens)

    async def start(open_chunks: Callable[[], Any]) -> Job:
        """Admit a request (429 past the bound), open its chunks on a worker thread (a bad request
        raises here, with its status code) and queue them: the request's job."""
        if not admission.enter():
            metrics.rejected.inc()
            raise _busy(concurrency, max_queued, metrics.mean_request_s)
        try:  # checked now (a bad request gets its status code), queued with the batch backend
            chunks = await run_in_threadpool(open_chunks)
            return runner.submit(lambda: chunks, on_done=admission.leave)
        except BaseException:
            admission.leave()
            raise

    async def collect(job: Job, watch: DisconnectWatch, timer: RequestTimer) -> BackendResponse | Response:
        """A non-streamed request's final response, or the Response to send instead (a gone
        client, an error in the API's words)."""
        final: BackendResponse | None = None
        try:
            while (chunk := await next_chunk(job, watch)) is not None:
                timer.saw(chunk.delta)
                final = chunk.response or final
            if final is None:
                raise RuntimeError(f"backend {backend.name} ended its stream without a response")
        except ClientGone:
            job.cancel()
            timer.ended("cancelled")
            return Response(status_code=499)  # nobody reads it
        except Exception as exc:
            job.cancel()
            timer.ended("error")
            return translate(exc).response()
        except BaseException:  # cancelled: the client or the server went away
            job.cancel()
            timer.ended("cancelled")
            raise
        timer.finished(final.stats, final.completion_tokens)
        return final

    @v1.post("/chat/completions", response_model=None, openapi_extra=_CHAT_REQUEST_BODY,
             responses={200: _CHAT_200, **_errors(400, 404, 413, 429), **auth})
    async def chat_completions(request: Request) -> Response:
        timer = RequestTimer(metrics)
        req, messages, tools, choice, params = await run_in_threadpool(prepare, await request.body())
        job = await start(lambda: backend.open(messages, tools, params, choice))
        completion_id = schemas.new_completion_id()
        watch = DisconnectWatch(request)
        if req.stream:  # headers at once, queued or not; later errors travel as events
            events = sse_events(
                job, watch, timer, completion_id=completion_id, model=model_name,
                parse_tools=bool(tools) and choice != "none",
                include_usage=bool(req.stream_options and req.stream_options.include_usage), call_ids=_call_ids)
            return JobStreamingResponse(events, job, timer)
        final = await collect(job, watch, timer)
        if isinstance(final, Response):
            return final
        body = schemas.completion_body(final, completion_id=completion_id, created=schemas.now(), model=model_name,
                                       call_ids=_call_ids(len(final.message.tool_calls)))
        return JSONResponse(body)

    add_text_completions(v1, backend=backend, model_name=model_name, known=lambda name: name in cards,
                         unknown=lambda name: _unknown_model(name, names), start=start, collect=collect,
                         metrics=metrics, auth=auth)

    @app.get("/metrics", response_model=None, responses={200: {"description": "Prometheus text format",
                                                               "content": {"text/plain": {}}}, **auth})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    app.include_router(v1)
    return app


_CHAT_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}
_CHAT_200 = {"model": schemas.CompletionBody, "description": "The completion, or with stream: true its "
             "server-sent events (chat.completion.chunk objects, then data: [DONE])",
             "content": {"text/event-stream": {"schema": schemas.SSE_EVENT_SCHEMA}}}


def _complete_openapi(app: FastAPI, *, keyed: bool) -> None:
    """Finish FastAPI's OpenAPI schema by hand, once: add ChatCompletionRequest (and the stream's
    ChunkBody), which FastAPI no longer sees since the route reads its body itself (to parse it
    off the event loop); drop the 422s it documents for parameters (validation errors are 400
    here); with a key, document the bearer scheme on every path but /health."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # caches itself in app.openapi_schema: completed in place
            _add_models(schema, schemas.ChatCompletionRequest, schemas.ChunkBody, CompletionRequest)
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
                    if keyed and path not in OPEN_PATHS:
                        operation["security"] = [{"bearer": []}]
            if keyed:
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_models(schema: dict[str, Any], *models: type) -> None:
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    clash = {name for name, d in defs["$defs"].items() if components.get(name, d) != d}
    assert not clash, f"two different models are both named {clash}"
    components.update(defs["$defs"])
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, answered 400 here
        components.pop(name, None)


class Admission:
    """Requests admitted and not yet ended (counted on the event loop's thread only)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


def _busy(running: int, queued: int, mean_request_s: float) -> APIError:
    wait = min(60, max(1, math.ceil(mean_request_s)))  # about one request's time frees a place
    return APIError(429, f"The server is at capacity ({running} running and {queued} queued); retry in {wait} s.",
                    type_="rate_limit_error", code="server_busy", headers={"Retry-After": str(wait)})


def _unknown_model(name: str, served: list[str]) -> APIError:
    listed = " or ".join(map(repr, served))
    return APIError(404, f"The model {name!r} does not exist; this server serves {listed}.",
                    param="model", code="model_not_found")
