"""``agentspark eval-drafter``: acceptance of one or more drafters by DeepSpec's protocol
(drafter_eval.py): tau per dataset at temperature 1 and greedy, per-position acceptance, and the
confidence head's calibration (ECE before/after, AUC)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

from .common import add_model_args, checked_prompts, console, exact_of, int_in, max_draft, output_file, sampling_value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-drafter", help="measure drafters' acceptance on eval prompts (DeepSpec's protocol)")
    add_model_args(p)
    p.add_argument("--drafter", action="append", required=True,
                   help="a drafter to evaluate (repeatable): ngram | default | learned:PATH | draft-model:PATH")
    p.add_argument("--prompts", required=True, help="DIR or FILE.jsonl of eval prompts")
    p.add_argument("--limit", type=int_in(1), default=20, help="prompts per dataset (default: 20)")
    p.add_argument("--max-new-tokens", type=sampling_value("max_new_tokens"), default=256,
                   help="tokens generated per prompt (default: 256)")
    p.add_argument("--max-draft", type=max_draft, default=7, help="tokens drafted and verified per round (default: 7)")
    p.add_argument("--temperature", type=sampling_value("temperature"), action="append", default=None,
                   help="repeatable (default: 1.0 and 0.0)")
    p.add_argument("--json", type=output_file, default=None, help="also write every figure to this JSON file")
    p.set_defaults(run=run)


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def run(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..drafter_eval import evaluate
    from ..drafters.factory import build_drafter
    from ..engine import Engine
    from ..model.loading import load_model

    checked_prompts(args.prompts)  # before the model loads: a bad prompts file fails fast
    target = load_model(args.model, dtype=args.dtype, device=args.device)
    temps = args.temperature or [1.0, 0.0]
    results = []
    out = console()
    for spec in args.drafter:
        drafter = build_drafter(spec, target)
        engine = Engine(target, drafter, max_draft=args.max_draft, schedule="full", exact=exact_of(args))
        for t in temps:
            for r in evaluate(engine, spec, args.prompts, temperature=t, max_new_tokens=args.max_new_tokens,
                              limit=args.limit):
                results.append(r)
                out.print(f"{spec:>28} T={t:<4} {r.dataset:<14} tau {r.tau:.3f}  ({r.rounds} rounds, "
                          f"{r.tokens_per_second:.1f} tok/s)")
    table = Table(title=f"tau (accepted length per round, bonus included), max draft {args.max_draft}")
    table.add_column("drafter")
    table.add_column("T")
    datasets = sorted({r.dataset for r in results})
    for d in datasets:
        table.add_column(d, justify="right")
    table.add_column("mean", justify="right")
    for spec in args.drafter:
        for t in temps:
            row = {r.dataset: r.tau for r in results if r.drafter == spec and r.temperature == t}
            table.add_row(spec, f"{t:g}", *[_fmt(row.get(d)) for d in datasets],
                          _fmt(sum(row.values()) / len(row) if row else float("nan")))
    out.print(table)
    for r in results:
        if r.calibration:
            cal = Table(title=f"confidence calibration: {r.drafter}, {r.dataset}, T={r.temperature:g}")
            for c in ("position", "rounds", "survival", "ece_raw", "ece_calibrated", "auc"):
                cal.add_column(c, justify="right")
            for row in r.calibration:
                cal.add_row(str(row["position"]), str(row["rounds"]), _fmt(row["survival"]), _fmt(row["ece_raw"]),
                            _fmt(row.get("ece_calibrated", float("nan"))), _fmt(row["auc"]))
            out.print(cal)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0
