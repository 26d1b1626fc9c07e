"""``agentspark trace show FILE`` and ``agentspark trace plot FILE -o PNG``."""

from __future__ import annotations

import argparse

from .common import console, output_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="show or plot a trace (JSONL, one agent round per line)")
    verbs = p.add_subparsers(dest="verb", required=True, help="show | plot")
    show = verbs.add_parser("show", help="a table per round: prefill, decode, tokens, tau, tools, audit, why a turn stopped; guard notes below")
    show.add_argument("file", help="the trace (JSONL)")
    show.set_defaults(run=run_show)
    plot = verbs.add_parser("plot", help="per-round latency as stacked bars, with tau")
    plot.add_argument("file", help="the trace (JSONL)")
    plot.add_argument("-o", "--output", type=output_file, required=True, help="the PNG to write")
    plot.set_defaults(run=run_plot)


def run_show(args: argparse.Namespace) -> int:
    from ..traces import print_trace

    print_trace(args.file, console())
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ..traces import plot_trace

    print(plot_trace(args.file, args.output))
    return 0
