"""``agentspark replay TRACE [backend options]``: the trace's requests against another backend,
per-round latency side by side with the speedup."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_backend_args, backend_from_args, console, output_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run a trace's requests on another backend, latency side by side")
    p.add_argument("trace", help="the trace (JSONL) whose requests to re-run")
    add_backend_args(p)
    p.add_argument("--out", type=output_file, default=None,
                   help="write the replayed rounds as a trace (appended if the file exists)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidRequestError
    from ..traces import TraceRecorder, compare_table, read_trace
    from ..traces.replay import replay

    if args.out and Path(args.out).resolve() == Path(args.trace).resolve():
        raise InvalidRequestError("--out names the trace being replayed; write the replay to another file")
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

