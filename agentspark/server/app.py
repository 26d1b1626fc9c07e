"""create_app: an OpenAI-compatible HTTP server (``/v1/models``, ``/v1/chat/completions``) for any Backend.

Generations run one at a time on a worker thread (runner.py); a client that disconnects
cancels its generation, queued or running. Defaults follow OpenAI where the engine's differ:
temperature 1.0 when the request names none (send 0 for greedy), and ``max_tokens`` defaults to
``default_max_tokens``. Response extension: ``"agentspark": {"backend", "stats", "forced_prefix",
"invalid_tool_calls"}`` on completions, and on the last chunks of a stream.

Before any route, RequestGuard (guard.py) checks the API key from the headers and caps the body
(413); the chat route then parses and validates its body on a worker thread, so neither a
client without a key nor a big body holds up the event loop (and /health with it).
"""

from __future__ import annotations

import uuid
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
from .runner import Runner
from .streaming import ClientGone, DisconnectWatch, JobStreamingResponse, next_chunk, sse_events


def _call_ids(n: int) -> list[str]:
    """Fresh ids for the tool calls of one response (a backend's own ids repeat across rounds)."""
    return [f"call_{uuid.uuid4().hex[:24]}" for _ in range(n)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": schemas.ErrorBody} for status in statuses}


def create_app(backend: Backend, *, model_name: str, api_key: str | None = None,
               default_max_tokens: int = 256, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """``api_key`` None serves without a key; with one, every path but /health needs it.
    ``max_body_bytes`` caps request bodies (413 above it)."""
    check_api_key(api_key)  # "" must not quietly mean "no key"
    runner = Runner()

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
    install_error_handlers(app)
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes)
    _complete_openapi(app, keyed=bool(api_key))
    created = schemas.now()
    auth = _errors(401) if api_key else {}

    v1 = APIRouter(prefix="/v1")
    model_card = {"id": model_name, "object": "model", "owned_by": "agentspark", "created": created}

    @app.get("/health", response_model=None, responses={200: {"model": schemas.HealthBody}})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "backend": backend.name}

    @v1.get("/models", response_model=None, responses={200: {"model": schemas.ModelListBody}, **auth})
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @v1.get("/models/{model_id:path}", response_model=None,
            responses={200: {"model": schemas.ModelBody}, **_errors(404), **auth})
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise _unknown_model(model_id, model_name)
        return model_card

    def prepare(body: bytes) -> tuple[schemas.ChatCompletionRequest, list[dict[str, Any]], Any, Any, Any]:
        """From the body to the backend's arguments: CPU-bound for big bodies, so run on a worker thread."""
        req = parse_request(body)
        if req.model is not None and req.model != model_name:
            raise _unknown_model(req.model, model_name)
        messages = to_internal(req.messages)
        tools, choice = tools_and_choice(req)
        return req, messages, tools, choice, sampling(req, default_max_tokens)

    @v1.post("/chat/completions", response_model=None, openapi_extra=_CHAT_REQUEST_BODY,
             responses={200: _CHAT_200, **_errors(400, 404, 413), **auth})
    async def chat_completions(request: Request) -> Response:
        req, messages, tools, choice, params = await run_in_threadpool(prepare, await request.body())
        job = runner.submit(lambda: backend.stream(messages, tools, params, choice))
        completion_id = schemas.new_completion_id()
        watch = DisconnectWatch(request)
        try:
            chunk = await next_chunk(job, watch)  # errors before the first chunk get a status code
            if req.stream:
                if chunk is None:
                    raise RuntimeError(f"backend {backend.name} produced nothing")
                events = sse_events(
                    job, chunk, watch, completion_id=completion_id, model=model_name,
                    parse_tools=bool(tools) and choice != "none",
                    include_usage=bool(req.stream_options and req.stream_options.include_usage), call_ids=_call_ids)
                return JobStreamingResponse(events, job)
            final: BackendResponse | None = None
            while chunk is not None:
                final = chunk.response or final
                chunk = await next_chunk(job, watch)
            if final is None:
                raise RuntimeError(f"backend {backend.name} ended its stream without a response")
        except ClientGone:
            job.cancel()
            return Response(status_code=499)  # nobody reads it
        except APIError:
            job.cancel()
            raise
        except Exception as exc:
            job.cancel()
            return translate(exc).response()
        except BaseException:  # cancelled: the client or the server went away
            job.cancel()
            raise
        body = schemas.completion_body(final, completion_id=completion_id, created=schemas.now(), model=model_name,
                                       call_ids=_call_ids(len(final.message.tool_calls)))
        return JSONResponse(body)

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
            _add_models(schema, schemas.ChatCompletionRequest, schemas.ChunkBody)
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


def _unknown_model(name: str, served: str) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; this server serves {served!r}.",
                    param="model", code="model_not_found")
