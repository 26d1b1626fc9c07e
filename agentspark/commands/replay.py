"""``agentspark replay TRACE [backend options]``: the trace's requests against another backend,
per-round latency side by side with the speedup."""

from __future__ import annotations

import argparse

from .common import add_backend_args, backend_from_args, console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run a trace's requests on another backend, latency side by side")
    p.add_argument("trace")
    add_backend_args(p)
    p.add_argument("--out", default=None, help="write the replayed rounds as a new trace")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..traces import TraceRecorder, compare_table, read_trace
    from ..traces.replay import replay

    recorded = read_trace(args.trace)
    backend = backend_from_args(args)
    replayed = replay(recorded, backend)
    if args.out:
        with TraceRecorder(args.out) as recorder:
            for r in replayed:
                recorder.write(r)
    label_a = recorded[0].backend if recorded else "recorded"
    console().print(compare_table(recorded, replayed, f"recorded ({label_a})", f"replay ({backend.name})"))
    return 0

