"""Audit a running deployment: the same greedy requests to a speculative server and to a reference
server (the same model without speculation), compared token by token (``agentspark audit --base-url``).

Greedy speculative decoding is lossless, so every reply must equal the reference's. Where both
servers return logprobs (asked as ``logprobs: true, top_logprobs: 2``) the token texts of
``choices[0].logprobs.content`` are compared, and a divergence carries the reference's top-2
logprob margin at that token: a small margin is a near-tie (two kernels rounding a tie apart), a
large one a real bug. Where they do not, the reply texts are compared and a divergence is the
first differing character. A server that refuses logprobs (HTTP 400 about them) is asked that
request again without them, and not asked for them again in this audit run: its requests are
compared by text, and the report names it. The local audit (``agentspark.audit``) proves the
same on one machine against plain decoding; this one checks what a deployment actually serves.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .backends.base import Backend, BackendResponse
from .backends.remote import LogprobsRefusedError, RemoteBackendError
from .errors import AgentSparkError
from .sampling import SamplingParams

AUDIT_SEED = 1234  # greedy needs no seed, but a server that samples anyway should sample the same
TOP_LOGPROBS = 2  # the best and second best: enough for the margin at a divergence
CONTEXT_CHARS = 24  # how much text around a divergence the report shows


@dataclass(frozen=True)
class AuditRequest:
    """One request both servers get: a prompt's first turn, or a traced round's messages and tools."""

    label: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"
    max_new_tokens: int = 128


@dataclass(frozen=True)
class Divergence:
    """Where the candidate's reply first differs from the reference's.

    ``by`` "token": ``position`` is a token index and ``reference`` / ``candidate`` the two token
    texts there (None: that reply had already ended); ``margin`` the reference's best minus second
    best logprob there (None when it sent fewer than two alternatives). ``by`` "text": ``position``
    is a character offset and the two fields the text from there on (a few characters).
    ``char_offset`` is the character offset either way; ``context`` the reference text before it."""

    by: str
    position: int
    reference: str | None
    candidate: str | None
    margin: float | None
    char_offset: int
    context: str

    def describe(self) -> str:
        if self.by == "token":
            margin = "unknown" if self.margin is None else f"{self.margin:.4g}"
            return (f"diverged at token {self.position} (char {self.char_offset}): reference {_shown(self.reference)} vs "
                    f"candidate {_shown(self.candidate)}, reference top-2 logprob margin {margin}, after "
                    f"{json.dumps(self.context, ensure_ascii=False)}")
        return (f"diverged at char {self.position}: reference {_shown(self.reference)} vs candidate "
                f"{_shown(self.candidate)}, after {json.dumps(self.context, ensure_ascii=False)}")


def _shown(text: str | None) -> str:
    return "(reply ended)" if text is None else json.dumps(text, ensure_ascii=False)


@dataclass
class RequestOutcome:
    """One request's verdict: identical, diverged (``divergence``) or failed (``error``).

    ``logprobs_refused_by``: the servers that were asked this request without logprobs, having
    refused them (this request or an earlier one); with any, ``compared`` is "text"."""

    label: str
    identical: bool
    compared: str  # "tokens" (the logprobs' token texts) | "text" | "" (an error: nothing compared)
    reference_tokens: int = 0
    candidate_tokens: int = 0
    divergence: Divergence | None = None
    error: str | None = None
    logprobs_refused_by: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.error is not None:
            return f"ERROR {self.label}: {self.error}"
        if self.identical:
            return f"identical {self.label}: {self.reference_tokens} tokens, compared by {self.compared}{self._why_text()}"
        return f"DIVERGED {self.label}: {self.divergence.describe()}{self._why_text()}"

    def _why_text(self) -> str:
        return f" (logprobs refused by {', '.join(self.logprobs_refused_by)})" if self.logprobs_refused_by else ""


@dataclass
class RemoteAuditReport:
    base_url: str
    reference_url: str
    model: str
    reference_model: str
    seed: int
    outcomes: list[RequestOutcome] = field(default_factory=list)
    logprobs_refused: dict[str, str] = field(default_factory=dict)  # server -> its first refusal (LogprobsRefusals)

    @property
    def diverged(self) -> int:
        return sum(o.divergence is not None for o in self.outcomes)

    @property
    def errors(self) -> int:
        return sum(o.error is not None for o in self.outcomes)

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and all(o.identical for o in self.outcomes)

    def verdict(self) -> str:
        total = len(self.outcomes)
        if self.passed:
            return f"all {total} identical{self._by_text()}"
        failed = f" ({self.errors} of them could not be compared: a server failed)" if self.errors else ""
        return (f"{sum(not o.identical for o in self.outcomes)} of {total} diverged{failed}{self._by_text()}" if total
                else "nothing audited")

    def _by_text(self) -> str:
        """Text comparison is weaker than token comparison (a near-tie gets no margin): say so."""
        if not self.logprobs_refused:
            return ""
        return f"; {', '.join(self.logprobs_refused)} refused logprobs, so their requests were compared by text"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict(), "passed": self.passed, "diverged": self.diverged,
                "errors": self.errors}


def logprob_margin(item: dict[str, Any]) -> float | None:
    """Best minus second best logprob among an item's ``top_logprobs`` (None: fewer than two)."""
    tops = sorted((t["logprob"] for t in item.get("top_logprobs") or [] if isinstance(t.get("logprob"), (int, float))),
                  reverse=True)
    return tops[0] - tops[1] if len(tops) >= 2 else None


