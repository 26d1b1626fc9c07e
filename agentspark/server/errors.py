"""Every error the server sends, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

400 for anything about the request (bad JSON, schema violations, bad sampling values, any other
AgentSparkError), 401 for a missing or wrong key, 404 for an unknown model or route, 413 for a
body over the server's cap (guard.py), 429 with Retry-After when admission is full, 500 with a generic message for bugs (the traceback goes to
the log).
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import AgentSparkError
from .schemas import error_body

log = logging.getLogger("agentspark.server")

# The first word of a SamplingParams (or forced_prefix) message names the field; the wire name may differ.
_SAMPLING_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
                    "max_new_tokens": "max_tokens", "stop": "stop", "tool": "tools", "tool_choice": "tool_choice"}


class APIError(Exception):
    """An error response decided by the server itself."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def translate(exc: BaseException) -> APIError:
    """Any exception raised while serving a request -> the APIError to answer with."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, AgentSparkError):
        match = re.match(r"(\w+)", str(exc))
        param = _SAMPLING_PARAMS.get(match.group(1)) if match else None
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()  # InvalidSamplingError -> invalid_sampling_error
        return APIError(400, str(exc), param=param, code=code)
    log.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", type_="server_error")


def _loc(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def validation_error(errors: list[dict]) -> APIError:
    """pydantic's errors -> one 400 naming the first offending field (and how many more there are)."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg", "")
        return APIError(400, f"The request body is not valid JSON: {detail}")
    param = _loc(tuple(first.get("loc", ())))
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(error_body(str(exc.detail), code=code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(AgentSparkError)
    async def _agentspark(_: Request, exc: AgentSparkError) -> JSONResponse:
        return translate(exc).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return translate(exc).response()
