"""Terminal tables for traces: one row per agent round, and a side-by-side view for replays.

Cells are built as ``rich.text.Text`` so session ids and tool names containing ``[`` are shown
literally instead of being parsed as rich markup.

Rounds written by the agent loop also show its guards: a call it did not run again is marked
``↻ repeated``, a "stopped" column says why a user turn ended in that round ("answer",
"max_rounds", "empty_answer"), and the guard notes are listed under the table, by round. Traces
without those fields (other writers, older files) get the table as before.

A speedup of speculative over plain decoding of the same target on the same machine is printed
only where the rounds support it: a speculative round costs at least a plain step (its forward
covers the pending token and the verified drafts) and commits tau tokens on average, so it cannot
be more than tau times faster. A larger measured ratio is timing noise and is labelled as such,
next to tau and the fraction of drafted tokens that were verified.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Literal, TypedDict

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .recorder import read_trace
from .schema import ToolCallRecord, TraceRound

DASH = "–"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _secs(seconds: float) -> str:
    return f"{seconds:.1f}"


def _tool_symbol(call: ToolCallRecord) -> str:
    """A call's outcome in one character: ✓ ran, ↻ answered as a repeat, ✗ anything else."""
    return {"ok": "✓", "repeated": "↻"}.get(call.status, "✗")


def _tool_mark(call: ToolCallRecord) -> str:
    if call.status == "ok":
        return f"{call.name} ✓"
    if call.status == "error":
        return f"{call.name} ✗"
    if call.status == "repeated":  # not a failure: the loop answered it instead of running it
        return f"{call.name} ↻ repeated"
    return f"{call.name} ✗ {call.status}"


def _guard_notes(rounds: Sequence[TraceRound]) -> Text | None:
    """The rounds' guard notes, one line each, led by their round (and session, if several)."""
    several = len({r.session_id for r in rounds}) > 1
    lines = [f"{f'{r.session_id} ' if several else ''}round {r.round_index}: {note}"
             for r in rounds for note in r.guard_notes]
    return Text("guard notes:\n" + "\n".join(lines)) if lines else None


def _audit_mark(rnd: TraceRound) -> str:
    if rnd.audit is None:
        return DASH
    return "✓" if rnd.audit.passed else "✗"


COMPACT_BELOW = 120  # console columns under which the round table takes its compact layout


def render_table(rounds: Sequence[TraceRound], title: str | Text | None = None, *, compact: bool = False) -> Table:
    """One row per round; the footer holds totals (times, tokens, calls) and medians (τ, tok/s).
    With rounds from the agent loop: a "stopped" column and the guard notes as the caption.
    ``compact`` (a terminal under COMPACT_BELOW columns, 80 included): times in seconds, tool calls
    as counts, short headers, and the session and backend in the title when every round shares them."""
    rounds = list(rounds)
    audited = [r for r in rounds if r.audit is not None]
    turns = [r for r in rounds if r.stopped is not None]
    repeated = sum(c.status == "repeated" for r in rounds for c in r.tool_calls)  # answered, not run
    sessions, backends = {r.session_id for r in rounds}, {r.backend for r in rounds}
    drop = {"session"} if compact and len(sessions) == 1 else set()
    drop |= {"backend"} if compact and len(backends) == 1 else set()
    if compact and drop and rounds:
        shared = " · ".join([*(["session " + rounds[0].session_id[:8]] if "session" in drop else []),
                             *([rounds[0].backend] if "backend" in drop else [])])
        title = Text(f"{title} ({shared})" if title else shared)
    t = _secs if compact else _ms
    unit = "s" if compact else "ms"
    calls = sum(len(r.tool_calls) for r in rounds)
    med = "" if compact else "med "  # compact: the caption says the footer's τ and tok/s are medians
    footers = {
        "session": "total",
        "round": f"{len(rounds)}" if compact else f"{len(rounds)} rounds",
        "backend": "",
        f"prefill {unit}": t(sum(r.prefill_s for r in rounds)),
        f"decode {unit}": t(sum(r.decode_s for r in rounds)),
        "new tok": str(sum(r.new_tokens for r in rounds)),
        "τ": f"{med}{median(r.mean_accepted_length for r in rounds):.2f}" if rounds else DASH,
        "tok/s": f"{med}{median(r.tokens_per_second for r in rounds):.1f}" if rounds else DASH,
        f"tool {unit}": t(sum(r.tool_s for r in rounds)),
        "tool calls": (str(calls) if compact else f"{calls} calls") + (f", {repeated} repeated" if repeated else ""),
        "audit": f"{sum(r.audit.passed for r in audited)}/{len(audited)} ok" if audited else DASH,
    }
    if turns:  # only rounds written by the agent loop say why a turn ended
        footers["stopped"] = f"{len(turns)} turn{'s' if len(turns) != 1 else ''}"
    if compact and "session" not in drop:
        footers["session"] = ""
    short = {"round": "rnd", f"prefill {unit}": "pre s", f"decode {unit}": "dec s", "new tok": "tok",
             f"tool {unit}": "tool s", "tool calls": "calls", "stopped": "stop"} if compact else {}
    caption = _guard_notes(rounds)
    if compact:
        note = Text("footer: totals; τ and tok/s medians", style="dim")
        caption = note if caption is None else Text.assemble(caption, "\n", note)
    table = Table(title=title, show_footer=True, caption=caption, caption_justify="left")
    for name, footer in footers.items():
        if name in drop:
            continue
        numeric = name not in ("session", "backend", "tool calls", "audit", "stopped")
        # a narrow terminal folds a stop reason ("empty_a/nswer") rather than cut it ("empty_…")
        table.add_column(short.get(name, name), footer=Text(footer), justify="right" if numeric else "left",
                         overflow="fold" if name == "stopped" else "ellipsis")
    for r in rounds:
        marks = [_tool_mark(c) for c in r.tool_calls]
        symbols = "".join(_tool_symbol(c) for c in r.tool_calls)
        cells = {
            "session": Text(r.session_id[:8] if compact else r.session_id),
            "round": str(r.round_index),
            "backend": Text(r.backend),
            "prefill": t(r.prefill_s),
            "decode": t(r.decode_s),
            "new tok": str(r.new_tokens),
            "τ": f"{r.mean_accepted_length:.2f}",
            "tok/s": f"{r.tokens_per_second:.1f}",
            "tool": t(r.tool_s),
            "tool calls": Text(f"{len(marks)} {symbols}" if compact and marks else ", ".join(marks) or DASH),
            "audit": _audit_mark(r),
        }
        row = [cells[k] for k in ("session", "round", "backend") if k not in drop]
        row += [cells[k] for k in ("prefill", "decode", "new tok", "τ", "tok/s", "tool", "tool calls", "audit")]
        if turns:
            row.append(Text(r.stopped or DASH))
        table.add_row(*row)
    return table


