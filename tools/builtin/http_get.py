"""The ``http_get`` tool: fetch a URL from an allowlist of domains, with a size cap and retries.

Off unless the program asks for it: nothing registers this tool by default, and it exists only
when the caller builds it with ``make_http_get_tool(allowed_domains=[...])``, because fetching
URLs a model chose is a way out of the sandbox (data exfiltration, internal services). Only
http/https URLs whose host is an allowed domain or a subdomain of one are fetched, redirects
included (every request, redirected or not, passes the same check). The body is streamed and
reading stops at ``max_bytes``. Transient failures (connection errors, timeouts, HTTP 429 and 5xx)
are retried with exponential backoff; a 4xx answer is final. The client is synchronous on
purpose: the registry runs sync tools in their own thread, which it abandons on timeout.
"""

from __future__ import annotations

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from ..definition import Tool
from ..errors import HTTPFetchError, ToolDefinitionError, URLNotAllowedError

_CHUNK = 64 * 1024
_USER_AGENT = "agentspark-http-get/0.1"


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


def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the (decompressed) body, and whether there was more."""
    data = bytearray()
    for chunk in response.iter_bytes(chunk_size=min(_CHUNK, max_bytes + 1)):
        data += chunk
        if len(data) > max_bytes:
            return bytes(data[:max_bytes]), True
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
    it covers every attempt and wait.
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

    def attempt(client: httpx.Client, url: httpx.URL) -> str:
        with client.stream("GET", url) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise _RetryableStatus(response)
            if response.status_code >= 400:
                raise HTTPFetchError(f"HTTP {response.status_code} {response.reason_phrase} for {url}")
            data, truncated = _read_capped(response, max_bytes)
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
        retrying = Retrying(stop=stop_after_attempt(retries + 1), reraise=True,
                            wait=wait_exponential(multiplier=backoff, max=backoff_max),
                            retry=retry_if_exception(_is_transient))
        hooks = {"request": [lambda request: check_url(request.url)]}  # redirects pass here too
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=True, max_redirects=5,
                          event_hooks=hooks, headers={"User-Agent": _USER_AGENT}) as client:
            try:
                return retrying(attempt, client, parsed)
            except (_RetryableStatus, httpx.HTTPError) as exc:
                tries = retrying.statistics.get("attempt_number", 1)
                failure = _describe_failure(exc)
                raise HTTPFetchError(f"GET {parsed} {failure} after {tries} attempt(s)") from exc

    listed = ", ".join(domains)
    description = (f"Fetch a URL with HTTP GET and return the response body as text (at most "
                   f"{max_bytes} bytes). Only http/https URLs on these domains or their subdomains are allowed: {listed}.")
    return Tool.from_function(http_get, name="http_get", description=description, timeout=tool_timeout)
