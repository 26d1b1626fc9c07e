"""create_app: an OpenAI-compatible HTTP server (``/v1/models``, ``/v1/chat/completions``) for any Backend.

Generations run one at a time on a worker thread (runner.py); a client that disconnects
cancels its generation, queued or running. Defaults follow OpenAI where the engine's differ:
temperature 1.0 when the request names none (send 0 for greedy), and ``max_tokens`` defaults to
``default_max_tokens``. Response extension: ``"agentspark": {"backend", "stats", "forced_prefix",
"invalid_tool_calls"}`` on completions, and on the last chunks of a stream.
"""

from __future__ import annotations

import secrets
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..backends.base import Backend, BackendResponse
from . import schemas
from .convert import sampling, to_internal, tools_and_choice
from .errors import APIError, install_error_handlers, translate
from .runner import Runner
from .streaming import ClientGone, DisconnectWatch, JobStreamingResponse, next_chunk, sse_events


def _call_ids(n: int) -> list[str]:
    """Fresh ids for the tool calls of one response (a backend's own ids repeat across rounds)."""
    return [f"call_{uuid.uuid4().hex[:24]}" for _ in range(n)]


def create_app(backend: Backend, *, model_name: str, api_key: str | None = None,
               default_max_tokens: int = 256) -> FastAPI:
    runner = Runner()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        runner.shutdown()

    app = FastAPI(title="agentspark", summary="OpenAI-compatible speculative decoding server", lifespan=lifespan)
    app.state.backend, app.state.runner, app.state.model_name = backend, runner, model_name
    install_error_handlers(app)
    created = schemas.now()

    async def check_key(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                           type_="authentication_error", code="invalid_api_key")
        if not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", type_="authentication_error", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])
    model_card = {"id": model_name, "object": "model", "owned_by": "agentspark", "created": created}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "backend": backend.name}

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise _unknown_model(model_id, model_name)
        return model_card

    @v1.post("/chat/completions")
    async def chat_completions(req: schemas.ChatCompletionRequest, request: Request) -> Response:
        if req.model is not None and req.model != model_name:
            raise _unknown_model(req.model, model_name)
        messages = to_internal(req.messages)
        tools, choice = tools_and_choice(req)
        params = sampling(req, default_max_tokens)
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


def _unknown_model(name: str, served: str) -> APIError:
    return APIError(404, f"The model {name!r} does not exist; this server serves {served!r}.",
                    param="model", code="model_not_found")