def print_trace(path: str | os.PathLike[str], console: Console | None = None) -> list[TraceRound]:
    """Read a trace file and print its table; returns the rounds so callers can reuse them."""
    rounds = read_trace(path)
    console = console or Console()
    console.print(render_table(rounds, title=Text(str(path)), compact=console.width < COMPACT_BELOW))
    return rounds


class CompareSummary(TypedDict):
    pairs: list[tuple[TraceRound | None, TraceRound | None]]
    speedups: list[float | None]  # a latency / b latency per pair; None when not comparable
    median_speedup: float | None
    total_ratio: float | None  # sum of a latencies / sum of b latencies over comparable pairs


def _pair(
    a: Sequence[TraceRound], b: Sequence[TraceRound]
) -> list[tuple[TraceRound | None, TraceRound | None]]:
    """Match rounds by (session_id, round_index); if no key is shared (a replay that minted new
    session ids), match by position instead."""
    a_by = {(r.session_id, r.round_index): r for r in a}
    b_by = {(r.session_id, r.round_index): r for r in b}
    if not a_by.keys() & b_by.keys():
        n = max(len(a), len(b))
        return [(a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(n)]
    keys = list(a_by) + [k for k in b_by if k not in a_by]
    return [(a_by.get(k), b_by.get(k)) for k in keys]


def compare_summary(a_rounds: Sequence[TraceRound], b_rounds: Sequence[TraceRound]) -> CompareSummary:
    """The numbers behind ``compare_table``: latency is prefill + decode (model time, no tools)."""
    pairs = _pair(a_rounds, b_rounds)
    speedups: list[float | None] = []
    tot_a = tot_b = 0.0
    for ra, rb in pairs:
        if ra is None or rb is None or rb.model_s <= 0:
            speedups.append(None)
            continue
        speedups.append(ra.model_s / rb.model_s)
        tot_a += ra.model_s
        tot_b += rb.model_s
    valid = [s for s in speedups if s is not None]
    return CompareSummary(
        pairs=pairs,
        speedups=speedups,
        median_speedup=median(valid) if valid else None,
        total_ratio=tot_a / tot_b if tot_b > 0 else None,
    )


@dataclass(frozen=True)
class SpecTotals:
    """Draft/verify totals over the decoding rounds of some trace rounds."""

    rounds: int  # decoding rounds (the first token of a request comes from prefill: in none)
    drafted: int
    verified: int
    accepted: int
    committed: int

    @property
    def tau(self) -> float:
        """Tokens committed per decoding round; 1.0 without rounds (nothing to speed up)."""
        return self.committed / self.rounds if self.rounds else 1.0

    @property
    def bound(self) -> float:
        """The largest speedup over plain decoding these rounds can support: a round costs at
        least a plain step, and a slowdown (drafting costs) is always possible."""
        return max(1.0, self.tau)


def spec_totals(rounds: Sequence[TraceRound]) -> SpecTotals:
    spec = [s for r in rounds for s in r.spec_rounds]
    return SpecTotals(
        rounds=len(spec),
        drafted=sum(s.drafted for s in spec),
        verified=sum(s.verified for s in spec),
        accepted=sum(s.accepted for s in spec),
        committed=sum(s.committed for s in spec),
    )


class _Bounds(TypedDict):
    per_pair: list[float]  # aligned with CompareSummary.speedups (inf where nothing was compared)
    total: float  # for total_ratio: the bound of all compared speculative rounds together
    median: float  # for median_speedup: per-pair speedups at most their bounds keep the median at
    # most the median of the bounds (order statistics are monotone)


def _bounds(s: CompareSummary, spec_side: int) -> _Bounds:
    """The largest speedups of the speculative side (0: a, 1: b) over plain its rounds support."""
    per_pair: list[float] = []
    compared: list[TraceRound] = []
    for pair, sp in zip(s["pairs"], s["speedups"]):
        spec = pair[spec_side]
        if sp is None or spec is None:
            per_pair.append(math.inf)
            continue
        compared.append(spec)
        per_pair.append(spec_totals([spec]).bound)
    finite = [b for b in per_pair if b != math.inf]
    return _Bounds(per_pair=per_pair, total=spec_totals(compared).bound, median=median(finite) if finite else 1.0)


def _over_plain(speedup: float, spec_side: int) -> float:
    """A speedup a/b as the speculative side's speedup over the plain one."""
    return speedup if spec_side == 1 else 1.0 / speedup


def speedup_line(plain_rounds: Sequence[TraceRound], spec_rounds: Sequence[TraceRound]) -> str:
    """One line: speculative over plain decoding of the same work on the same target and machine,
    with tau and the drafted tokens verified; a ratio the rounds do not support is called noise."""
    s = compare_summary(plain_rounds, spec_rounds)
    t = spec_totals(spec_rounds)
    share = f", {t.verified / t.drafted:.0%}" if t.drafted else ""
    rounds = f"tau {t.tau:.2f}; {t.verified:,} of {t.drafted:,} drafted tokens verified{share}"
    total, med = s["total_ratio"], s["median_speedup"]
    if total is None or med is None:
        return f"speedup over plain decoding: no comparable rounds ({rounds})"
    bounds = _bounds(s, spec_side=1)
    if total <= bounds["total"] and med <= bounds["median"]:
        return f"speedup over plain decoding: {total:.2f}x total model time, {med:.2f}x median per round ({rounds})"
    return (f"speedup over plain decoding: not supported by the rounds ({rounds}): "
            f"measured {total:.2f}x total, {med:.2f}x median per round is timing noise")


def compare_table(
    a_rounds: Sequence[TraceRound],
    b_rounds: Sequence[TraceRound],
    label_a: str,
    label_b: str,
    *,
    plain_side: Literal["a", "b"] | None = None,
) -> Table:
    """Per-round model latency of two runs of the same work, with speedup = a / b (>1: b faster).

    plain_side: which run is plain decoding of the same target on the same machine as the other,
    speculative, one. A speedup of the speculative run beyond what its rounds support (its tau)
    is then marked ``*``, timing noise. Leave it None for runs on different targets or machines,
    where no such bound holds.
    """
    s = compare_summary(a_rounds, b_rounds)
    spec_side = None if plain_side is None else 1 if plain_side == "a" else 0
    no_bound = _Bounds(per_pair=[math.inf] * len(s["pairs"]), total=math.inf, median=math.inf)
    bounds = no_bound if spec_side is None else _bounds(s, spec_side)

    def mark(speedup: float, bound: float) -> str:
        return "*" if spec_side is not None and _over_plain(speedup, spec_side) > bound else ""

    med = ratio = DASH
    if s["median_speedup"] is not None:
        med = f"median {s['median_speedup']:.2f}×{mark(s['median_speedup'], bounds['median'])}"
    if s["total_ratio"] is not None:
        ratio = f"total {s['total_ratio']:.2f}×{mark(s['total_ratio'], bounds['total'])}"
    table = Table(title=Text(f"{label_a} vs {label_b}"), show_footer=True)
    table.add_column("session", footer="")
    table.add_column("round", justify="right", footer="")
    table.add_column(Text(f"{label_a} ms"), justify="right", footer="")
    table.add_column(Text(f"{label_b} ms"), justify="right", footer="")
    table.add_column(Text(f"speedup {label_a}/{label_b}"), justify="right", footer=Text(f"{med}\n{ratio}"))
    marks = []
    for i, ((ra, rb), sp) in enumerate(zip(s["pairs"], s["speedups"])):
        ref = ra if ra is not None else rb
        assert ref is not None  # _pair never yields (None, None)
        marks.append(mark(sp, bounds["per_pair"][i]) if sp is not None else "")
        table.add_row(
            Text(ref.session_id),
            str(ref.round_index),
            _ms(ra.model_s) if ra is not None else DASH,
            _ms(rb.model_s) if rb is not None else DASH,
            f"{sp:.2f}×{marks[-1]}" if sp is not None else DASH,
        )
    if any(marks) or "*" in med + ratio:
        table.caption = "* more than the speculative rounds' tau allows: timing noise"
    return table
