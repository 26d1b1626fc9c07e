"""Replay: re-run a trace's requests against another backend, with the recorded tool results.

Each recorded round holds the request exactly as it was sent (the conversation so far, the tools,
the sampling parameters and tool choice). Replaying sends those same requests, in order, to the
new backend; tool results are not re-executed (they are already inside the recorded messages),
so two configurations are compared on identical work. A local backend also forces tool calls as
the recorded backend did (``forced_by``): through the tool-call grammar, or, for a round recorded
on the text path (its ``forced_prefix``), with that prefix and closed exactly where the recording
closed it (``forced_suffix``). The replayed rounds keep the session id and round index, which is
what ``compare_table`` matches on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..backends.base import Backend, response_record
from ..sampling import SamplingParams
from ..stats import RequestStats
from .schema import RequestRecord, TraceRound, prompt_hash, sampling_params


def sampling_of(request: RequestRecord) -> tuple[SamplingParams, str]:
    """The SamplingParams and tool_choice a recorded request was made with."""
    s = request.sampling
    return sampling_params(s), str(s.get("tool_choice") or "auto")


def forced_by(request: RequestRecord) -> dict[str, bool]:
    """How the recorded backend forced the round's call, as a local backend's ``prepare``
    overrides: a recorded ``forced_prefix`` is the text path (traces from before the grammar path,
    or ``serve --tool-calls forced``), closed where ``forced_suffix`` says; none is the grammar (a
    round without a forced tool_choice is the same either way)."""
    s = request.sampling
    return {"constrain_tool_call": not s.get("forced_prefix"), "close_forced_call": bool(s.get("forced_suffix"))}


def replay(rounds: Iterable[TraceRound], backend: Backend) -> list[TraceRound]:
    """Send every recorded request to ``backend``; return the new rounds (one per recorded round)."""
    out: list[TraceRound] = []
    session = None
    for r in sorted(rounds, key=lambda r: (r.started_at, r.session_id, r.round_index)):
        if r.session_id != session:  # a new conversation: nothing cached belongs to it
            backend.reset()
            session = r.session_id
        params, tool_choice = sampling_of(r.request)
        if hasattr(backend, "constrain_tool_calls"):  # a local backend: force calls as the recording did
            forced = forced_by(r.request)
            backend.constrain_tool_calls = forced["constrain_tool_call"]
            backend.close_forced_calls = forced["close_forced_call"]
        started = time.time()
        t0 = time.perf_counter()
        response = backend.complete(r.request.messages, r.request.tools, params, tool_choice)
        seconds = time.perf_counter() - t0
        stats = response.stats or RequestStats(
            prompt_tokens=response.prompt_tokens, new_tokens=response.completion_tokens, total_s=seconds,
            finish_reason=response.finish_reason, drafter=response.backend,
        )
        request = r.request.model_copy(
            update={"prompt_hash": prompt_hash(response.prompt_ids) if response.prompt_ids else r.request.prompt_hash}
        )
        out.append(
            TraceRound.from_stats(
                stats, session_id=r.session_id, round_index=r.round_index, started_at=started, backend=response.backend,
                request=request, response=response_record(response), tool_calls=list(r.tool_calls), tool_s=r.tool_s,
            )
        )
    return out
