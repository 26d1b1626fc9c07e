"""The ``http_get`` tool: fetch a URL from an allowlist of domains, with a size cap and retries.

Off unless the program asks for it: nothing registers this tool by default, and it exists only
when the caller builds it with ``make_http_get_tool(allowed_domains=[...])``, because fetching
URLs a model chose is a way out of the sandbox (data exfiltration, internal services). Only
http/https URLs whose host is an allowed domain or a subdomain of one are fetched, redirects
included (every request, redirected or not, passes the same check). The body is streamed and
reading stops at ``max_bytes``. Transient failures (connection errors, timeouts, HTTP 429 and 5xx)
are retried with exponential backoff; a 4xx answer is final. The client is synchronous on
purpose: the registry runs sync tools in their own thread, which it abandons on timeout.

An abandoned thread must not keep reading: httpx's ``timeout`` limits each read, not the whole
call, so a server dripping one byte at a time would hold it for ever. Each call therefore has a
deadline just short of ``tool_timeout`` (the registry's limit), enforced three ways: every
attempt's httpx timeouts are cut to the time left, no retry starts (and no backoff waits) past it,
and a watchdog timer shuts down every socket the call opened when it passes, so that a read
blocked in ``recv`` returns at once and the thread ends. The call then fails with a "timed out"
``HTTPFetchError``. Not cut short: a DNS lookup (``getaddrinfo`` takes no timeout).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..definition import Tool
from ..errors import HTTPFetchError, ToolDefinitionError, URLNotAllowedError

_USER_AGENT = "agentspark-http-get/0.1"
# The call gives up this much before the registry's limit (at most a tenth of it), so that it ends,
# and says why, before the registry abandons its thread: no thread is left reading either way.
_DEADLINE_MARGIN = 0.1


class _OutOfTime(Exception):
    """The call's deadline passed; internal, never retried."""


class _Deadline:
    """The overall limit of one call. When it passes, a timer shuts down the call's sockets: a read
    blocked in another thread returns then (closing the socket would not wake it on Linux)."""

    # httpcore's trace events after which a socket (plain, then TLS-wrapped) exists.
    _SOCKET_EVENTS = ("connection.connect_tcp.complete", "connection.start_tls.complete")

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = threading.Event()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.name, self._timer.daemon = "http_get-deadline", True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        self._timer.join()  # the call leaves no thread behind, the timer's included

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        if self.expired.is_set() or not self.remaining():
            raise _OutOfTime()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: remember each socket the call connects."""
        if event not in self._SOCKET_EVENTS:
            return
        sock = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():  # connected just as time ran out
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock``: the peer sees the connection closed (FIN)."""
    try:
        # The base class's method on purpose: SSLSocket.shutdown would also drop the SSL object
        # under the thread that is reading with it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed, or never connected


