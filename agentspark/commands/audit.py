"""``agentspark audit TRACE | --prompts FILE [--model --drafter ...]``: each request against plain
decoding from scratch; non-zero exit on any failure; for a trace, each verdict is written into it.
With ``--base-url URL --reference-url URL`` it audits a running deployment instead (audit_remote.py).

A trace's round gets two checks (agentspark/audit.py): the tokens its session recorded (decoded
with the session's KV reuse) against plain decoding of the prompt the session sent, and a fresh
speculative re-run against plain. A prompts file has no session: only the second."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import audit_remote
from .common import add_drafter_args, add_model_args, checked_prompts, console, engine_from_args, int_in, sampling_value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="prove a session's tokens and speculative output equal plain decoding, or a deployment's "
                       "replies a reference server's (--base-url, --reference-url)")
    p.add_argument("trace", nargs="?", help="a trace whose rounds to audit (verdicts are written into it; with --base-url only read)")
    p.add_argument("--prompts", default=None, help="or a .jsonl of {'turns': [...]} (first turns, no tools)")
    p.add_argument("--limit", type=int_in(1), default=None, help="audit at most this many requests")
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--max-new-tokens", type=sampling_value("max_new_tokens"), default=None,
                   help="override the recorded budget")
    p.add_argument("--temperature", type=sampling_value("temperature"), default=None,
                   help="> 0: audit sampling instead of greedy")
    p.add_argument("--samples", type=int_in(1), default=200, help="sampling audits: runs per side")
    p.add_argument("--sample-tokens", type=int_in(1), default=4, help="sampling audits: tokens compared per run")
    p.add_argument("--control", action="store_true", help="sampling audits: also show an accept-always verifier is caught")
    audit_remote.add_args(p)
    # every option's default, so run() can tell the options given from those left alone (a mix
    # of local and deployment options is refused, not half ignored)
    p.set_defaults(run=run, audit_defaults={a.dest: a.default for a in p._actions})


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.markup import escape

    from ..audit import audit_round, mode_name
    from ..errors import InvalidRequestError
    from ..traces import AuditVerdict, read_trace, set_audit

    audit_remote.check_mix(args, args.audit_defaults)
    if args.base_url:
        return audit_remote.run(args)
    if bool(args.trace) == bool(args.prompts):
        raise InvalidRequestError("give either a TRACE or --prompts FILE")
    # the inputs first: a bad trace or prompts file fails before the model loads
    rounds = read_trace(args.trace)[: args.limit] if args.trace else []
    if args.trace and not os.access(Path(args.trace).resolve().parent, os.W_OK):
        raise InvalidRequestError(f"the verdicts go into {args.trace}, but its folder is not writable; audit a copy")
    records = checked_prompts(args.prompts)[: args.limit] if args.prompts else []
    engine = engine_from_args(args)
    if engine.drafter is None:
        raise InvalidRequestError("an audit compares speculative with plain decoding: choose a drafter, not none")
    jobs = _trace_jobs(engine, rounds) if args.trace else _prompt_jobs(engine, records)

    out = console()
    out.print(f"audit in {mode_name(engine)}")
    failures = 0
    failed_checks: dict[str, int] = {}
    for label, ids, params, key, record in jobs:
        if args.max_new_tokens:
            params = replace(params, max_new_tokens=args.max_new_tokens)
        if args.temperature is not None:
            params = replace(params, temperature=args.temperature)
        result = audit_round(engine, ids, params, record, samples=args.samples, sample_tokens=args.sample_tokens,
                             control=args.control)
        failures += not result.passed
        for check in result.checks:
            failed_checks[check.name] = failed_checks.get(check.name, 0) + (not check.passed)
        out.print(f"{'[green]PASS' if result.passed else '[red]FAIL'}[/] {escape(label)} {result.mode}: "
                  f"{escape(result.detail)}")
        if key is not None:
            verdict = AuditVerdict(mode=result.mode, passed=result.passed, detail=result.detail,
                                   first_divergence=result.first_divergence)
            set_audit(args.trace, key[0], key[1], verdict)
    tally = ", ".join(f"{name} check failed in {n}" for name, n in failed_checks.items() if n)
    out.print(f"{len(jobs) - failures}/{len(jobs)} requests passed" + (f" ({tally})" if tally else ""))
    return 1 if failures else 0


def _trace_jobs(engine, rounds) -> list[tuple]:  # noqa: ANN001 (Engine, TraceRound: imported late, they load torch)
    """(label, prompt ids, params, trace key, session record) per round: the request rebuilt as the
    session's backend built it (forced prefix, and the forced call closed where the recording closed
    it), with what the session produced, to compare with plain decoding."""
    from ..audit import rebuilt_round
    from ..backends.local import LocalBackend

    backend = LocalBackend(engine, reuse_cache=False)
    jobs = []
    for r in rounds:
        ids, params, record = rebuilt_round(backend, r)
        jobs.append((f"{r.session_id}#{r.round_index}", ids, params, (r.session_id, r.round_index), record))
    return jobs


def _prompt_jobs(engine, records) -> list[tuple]:  # noqa: ANN001 (Engine, PromptRecord: imported late)
    """First turns of a prompts file, no tools, no recorded session: the speculative check only."""
    from ..backends.local import LocalBackend
    from ..sampling import SamplingParams

    backend = LocalBackend(engine, reuse_cache=False)
    jobs = []
    for i, rec in enumerate(records):
        prepared = backend.prepare([{"role": "user", "content": rec.turns[0]}], None, SamplingParams(max_new_tokens=128))
        jobs.append((f"{rec.dataset}#{i}", prepared.prompt_ids, prepared.params, None, None))
    return jobs
