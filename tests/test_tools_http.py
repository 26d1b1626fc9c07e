"""The http_get tool: domain allowlist, schemes, retries on transient failures only, size cap and
timeouts; against httpx.MockTransport and against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from agentspark.tools import (
    HTTPFetchError,
    ToolCall,
    ToolDefinitionError,
    ToolRegistry,
    URLNotAllowedError,
    make_http_get_tool,
)

FAST = {"backoff": 0.01, "backoff_max": 0.02}


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[httpx.MockTransport, list[str]]:
    """A MockTransport that records every URL it is asked for."""
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return handler(request)

    return httpx.MockTransport(record), seen


def ok_handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=f"page {request.url.path}")


# --- allowlist and schemes ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://evil.com/", "https://example.com.evil.com/", "https://notexample.com/",
    "https://example.com@evil.com/", "http://127.0.0.1/", "https://example.org/",
])
def test_hosts_outside_the_allowlist_are_refused_without_a_request(url: str) -> None:
    transport, seen = mock(ok_handler)
    http_get = make_http_get_tool(["example.com"], transport=transport, **FAST)
    with pytest.raises(URLNotAllowedError, match="is not allowed; allowed domains .*example.com"):
        http_get(url)
    assert seen == []


@pytest.mark.parametrize("url", ["https://example.com/a", "http://EXAMPLE.com./a", "https://api.example.com/a",
                                 "https://deep.api.example.com:8443/a?q=1", "https://docs.python.org/a"])
def test_allowed_domains_and_their_subdomains(url: str) -> None:
    transport, seen = mock(ok_handler)
    http_get = make_http_get_tool(["example.com", "Docs.Python.org"], transport=transport, **FAST)
    assert http_get(url) == "page /a"
    assert len(seen) == 1


@pytest.mark.parametrize("url", ["ftp://example.com/f", "file:///etc/passwd", "example.com/page",
                                 "javascript:alert(1)"])
def test_other_schemes_are_refused(url: str) -> None:
    transport, seen = mock(ok_handler)
    http_get = make_http_get_tool(["example.com"], transport=transport, **FAST)
    with pytest.raises(URLNotAllowedError, match="only http and https"):
        http_get(url)
    assert seen == []


def test_redirects_are_checked_against_the_allowlist() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        targets = {"/out": "https://evil.com/steal", "/in": "https://www.example.com/final"}
        if request.url.path in targets:
            return httpx.Response(302, headers={"Location": targets[request.url.path]})
        return ok_handler(request)

    transport, seen = mock(handler)
    http_get = make_http_get_tool(["example.com"], transport=transport, **FAST)
    assert http_get("https://example.com/in") == "page /final"
    with pytest.raises(URLNotAllowedError, match="'evil.com'"):
        http_get("https://example.com/out")
    assert not any("evil.com" in url for url in seen)


@pytest.mark.parametrize("domains", [[], ["https://example.com"], ["*.example.com"], ["example.com/path"], "a.com"])
def test_bad_allowlists_are_refused(domains) -> None:  # noqa: ANN001
    with pytest.raises(ToolDefinitionError):
        make_http_get_tool(domains)


def test_schema_and_description_name_the_domains() -> None:
    fn = make_http_get_tool(["example.com", "python.org"]).openai_schema()["function"]
    assert fn["name"] == "http_get"
    assert fn["description"].endswith("allowed: example.com, python.org.")
    assert fn["parameters"]["required"] == ["url"]
    assert fn["parameters"]["properties"] == {"url": {"type": "string", "description": "The full http or https URL to fetch."}}


# --- retries, cap and timeouts (mock) -------------------------------------------------------------------


def flaky(statuses: list[int]) -> Callable[[httpx.Request], httpx.Response]:
    """Answer with each status in turn, then 200 forever."""
    queue = list(statuses)
    return lambda request: httpx.Response(queue.pop(0) if queue else 200, text="body")


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_statuses_are_retried(status: int) -> None:
    transport, seen = mock(flaky([status, status]))
    assert make_http_get_tool(["example.com"], retries=2, transport=transport, **FAST)("https://example.com/") == "body"
    assert len(seen) == 3


def test_retries_run_out() -> None:
    transport, seen = mock(flaky([503] * 10))
    with pytest.raises(HTTPFetchError, match="got HTTP 503 Service Unavailable after 3 attempt"):
        make_http_get_tool(["example.com"], retries=2, transport=transport, **FAST)("https://example.com/")
    assert len(seen) == 3


@pytest.mark.parametrize("status", [404, 400, 403])
def test_client_errors_are_not_retried(status: int) -> None:
    transport, seen = mock(flaky([status]))
    with pytest.raises(HTTPFetchError, match=f"HTTP {status} "):
        make_http_get_tool(["example.com"], retries=3, transport=transport, **FAST)("https://example.com/x")
    assert len(seen) == 1


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_connection_errors_and_timeouts_are_retried(error: type[httpx.TransportError]) -> None:
    calls = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            raise error("simulated", request=request)
        return httpx.Response(200, text="finally")

    transport, _ = mock(handler)
    assert make_http_get_tool(["example.com"], retries=2, transport=transport, **FAST)("https://example.com/") == "finally"
    assert calls["n"] == 3


def test_persistent_timeout_is_reported_after_the_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("simulated", request=request)

    transport, seen = mock(handler)
    with pytest.raises(HTTPFetchError, match=r"timed out \(ReadTimeout\) after 2 attempt"):
        make_http_get_tool(["example.com"], retries=1, transport=transport, **FAST)("https://example.com/")
    assert len(seen) == 2


def test_body_is_streamed_and_reading_stops_at_the_cap() -> None:
    produced = Counter()

    def endless() -> Iterator[bytes]:
        for _ in range(10_000):  # 10 MB if nobody stops reading
            produced["chunks"] += 1
            yield b"a" * 1024

    transport, _ = mock(lambda request: httpx.Response(200, content=endless()))
    text = make_http_get_tool(["example.com"], max_bytes=3000, transport=transport, **FAST)("https://example.com/")
    assert text.startswith("a" * 3000) and not text.startswith("a" * 3001)
    assert text.endswith("[truncated: the response is longer than 3000 bytes; this is the start]")
    assert produced["chunks"] < 10


# --- a real server on 127.0.0.1 -------------------------------------------------------------------------


DRIP_SECONDS = 0.5  # the dripping server's pause between bytes


class _Drip:
    """What the dripping server saw of its one client."""

    sent = 0
    closed = threading.Event()  # set when the client closed the connection
    closed_at = 0.0


class _Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with self.lock:
            self.hits[self.path] += 1
            count = self.hits[self.path]
        if self.path == "/hello":
            self._send(200, b"hello from the real server")
        elif self.path.startswith("/flaky"):
            self._send(503, b"busy") if count <= 2 else self._send(200, b"recovered")
        elif self.path == "/large":
            self._send(200, b"z" * 500_000)
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(200, b"too late")
        elif self.path == "/drip":
            self._drip()
        else:
            self._send(404, b"no such page")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client stopped reading (size cap, timeout): expected here

    def _drip(self, total: int = 120) -> None:
        """Promise ``total`` bytes and send one every DRIP_SECONDS; between bytes, watch for the
        client closing (the socket turns readable with nothing to read)."""
        self.send_response(200)
        self.send_header("Content-Length", str(total))
        self.end_headers()
        self.wfile.flush()
        for _ in range(total):
            try:
                self.wfile.write(b"d")
                self.wfile.flush()
            except OSError:
                break
            _Drip.sent += 1
            readable, _, _ = select.select([self.connection], [], [], DRIP_SECONDS)
            if readable and not self.connection.recv(1):
                break
        else:
            return
        _Drip.closed_at = time.perf_counter()
        _Drip.closed.set()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_real_server(server: str) -> None:
    http_get = make_http_get_tool(["127.0.0.1"], timeout=2.0, max_bytes=10_000, retries=2, **FAST)
    assert http_get(f"{server}/hello") == "hello from the real server"

    assert http_get(f"{server}/flaky") == "recovered"
    assert _Handler.hits["/flaky"] == 3

    with pytest.raises(HTTPFetchError, match="HTTP 404 Not Found"):
        http_get(f"{server}/missing")
    assert _Handler.hits["/missing"] == 1

    text = http_get(f"{server}/large")
    assert text.startswith("z" * 10_000) and "z" * 10_001 not in text and "[truncated" in text


def test_real_server_fewer_retries_than_failures(server: str) -> None:
    http_get = make_http_get_tool(["127.0.0.1"], retries=1, **FAST)
    with pytest.raises(HTTPFetchError, match="503"):
        http_get(f"{server}/flaky-2")
    assert _Handler.hits["/flaky-2"] == 2


def test_real_server_timeout(server: str) -> None:
    http_get = make_http_get_tool(["127.0.0.1"], timeout=0.2, retries=1, **FAST)
    start = time.perf_counter()
    with pytest.raises(HTTPFetchError, match=r"timed out \(ReadTimeout\) after 2 attempt"):
        http_get(f"{server}/slow")
    assert time.perf_counter() - start < 0.9
    assert _Handler.hits["/slow"] == 2


def test_real_server_through_the_registry(server: str) -> None:
    registry = ToolRegistry([make_http_get_tool(["127.0.0.1"], retries=0, **FAST)])
    ok, refused, missing = registry.run_sync([
        ToolCall("1", "http_get", {"url": f"{server}/hello"}),
        ToolCall("2", "http_get", {"url": "https://example.com/"}),
        ToolCall("3", "http_get", {"url": f"{server}/nothing"}),
    ])
    assert (ok.status, ok.content) == ("ok", "hello from the real server")
    assert refused.status == "error" and refused.content.startswith("URLNotAllowedError: host 'example.com'")
    assert missing.status == "error" and missing.content.startswith("HTTPFetchError: HTTP 404")


# --- the call's deadline: a dripping server ---------------------------------------------------------------

GRACE = 1.0  # how long after the timeout the reading thread may take to stop


def _http_get_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("tool-http_get", "http_get-deadline")]


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def test_timeout_stops_the_reader_of_a_dripping_server(server: str) -> None:
    """A server dripping one byte every 0.5 s resets httpx's read timeout for ever; at the tool's
    timeout the reading thread must stop too and the server must see the connection close. The
    call gives up just before the registry would (so its own message is what the model sees)."""
    _Drip.sent, _Drip.closed_at = 0, 0.0
    _Drip.closed.clear()
    registry = ToolRegistry([make_http_get_tool(["127.0.0.1"], timeout=5.0, tool_timeout=1.0, **FAST)])
    start = time.perf_counter()
    [result] = registry.run_sync([ToolCall("1", "http_get", {"url": f"{server}/drip"})])
    returned = time.perf_counter()
    assert _Drip.closed.wait(GRACE), f"the server is still dripping ({_Drip.sent} bytes sent)"
    assert _wait_for(lambda: not _http_get_threads(), GRACE), _http_get_threads()
    assert 1 <= _Drip.sent <= 4  # it really dripped, and stopped when the call ended
    assert result.status == "error", result
    assert result.content == (f"HTTPFetchError: GET {server}/drip timed out: no complete answer before the "
                              "tool's time limit of 1 s after 1 attempt(s)")
    assert 0.9 <= returned - start < 1.0


def test_a_direct_call_stops_at_its_deadline_too(server: str) -> None:
    http_get = make_http_get_tool(["127.0.0.1"], timeout=5.0, retries=3, tool_timeout=1.0, **FAST)
    start = time.perf_counter()
    with pytest.raises(HTTPFetchError, match=r"timed out: no complete answer before the tool's time limit of 1 s "
                                             r"after 1 attempt"):
        http_get(f"{server}/drip")
    assert 0.9 <= time.perf_counter() - start < 1.2
    assert not _http_get_threads()


def test_no_retry_starts_after_the_deadline(server: str) -> None:
    before = _Handler.hits["/slow"]
    http_get = make_http_get_tool(["127.0.0.1"], timeout=0.6, retries=5, tool_timeout=1.0, **FAST)
    start = time.perf_counter()
    with pytest.raises(HTTPFetchError, match=r"timed out: no complete answer before the tool's time limit of 1 s"):
        http_get(f"{server}/slow")
    assert time.perf_counter() - start < 1.0  # the second attempt's read timeout was cut to what was left
    # Attempt 1 ends at 0.6 s, attempt 2 at the 0.9 s deadline; a third may start in the few ms left.
    assert 2 <= _Handler.hits["/slow"] - before <= 3


def test_a_slow_body_without_sockets_stops_at_the_deadline() -> None:
    """The deadline is also checked between chunks, for transports with no socket to shut down."""
    def slow_body() -> Iterator[bytes]:
        for _ in range(50):
            time.sleep(0.1)
            yield b"s"

    transport, _ = mock(lambda request: httpx.Response(200, content=slow_body()))
    http_get = make_http_get_tool(["example.com"], transport=transport, tool_timeout=0.5, **FAST)
    start = time.perf_counter()
    with pytest.raises(HTTPFetchError, match="timed out: no complete answer before the tool's time limit of 0.5 s"):
        http_get("https://example.com/")
    assert time.perf_counter() - start < 0.7  # the deadline (0.45 s) and one more 0.1 s chunk