class _RetryableStatus(Exception):
    """An HTTP answer worth retrying (429 or 5xx); internal to the retry loop."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} {response.reason_phrase}")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (_RetryableStatus, httpx.TimeoutException, httpx.NetworkError,
                            httpx.RemoteProtocolError))


def _describe_failure(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, _RetryableStatus):
        return f"got {exc}"
    return f"failed with {type(exc).__name__}: {exc}"


def _normalize_domains(allowed_domains: list[str]) -> tuple[str, ...]:
    if isinstance(allowed_domains, str) or not allowed_domains:
        raise ToolDefinitionError("make_http_get_tool needs a non-empty list of allowed domains, "
                                  "e.g. ['docs.python.org']")
    domains = []
    for raw in allowed_domains:
        domain = str(raw).strip().lower().rstrip(".")
        if not domain or "/" in domain or "*" in domain or domain.startswith(".") or " " in domain:
            raise ToolDefinitionError(f"allowed domain {raw!r} must be a bare host name such as "
                                      "'example.com' (its subdomains are allowed too)")
        domains.append(domain)
    return tuple(domains)


def _read_capped(response: httpx.Response, max_bytes: int, deadline: _Deadline) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the (decompressed) body, and whether there was more.

    Chunks are taken as they arrive (no ``chunk_size``: httpx would gather 64 KiB before handing
    any over, and a slow body would never reach the deadline check)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > max_bytes:
            return bytes(data[:max_bytes]), True
        deadline.check()
    return bytes(data), False


def make_http_get_tool(allowed_domains: list[str], timeout: float = 10.0, max_bytes: int = 1_000_000,
                       retries: int = 3, transport: httpx.BaseTransport | None = None, *,
                       backoff: float = 0.5, backoff_max: float = 8.0,
                       tool_timeout: float | None = None) -> Tool:
    """The ``http_get`` tool for ``allowed_domains`` (each also allows its subdomains).

    ``timeout`` is httpx's per-operation timeout of one attempt; ``retries`` is the number of
    retries after the first attempt; waits between attempts grow as ``backoff * 2**n`` seconds up
    to ``backoff_max``. ``transport`` replaces httpx's network transport (tests pass an
    ``httpx.MockTransport``). ``tool_timeout`` is the registry's limit for the whole call; by default
    it covers every attempt and wait. The call itself gives up just before ``tool_timeout`` (see
    the module docstring), so no thread goes on reading after the registry's timeout.
    """
    domains = _normalize_domains(allowed_domains)
    if not timeout > 0 or not max_bytes > 0 or retries < 0 or backoff < 0 or backoff_max < 0:
        raise ToolDefinitionError("timeout and max_bytes must be positive; retries, backoff and "
                                  "backoff_max must not be negative")
    if tool_timeout is None:
        tool_timeout = (retries + 1) * 2 * timeout + retries * backoff_max + 1.0

    def check_url(url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise URLNotAllowedError(f"only http and https URLs can be fetched, not {url.scheme or 'no'} "
                                     f"scheme ({str(url)!r})")
        host = url.host.lower().rstrip(".")
        if not any(host == d or host.endswith("." + d) for d in domains):
            raise URLNotAllowedError(f"host {host!r} is not allowed; allowed domains (and their "
                                     f"subdomains): {', '.join(domains)}")

    def attempt(client: httpx.Client, url: httpx.URL, deadline: _Deadline) -> str:
        deadline.check()
        # httpx's timeouts apply per connect/read/write; none may outlast the call's deadline.
        with client.stream("GET", url, timeout=min(timeout, deadline.remaining())) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise _RetryableStatus(response)
            if response.status_code >= 400:
                raise HTTPFetchError(f"HTTP {response.status_code} {response.reason_phrase} for {url}")
            data, truncated = _read_capped(response, max_bytes, deadline)
            try:
                text = data.decode(response.encoding or "utf-8", errors="replace")
            except LookupError:  # a charset name Python does not know
                text = data.decode("utf-8", errors="replace")
        if truncated:
            text += f"\n[truncated: the response is longer than {max_bytes} bytes; this is the start]"
        return text

    def http_get(url: str) -> str:
        """Fetch a URL with HTTP GET and return the response body as text.

        Args:
            url: The full http or https URL to fetch.
        """
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise URLNotAllowedError(f"{url!r} is not a valid URL: {exc}") from None
        check_url(parsed)
        with _Deadline(tool_timeout - min(_DEADLINE_MARGIN, tool_timeout / 10)) as deadline:
            return fetch(parsed, deadline)

    def fetch(url: httpx.URL, deadline: _Deadline) -> str:
        backoff_wait = wait_exponential(multiplier=backoff, max=backoff_max)
        retrying = Retrying(
            stop=stop_after_attempt(retries + 1), reraise=True,
            wait=lambda state: min(backoff_wait(state), deadline.remaining()),  # no sleeping past it
            retry=retry_if_exception(lambda exc: _is_transient(exc) and not deadline.expired.is_set()))

        def on_request(request: httpx.Request) -> None:  # every request, redirects included
            check_url(request.url)
            request.extensions["trace"] = deadline.trace

        hooks = {"request": [on_request]}
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=True, max_redirects=5,
                          event_hooks=hooks, headers={"User-Agent": _USER_AGENT}) as client:
            try:
                return retrying(attempt, client, url, deadline)
            except (_RetryableStatus, httpx.HTTPError, _OutOfTime) as exc:
                tries = retrying.statistics.get("attempt_number", 1)
                if deadline.expired.is_set() or isinstance(exc, _OutOfTime):
                    failure = (f"timed out: no complete answer before the tool's time limit of "
                               f"{tool_timeout:g} s")
                else:
                    failure = _describe_failure(exc)
                raise HTTPFetchError(f"GET {url} {failure} after {tries} attempt(s)") from exc

    listed = ", ".join(domains)
    description = (f"Fetch a URL with HTTP GET and return the response body as text (at most "
                   f"{max_bytes} bytes). Only http/https URLs on these domains or their subdomains are allowed: {listed}.")
    return Tool.from_function(http_get, name="http_get", description=description, timeout=tool_timeout)
