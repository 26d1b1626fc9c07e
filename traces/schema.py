"""The trace line format: one ``TraceRound`` per agent round (one model request + its tool calls).

Every model forbids unknown fields, so a typo in a writer or a hand-edited trace fails validation
instead of silently dropping data. ``version`` lets a later format change be read side by side.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import AgentSparkError
from ..stats import RequestStats

TRACE_VERSION = 1


class TraceError(AgentSparkError):
    """A trace file that cannot be read or updated as asked (bad line, missing round)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpecRound(_Strict):
    """One draft/verify round inside a request; mirrors ``stats.RoundStats`` plus confidences."""

    drafted: int = Field(ge=0)
    verified: int = Field(ge=0)
    accepted: int = Field(ge=0)
    committed: int = Field(ge=0)
    draft_s: float = Field(ge=0)
    verify_s: float = Field(ge=0)
    other_s: float = Field(ge=0)
    confidences: list[float] | None = None


class ToolCallRecord(_Strict):
    """A tool call as executed; ``content`` is the result text so replay can feed it back verbatim."""

    id: str
    name: str
    args: dict[str, Any]
    status: str  # e.g. "ok" | "error" | "timeout"
    seconds: float = Field(ge=0)
    content: str


class AuditVerdict(_Strict):
    """Outcome of re-checking a round against plain decoding (filled in later by ``set_audit``)."""

    mode: Literal["greedy", "sampling"]
    passed: bool
    detail: str = ""
    first_divergence: dict[str, Any] | None = None


class RequestRecord(_Strict):
    """What was asked: the messages are kept in full so replay can re-run the identical request."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    prompt_hash: str
    prompt_tokens: int = Field(ge=0)
    sampling: dict[str, Any]


class TraceRound(_Strict):
    """One JSONL line: an agent round's request, its decoding statistics and its tool calls."""

    version: int = TRACE_VERSION
    session_id: str
    round_index: int = Field(ge=0)
    started_at: float  # unix time
    backend: str
    request: RequestRecord
    prefill_tokens: int = Field(ge=0)
    prefill_s: float = Field(ge=0)
    decode_s: float = Field(ge=0)
    new_tokens: int = Field(ge=0)
    tokens_per_second: float = Field(ge=0)
    mean_accepted_length: float = Field(ge=0)
    finish_reason: str
    spec_rounds: list[SpecRound]
    response: dict[str, Any]  # the assistant message: {"content": str, "tool_calls": [...]}
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    tool_s: float = Field(default=0.0, ge=0)
    audit: AuditVerdict | None = None

    @property
    def model_s(self) -> float:
        """Time spent in the model for this round (prefill + decode)."""
        return self.prefill_s + self.decode_s

    @classmethod
    def from_stats(
        cls,
        stats: RequestStats,
        *,
        session_id: str,
        round_index: int,
        started_at: float,
        backend: str,
        request: RequestRecord,
        response: dict[str, Any],
        tool_calls: list[ToolCallRecord] | None = None,
        tool_s: float | None = None,
        confidences: list[list[float] | None] | None = None,
        audit: AuditVerdict | None = None,
    ) -> TraceRound:
        """Build a round from an engine ``RequestStats`` so no writer re-derives the decode fields.

        ``decode_s`` is ``total_s - prefill_s`` (clamped at 0 against clock jitter); ``tool_s``
        defaults to the sum of the tool calls' seconds; ``confidences``, when given, holds one
        entry per spec round.
        """
        calls = list(tool_calls or [])
        if confidences is not None and len(confidences) != len(stats.rounds):
            raise TraceError(
                f"confidences has {len(confidences)} entries but the request had "
                f"{len(stats.rounds)} spec rounds; pass one (or None) per round"
            )
        spec = [
            SpecRound(
                drafted=r.drafted, verified=r.verified, accepted=r.accepted, committed=r.committed,
                draft_s=r.draft_s, verify_s=r.verify_s, other_s=r.other_s,
                confidences=confidences[i] if confidences is not None else None,
            )
            for i, r in enumerate(stats.rounds)
        ]
        return cls(
            session_id=session_id,
            round_index=round_index,
            started_at=started_at,
            backend=backend,
            request=request,
            prefill_tokens=stats.prefill_tokens,
            prefill_s=stats.prefill_s,
            decode_s=max(0.0, stats.total_s - stats.prefill_s),
            new_tokens=stats.new_tokens,
            tokens_per_second=stats.tokens_per_second,
            mean_accepted_length=stats.mean_accepted_length,
            finish_reason=stats.finish_reason,
            spec_rounds=spec,
            response=response,
            tool_calls=calls,
            tool_s=sum(c.seconds for c in calls) if tool_s is None else tool_s,
            audit=audit,
        )


def prompt_hash(token_ids: list[int]) -> str:
    """Short, stable identity of a prompt: sha256 over little-endian int32 ids, first 16 hex chars.

    Two configurations replaying the same trace must tokenize to the same hash, or they are not
    doing identical work.
    """
    data = struct.pack(f"<{len(token_ids)}i", *token_ids)
    return hashlib.sha256(data).hexdigest()[:16]
