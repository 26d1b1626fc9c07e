"""RequestGuard: the API key and the body cap, checked before a byte of the body is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, so a key check
written as a dependency came too late: a client without a key could make the server read, hold
and parse any amount of JSON on the event loop, /health waiting all that time (README,
"Security", has the figures). This pure ASGI middleware runs in front of the whole app instead:

1. with a key set, every path but /health needs ``Authorization: Bearer <key>`` (the docs and the
   OpenAPI schema included), answered 401 from the headers alone;
2. a ``Content-Length`` above the cap is answered 413 without reading the body;
3. a body without ``Content-Length`` (chunked) is counted as it arrives and cut off with 413 once
   it passes the cap, so no request holds more than the cap in memory.

An unread body is discarded by the server (uvicorn drains it), never buffered.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # 8 MiB: room for a long agent history with big tool results
OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than this server's limit of {limit} bytes; "
                              "send less (its operator can raise the limit with --max-body-bytes).",
                         code="request_too_large")


def check_api_key(api_key: str | None) -> None:
    """Refuse keys that could never match, or that look like 'no key' by accident."""
    if api_key is None:
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key must be a non-empty string, or None for no key")
    if api_key != api_key.strip() or not api_key.isascii() or not api_key.isprintable():
        raise ValueError("api_key must be printable ASCII without surrounding whitespace "
                         "(it travels in an HTTP header)")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _auth_error(scope: Scope, api_key: str) -> APIError | None:
    scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                        type_="authentication_error", code="invalid_api_key")
    if not secrets.compare_digest(token, api_key.encode()):
        return APIError(401, "Incorrect API key provided.", type_="authentication_error", code="invalid_api_key")
    return None


def _length_error(scope: Scope, limit: int) -> APIError | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        return APIError(400, f"Content-Length must be a number of bytes, got {raw[:40]!r}")
    return BodyTooLarge(limit) if int(raw) > limit else None


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises BodyTooLarge once the body passes ``limit`` bytes (an APIError, so
    the app's handler answers it in the usual shape)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


class RequestGuard:
    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        check_api_key(api_key)
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which no route serves)
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, _capped(receive, self.max_body_bytes), send)

    def _refusal(self, scope: Scope) -> APIError | None:
        if self.api_key and scope.get("path") not in OPEN_PATHS:
            error = _auth_error(scope, self.api_key)
            if error is not None:
                return error
        return _length_error(scope, self.max_body_bytes)
