"""ServerMetrics: what ``GET /metrics`` reports, in Prometheus' text format (prometheus-client).

Per app, in a registry of its own (two apps in one process, as in tests, do not share counts):

- ``agentspark_requests_running`` / ``agentspark_requests_queued``: the backend's own counts where
  it has them (the batch backend: requests holding a slot / waiting for one), else the server's
  (one runs, the rest of those admitted wait);
- ``agentspark_requests_total{outcome}`` (ok, error, cancelled) and ``agentspark_requests_rejected_total``
  (429: admission full);
- ``agentspark_generated_tokens_total`` and ``agentspark_tokens_per_second`` (the new tokens of the
  requests that ended in the last 10 s, over 10 s);
- ``agentspark_drafted_tokens_total``, ``_verified_``, ``_accepted_``, ``agentspark_rounds_total`` and
  ``agentspark_tau`` (tokens committed per decoding round over all requests so far);
- ``agentspark_prompt_tokens_total`` and ``agentspark_prefill_tokens_reused_total`` (prompt tokens whose
  K/V came from a cached conversation);
- ``agentspark_engine_seconds_total{part}`` (admit, draft, mask, runner, commit: where the batch
  engine's thread spent its time; mask is the grammar masks' share of draft),
  ``agentspark_engine_rounds_total``, ``agentspark_engine_rows_total`` (requests summed over rounds:
  rows / rounds is how full the batch ran) and ``agentspark_engine_admissions_total``, for a backend
  with a batch engine (absent otherwise);
- histograms ``agentspark_time_to_first_token_seconds`` (request received to first content delta)
  and ``agentspark_time_per_output_token_seconds`` (per request, the time after its first token
  over the tokens after it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..stats import EngineClock, RequestStats

_RATE_WINDOW_S = 10.0
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


ENGINE_PARTS = ("admit", "draft", "mask", "runner", "commit")


class _EngineClockCollector(Collector):
    """The batch engine's clock as counters, read when scraped (the engine keeps the sums)."""

    def __init__(self, clock: Callable[[], EngineClock | None]) -> None:
        self.clock = clock

    def collect(self):  # noqa: ANN201 (prometheus-client's collector protocol)
        c = self.clock()
        if c is None:
            return
        seconds = CounterMetricFamily("agentspark_engine_seconds", "Batch engine thread time, by part",
                                      labels=["part"])
        for part in ENGINE_PARTS:
            seconds.add_metric([part], getattr(c, f"{part}_s"))
        yield seconds
        yield CounterMetricFamily("agentspark_engine_rounds", "Batch engine rounds", value=c.rounds)
        yield CounterMetricFamily("agentspark_engine_rows", "Requests summed over batch rounds", value=c.rows)
        yield CounterMetricFamily("agentspark_engine_admissions", "Requests admitted (prefill)", value=c.admissions)


class ServerMetrics:
    def __init__(self, load: Callable[[], tuple[int, int]],
                 clock: Callable[[], EngineClock | None] = lambda: None) -> None:
        """load: (requests running, requests queued) when scraped; clock: the batch engine's
        clock, if the backend has one."""
        self.registry = r = CollectorRegistry()
        r.register(_EngineClockCollector(clock))
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, tokens) of finished requests
        self._committed = self._rounds_seen = 0
        self.mean_request_s = 0.0  # a running mean of request wall times (Retry-After's estimate)
        Gauge("agentspark_requests_running", "Requests being generated", registry=r).set_function(lambda: load()[0])
        Gauge("agentspark_requests_queued", "Requests admitted and waiting to run", registry=r).set_function(
            lambda: load()[1])
        self.requests = Counter("agentspark_requests", "Requests ended, by outcome", ["outcome"], registry=r)
        self.rejected = Counter("agentspark_requests_rejected", "Requests refused with 429 (admission full)",
                                registry=r)
        self.tokens = Counter("agentspark_generated_tokens", "New tokens generated", registry=r)
        Gauge("agentspark_tokens_per_second", f"New tokens per second over the last {_RATE_WINDOW_S:g} s",
              registry=r).set_function(self._rate)
        self.drafted = Counter("agentspark_drafted_tokens", "Draft tokens proposed", registry=r)
        self.verified = Counter("agentspark_verified_tokens", "Draft tokens sent to the target", registry=r)
        self.accepted = Counter("agentspark_accepted_tokens", "Draft tokens that survived verification", registry=r)
        self.rounds = Counter("agentspark_rounds", "Decoding rounds (target forwards after prefill)", registry=r)
        Gauge("agentspark_tau", "Tokens committed per decoding round, over all requests so far",
              registry=r).set_function(self._tau)
        self.prompt_tokens = Counter("agentspark_prompt_tokens", "Prompt tokens received", registry=r)
        self.reused = Counter("agentspark_prefill_tokens_reused", "Prompt tokens whose K/V a cached conversation held",
                              registry=r)
        self.ttft = Histogram("agentspark_time_to_first_token_seconds", "Request received to its first content",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("agentspark_time_per_output_token_seconds",
                              "Per request: time after the first token over the tokens after it",
                              buckets=_TOKEN_BUCKETS, registry=r)
        for outcome in ("ok", "error", "cancelled"):
            self.requests.labels(outcome)  # present from the start, at 0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, stats: RequestStats | None, new_tokens: int, first_token_s: float | None,
                 total_s: float) -> None:
        """A request that ended with its response (stats where the backend keeps them)."""
        self.requests.labels("ok").inc()
        self.tokens.inc(new_tokens)
        with self._lock:
            self._recent.append((time.monotonic(), new_tokens))
            self.mean_request_s += 0.2 * (total_s - self.mean_request_s)
        if first_token_s is not None and new_tokens > 1:
            self.tpot.observe(max(0.0, total_s - first_token_s) / (new_tokens - 1))
        if stats is None:
            return
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.reused.inc(max(0, stats.prompt_tokens - stats.prefill_tokens))
        rounds = stats.rounds
        self.rounds.inc(len(rounds))
        self.drafted.inc(sum(x.drafted for x in rounds))
        self.verified.inc(sum(x.verified for x in rounds))
        self.accepted.inc(sum(x.accepted for x in rounds))
        with self._lock:
            self._committed += sum(x.committed for x in rounds)
            self._rounds_seen += len(rounds)

    def ended(self, outcome: str) -> None:
        """A request that ended without a response: "error" or "cancelled"."""
        self.requests.labels(outcome).inc()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / _RATE_WINDOW_S

    def _tau(self) -> float:
        with self._lock:
            return self._committed / self._rounds_seen if self._rounds_seen else 0.0


class RequestTimer:
    """One request's way through the metrics: its first content, then exactly one ending."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.received = time.monotonic()
        self.first_s: float | None = None
        self._ended = False

    def saw(self, delta: str) -> None:
        if self.first_s is None and delta:
            self.first_s = time.monotonic() - self.received
            self.metrics.first_token(self.first_s)

    def finished(self, stats: RequestStats | None, new_tokens: int) -> None:
        if not self._ended:
            self._ended = True
            self.metrics.finished(stats, new_tokens, self.first_s, time.monotonic() - self.received)

    def ended(self, outcome: str) -> None:
        if not self._ended:
            self._ended = True
            self.metrics.ended(outcome)
