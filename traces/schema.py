"""The trace line format: one ``TraceRound`` per agent round (one model request + its tool calls).

Every model forbids unknown fields, so a typo in a writer or a hand-edited trace fails validation
instead of silently dropping data; the messages and sampling parameters a replay or an audit will
send are checked as well, so a bad line is reported with its line number when the trace is read,
not as a crash in the middle of a replay. ``version`` lets a later format change be read side by side.

Version 2 stores each request's messages incrementally: a round of an agent session resends the
whole conversation so far, and writing it in full every round made a trace grow with the square
of the session's length (55 rounds: 3.5 MB). On disk a request may carry a ``prefix`` instead of
its first messages: "the first ``count`` messages of the previous line of this session", with a
hash of them so an edited or reordered file is caught. ``read_trace`` puts the full messages back;
in memory ``prefix`` is always None. Version 1 lines (messages in full) are read as before.

A round written by the agent loop may also say why its user turn ended there (``stopped``) and
what the loop's guards did in it (``guard_notes``: a repeated call not run again, an empty answer
nudged). Both are optional and left off a line when unset, so lines without them are exactly
the version 2 lines written before these fields existed.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from ..errors import AgentSparkError, InvalidRequestError
from ..stats import RequestStats

TRACE_VERSION = 2
READABLE_VERSIONS = (1, 2)
ROLES = ("system", "user", "assistant", "tool")
# parallel_tool_calls: a forced ``required`` call's grammar allows one call or several by it
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "seed", "max_new_tokens", "parallel_tool_calls")


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
    status: str  # a tools.ToolStatus: "ok" | "error" | "timeout" | ... | "repeated" (not run again)
    seconds: float = Field(ge=0)
    content: str


class AuditVerdict(_Strict):
    """Outcome of re-checking a round against plain decoding (filled in later by ``set_audit``)."""

    mode: Literal["greedy", "sampling"]
    passed: bool
    detail: str = ""
    first_divergence: dict[str, Any] | None = None


def _check_tool_call(call: Any) -> None:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"a tool call must be {{'function': {{'name': str, 'arguments': ...}}}}, got {call!r:.80}")
    if not isinstance(fn.get("arguments", {}), (dict, str)):
        raise ValueError(f"tool call arguments must be an object or a JSON string, got {fn['arguments']!r:.80}")


def _check_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message a backend can be sent again: a known role, text content, well-formed calls."""
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r:.80}")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"content must be a string or null, got {content!r:.80}")
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise ValueError(f"tool_calls must be a list, got {calls!r:.80}")
    for call in calls or []:
        _check_tool_call(call)
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise ValueError(f"{key} must be a string, got {message[key]!r:.80}")
    return message


def sampling_params(sampling: dict[str, Any]):  # noqa: ANN201 (SamplingParams; imported late: it loads torch)
    """The SamplingParams a recorded request was made with (its own checks apply)."""
    from ..sampling import SamplingParams

    stop = sampling.get("stop") or ()
    if not isinstance(stop, (list, tuple)):  # a lone number or string is no list of stop strings
        raise InvalidRequestError(f"stop must be a list of strings, got {stop!r:.80}")
    return SamplingParams(**{k: sampling[k] for k in SAMPLING_FIELDS if k in sampling}, stop=tuple(stop))


def _check_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    try:
        sampling_params(sampling)
    except InvalidRequestError as exc:  # a ValueError too, but its message is the one to show
        raise ValueError(str(exc)) from None
    for key in ("tool_choice", "forced_prefix", "forced_suffix"):
        if sampling.get(key) is not None and not isinstance(sampling[key], str):
            raise ValueError(f"{key} must be a string, got {sampling[key]!r:.80}")
    return sampling


class MessagesPrefix(_Strict):
    """On disk only: the request's first ``count`` messages are the first ``count`` of the previous
    line of the same session; ``sha256`` (of those messages) catches an edited or reordered file."""

    count: int = Field(ge=1)
    sha256: str


class RequestRecord(_Strict):
    """What was asked: in memory the messages are complete so replay can re-run the identical
    request (on disk, version 2 shares the session's earlier messages through ``prefix``)."""

    messages: list[Annotated[dict[str, Any], AfterValidator(_check_message)]]
    tools: list[dict[str, Any]] | None = None
    prompt_hash: str
    prompt_tokens: int = Field(ge=0)
    sampling: Annotated[dict[str, Any], AfterValidator(_check_sampling)]
    prefix: MessagesPrefix | None = None


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
    stopped: str | None = None  # the agent loop's reason its user turn ended with this round
    guard_notes: list[str] = Field(default_factory=list)  # what the agent loop's guards did in this round

    @model_serializer(mode="wrap")
    def _omit_unset_turn_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset, they are not written: such a line reads in any version-2 reader, old ones too.
        data = handler(self)
        if self.stopped is None:
            data.pop("stopped", None)
        if not self.guard_notes:
            data.pop("guard_notes", None)
        return data

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
        stopped: str | None = None,
        guard_notes: list[str] | None = None,
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
            stopped=stopped,
            guard_notes=list(guard_notes or []),
        )


def prompt_hash(token_ids: list[int]) -> str:
    """Short, stable identity of a prompt: sha256 over little-endian int32 ids, first 16 hex chars.

    Two configurations replaying the same trace must tokenize to the same hash, or they are not
    doing identical work.
    """
    data = struct.pack(f"<{len(token_ids)}i", *token_ids)
    return hashlib.sha256(data).hexdigest()[:16]
