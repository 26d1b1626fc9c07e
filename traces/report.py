"""Terminal tables for traces: one row per agent round, and a side-by-side view for replays.

Cells are built as ``rich.text.Text`` so session ids and tool names containing ``[`` are shown
literally instead of being parsed as rich markup.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from statistics import median
from typing import TypedDict

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .recorder import read_trace
from .schema import ToolCallRecord, TraceRound

DASH = "–"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _tool_mark(call: ToolCallRecord) -> str:
    if call.status == "ok":
        return f"{call.name} ✓"
    if call.status == "error":
        return f"{call.name} ✗"
    return f"{call.name} ✗ {call.status}"


def _audit_mark(rnd: TraceRound) -> str:
    if rnd.audit is None:
        return DASH
    return "✓" if rnd.audit.passed else "✗"


def render_table(rounds: Sequence[TraceRound], title: str | Text | None = None) -> Table:
    """One row per round; the footer holds totals (times, tokens, calls) and medians (τ, tok/s)."""
    rounds = list(rounds)
    audited = [r for r in rounds if r.audit is not None]
    footers = {
        "session": "total",
        "round": f"{len(rounds)} rounds",
        "backend": "",
        "prefill ms": _ms(sum(r.prefill_s for r in rounds)),
        "decode ms": _ms(sum(r.decode_s for r in rounds)),
        "new tok": str(sum(r.new_tokens for r in rounds)),
        "τ": f"med {median(r.mean_accepted_length for r in rounds):.2f}" if rounds else DASH,
        "tok/s": f"med {median(r.tokens_per_second for r in rounds):.1f}" if rounds else DASH,
        "tool ms": _ms(sum(r.tool_s for r in rounds)),
        "tool calls": f"{sum(len(r.tool_calls) for r in rounds)} calls",
        "audit": f"{sum(r.audit.passed for r in audited)}/{len(audited)} ok" if audited else DASH,
    }
    table = Table(title=title, show_footer=True)
    for name, footer in footers.items():
        numeric = name not in ("session", "backend", "tool calls", "audit")
        table.add_column(name, footer=Text(footer), justify="right" if numeric else "left")
    for r in rounds:
        table.add_row(
            Text(r.session_id),
            str(r.round_index),
            Text(r.backend),
            _ms(r.prefill_s),
            _ms(r.decode_s),
            str(r.new_tokens),
            f"{r.mean_accepted_length:.2f}",
            f"{r.tokens_per_second:.1f}",
            _ms(r.tool_s),
            Text(", ".join(_tool_mark(c) for c in r.tool_calls) or DASH),
            _audit_mark(r),
        )
    return table


def print_trace(path: str | os.PathLike[str], console: Console | None = None) -> list[TraceRound]:
    """Read a trace file and print its table; returns the rounds so callers can reuse them."""
    rounds = read_trace(path)
    (console or Console()).print(render_table(rounds, title=Text(str(path))))
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


def compare_table(
    a_rounds: Sequence[TraceRound], b_rounds: Sequence[TraceRound], label_a: str, label_b: str
) -> Table:
    """Per-round model latency of two runs of the same work, with speedup = a / b (>1: b faster)."""
    s = compare_summary(a_rounds, b_rounds)
    med = f"median {s['median_speedup']:.2f}×" if s["median_speedup"] is not None else DASH
    ratio = f"total {s['total_ratio']:.2f}×" if s["total_ratio"] is not None else DASH
    table = Table(title=Text(f"{label_a} vs {label_b}"), show_footer=True)
    table.add_column("session", footer="")
    table.add_column("round", justify="right", footer="")
    table.add_column(Text(f"{label_a} ms"), justify="right", footer="")
    table.add_column(Text(f"{label_b} ms"), justify="right", footer="")
    table.add_column(Text(f"speedup {label_a}/{label_b}"), justify="right", footer=Text(f"{med}\n{ratio}"))
    for (ra, rb), sp in zip(s["pairs"], s["speedups"]):
        ref = ra if ra is not None else rb
        assert ref is not None  # _pair never yields (None, None)
        table.add_row(
            Text(ref.session_id),
            str(ref.round_index),
            _ms(ra.model_s) if ra is not None else DASH,
            _ms(rb.model_s) if rb is not None else DASH,
            f"{sp:.2f}×" if sp is not None else DASH,
        )
    return table
