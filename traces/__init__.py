"""Trace schema, recorder, replay, report and plots. Installed as ``agentspark.traces``.

A trace is a JSONL file with one validated ``TraceRound`` per agent round (one model request plus
its tool calls), written append-only and fsynced per round so a crash keeps every finished round.
Each line stores only the messages its round added to the session (schema.py, version 2), so a
trace grows linearly with the session; ``read_trace`` returns every request in full.
"""

from .plot import plot_trace
from .recorder import TraceRecorder, TraceWarning, read_trace, set_audit
from .report import (
    CompareSummary,
    SpecTotals,
    compare_summary,
    compare_table,
    print_trace,
    render_table,
    spec_totals,
    speedup_line,
)
from .schema import (
    TRACE_VERSION,
    AuditVerdict,
    RequestRecord,
    SpecRound,
    ToolCallRecord,
    TraceError,
    TraceRound,
    prompt_hash,
)

__all__ = [
    "TRACE_VERSION",
    "AuditVerdict",
    "CompareSummary",
    "RequestRecord",
    "SpecRound",
    "SpecTotals",
    "ToolCallRecord",
    "TraceError",
    "TraceRecorder",
    "TraceRound",
    "TraceWarning",
    "compare_summary",
    "compare_table",
    "plot_trace",
    "print_trace",
    "prompt_hash",
    "read_trace",
    "render_table",
    "set_audit",
    "spec_totals",
    "speedup_line",
]
