"""Per-round time breakdown of a trace as a PNG: where an agent loop's wall time goes.

Stacked bars show prefill, decode and tool seconds per round; a line on a second axis shows τ
(mean accepted length), so a slow round can be read as "long prompt", "poor drafting" or "slow
tool" at a glance. Uses the Agg canvas directly (no pyplot), so it needs no display and leaves
matplotlib's global backend alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .recorder import read_trace
from .schema import TraceError, TraceRound


def _labels(rounds: Sequence[TraceRound]) -> list[str]:
    """Round indices alone for one session; ``session/round`` when several are mixed."""
    if len({r.session_id for r in rounds}) == 1:
        return [str(r.round_index) for r in rounds]
    return [f"{r.session_id[:8]}/{r.round_index}" for r in rounds]


def plot_trace(
    path_or_rounds: str | os.PathLike[str] | Sequence[TraceRound],
    out_png: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Draw the per-round breakdown of a trace file (or of already-read rounds) to ``out_png``."""
    if isinstance(path_or_rounds, (str, os.PathLike)):
        rounds = read_trace(path_or_rounds)
        title = title or Path(path_or_rounds).name
    else:
        rounds = list(path_or_rounds)
    if not rounds:
        raise TraceError("the trace has no rounds to plot")

    xs = list(range(len(rounds)))
    prefill = [r.prefill_s for r in rounds]
    decode = [r.decode_s for r in rounds]
    tool = [r.tool_s for r in rounds]
    below_tool = [p + d for p, d in zip(prefill, decode)]

    fig = Figure(figsize=(min(4 + 0.45 * len(rounds), 24), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(xs, prefill, label="prefill s", color="#4c72b0")
    ax.bar(xs, decode, bottom=prefill, label="decode s", color="#dd8452")
    ax.bar(xs, tool, bottom=below_tool, label="tool s", color="#55a868")
    ax.set_xlabel("agent round")
    ax.set_ylabel("seconds")
    ax.set_xticks(xs)
    crowded = len(rounds) > 12
    ax.set_xticklabels(_labels(rounds), rotation=45 if crowded else 0, ha="right" if crowded else "center")

    tau_ax = ax.twinx()
    taus = [r.mean_accepted_length for r in rounds]
    tau_ax.plot(xs, taus, color="#c44e52", marker="o", label="τ (mean accepted length)")
    tau_ax.set_ylabel("τ (tokens per spec round)")
    tau_ax.set_ylim(bottom=0)

    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = tau_ax.get_legend_handles_labels()
    ax.legend(handles + h2, labels + l2, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=4, fontsize="small", frameon=False)  # below the axes: never hides a bar
    ax.set_title(title or "trace: time per agent round")
    fig.tight_layout()

    out = Path(out_png)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as exc:  # a directory, a read-only folder, a full disk: the user's to fix
        raise TraceError(f"cannot write the plot to {out}: {exc.strerror or exc}") from exc
    return out