def compare_tokens(reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> Divergence | None:
    """The first index where the two logprobs.content token texts differ, or one list ends first."""
    offset = 0
    text = ""
    for i in range(max(len(reference), len(candidate))):
        ref = reference[i] if i < len(reference) else None
        cand = candidate[i] if i < len(candidate) else None
        ref_token = None if ref is None else ref.get("token")
        cand_token = None if cand is None else cand.get("token")
        if ref_token != cand_token:
            return Divergence("token", i, ref_token, cand_token, None if ref is None else logprob_margin(ref),
                              offset, text[-CONTEXT_CHARS:])
        offset += len(ref_token or "")
        text += ref_token or ""
    return None


def compare_text(reference: str, candidate: str) -> Divergence | None:
    """The first character offset where the texts differ (one ending first counts)."""
    if reference == candidate:
        return None
    at = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b), min(len(reference), len(candidate)))

    def rest(text: str) -> str | None:
        return text[at:at + CONTEXT_CHARS] if at < len(text) else None

    return Divergence("text", at, rest(reference), rest(candidate), None, at, reference[max(0, at - CONTEXT_CHARS):at])


def reply_text(response: BackendResponse) -> str:
    """The reply as text to compare: its content, then its tool calls (a server with a tool parser
    moves them out of the content) and the calls it could not parse."""
    message = response.message
    calls = [{"name": c.name, "arguments": c.args} for c in message.tool_calls]
    calls += [{"invalid": c.raw} for c in message.invalid_tool_calls]
    return message.content + ("" if not calls else "\n" + json.dumps(calls, ensure_ascii=False, sort_keys=True))


def compare_responses(label: str, reference: BackendResponse, candidate: BackendResponse) -> RequestOutcome:
    """Tokens where both sent logprobs, else text; equal tokens with different texts (tool calls
    parsed differently, say) still diverge, by text."""
    counts = dict(reference_tokens=reference.completion_tokens, candidate_tokens=candidate.completion_tokens)
    if reference.logprobs and candidate.logprobs:
        counts = dict(reference_tokens=len(reference.logprobs), candidate_tokens=len(candidate.logprobs))
        found = compare_tokens(reference.logprobs, candidate.logprobs)
        if found is not None:
            return RequestOutcome(label, False, "tokens", divergence=found, **counts)
        by = "tokens"
    else:
        by = "text"
    found = compare_text(reply_text(reference), reply_text(candidate))
    return RequestOutcome(label, found is None, by if found is None else "text", divergence=found, **counts)


def audit_params(request: AuditRequest, *, logprobs: bool = True) -> SamplingParams:
    return SamplingParams(temperature=0.0, seed=AUDIT_SEED, max_new_tokens=request.max_new_tokens,
                          logprobs=TOP_LOGPROBS if logprobs else None)


def server_of(backend: Backend) -> str:
    """What names a server in the report: a remote backend's base URL, else the backend's name."""
    return getattr(backend, "base_url", None) or backend.name


class LogprobsRefusals:
    """The servers that refused logprobs in one audit run, each with its first refusal's message;
    shared by the run's threads, so that once one request learns it, later ones do not ask."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_server: dict[str, str] = {}

    def refused(self, server: str) -> bool:
        with self._lock:
            return server in self.by_server

    def record(self, server: str, message: str) -> None:
        with self._lock:
            self.by_server.setdefault(server, message)


def ask(backend: Backend, request: AuditRequest, refusals: LogprobsRefusals) -> tuple[BackendResponse, bool]:
    """The backend's reply, and whether it was asked without logprobs (it refused them, now or
    before). A refusal is retried once without them, and recorded only when that retry succeeds:
    a 400 that merely quotes the request's logprobs fails again and stays this request's error."""
    def complete(logprobs: bool) -> BackendResponse:
        return backend.complete(request.messages, request.tools, audit_params(request, logprobs=logprobs),
                                request.tool_choice)

    server = server_of(backend)
    if refusals.refused(server):
        return complete(logprobs=False), True
    try:
        return complete(logprobs=True), False
    except LogprobsRefusedError as refusal:
        try:
            reply = complete(logprobs=False)
        except AgentSparkError as exc:
            raise RemoteBackendError(f"{refusal}; asked again without logprobs, it failed too: {exc}") from exc
        refusals.record(server, str(refusal))
        return reply, True


def audit_one(request: AuditRequest, candidate: Backend, reference: Backend,
              refusals: LogprobsRefusals | None = None) -> RequestOutcome:
    """Both servers, one request; a server's failure (after its retries) is this request's error."""
    refusals = LogprobsRefusals() if refusals is None else refusals
    try:
        ref, ref_without = ask(reference, request, refusals)
        cand, cand_without = ask(candidate, request, refusals)
    except AgentSparkError as exc:  # RemoteBackendError: refused, or unreachable after the retries
        return RequestOutcome(request.label, False, "", error=str(exc))
    outcome = compare_responses(request.label, ref, cand)
    asked_without = [server_of(b) for b, without in ((reference, ref_without), (candidate, cand_without)) if without]
    outcome.logprobs_refused_by = list(dict.fromkeys(asked_without))  # one server can be both sides
    return outcome


def audit_many(requests: Sequence[AuditRequest], candidate: Backend, reference: Backend, *, concurrency: int = 1,
               on_done: Callable[[RequestOutcome], None] | None = None,
               refusals: LogprobsRefusals | None = None) -> list[RequestOutcome]:
    """Every request, at most ``concurrency`` at a time (each holds one connection to each server);
    outcomes in the requests' order. ``on_done`` sees each as it finishes (a progress bar).
    ``refusals`` collects the servers that refused logprobs (a fresh one per run by default)."""
    refusals = LogprobsRefusals() if refusals is None else refusals

    def one(request: AuditRequest) -> RequestOutcome:
        outcome = audit_one(request, candidate, reference, refusals)
        if on_done is not None:
            on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="audit") as pool:
        return list(pool.map(one, requests))
