"""``agentspark audit --base-url URL --reference-url URL (--prompts FILE | TRACE)``: a running
speculative deployment against a reference one serving the same model without speculation, every
request greedy and compared token by token (agentspark/remote_audit.py). Exit 0 only when every
reply is identical. The trace is only read here: its verdicts are the local audit's to write."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidRequestError
from .common import api_key, console, output_file, real_in

DEFAULT_MAX_NEW_TOKENS = 128  # a prompts file records no budget; the local audit uses the same

# options that only mean something locally (a model to load, a drafter, sampling audits), and the
# ones that only mean something against servers: a mix is refused rather than silently ignored
LOCAL_ONLY = ("drafter", "max_draft", "schedule", "confidence_threshold", "dtype", "device", "gpu_mode",
              "temperature", "samples", "sample_tokens", "control")
REMOTE_ONLY = ("reference_url", "reference_model", "api_key", "concurrency", "timeout", "retries", "out")


def add_args(p: argparse.ArgumentParser) -> None:
    from .common import int_in

    p.add_argument("--base-url", default=None,
                   help="audit this running speculative deployment (an OpenAI-compatible server) instead of a local "
                   "engine; needs --reference-url; --model is then the name to ask it for (default: the first it lists)")
    p.add_argument("--reference-url", default=None,
                   help="with --base-url: the same model served without speculation, whose replies are the reference")
    p.add_argument("--reference-model", default=None, help="with --base-url: the reference's model name (default: --model)")
    p.add_argument("--api-key", type=api_key, default=None, help="with --base-url: bearer key sent to both servers")
    p.add_argument("--concurrency", type=int_in(1, 256), default=4, help="with --base-url: requests in flight (default: 4)")
    p.add_argument("--timeout", type=real_in(0.0, open_low=True), default=120.0,
                   help="with --base-url: seconds per request before it is retried (default: 120)")
    p.add_argument("--retries", type=int_in(0, 20), default=2, help="with --base-url: retries per request (default: 2)")
    p.add_argument("--out", type=output_file, default=None, help="with --base-url: write the report as JSON here")


def check_mix(args: argparse.Namespace, defaults: dict[str, object]) -> None:
    """Refuse options of the other mode: given (not at their defaults) they would be ignored."""
    given = [d for d in (LOCAL_ONLY if args.base_url else REMOTE_ONLY) if getattr(args, d, None) != defaults.get(d)]
    if not given:
        return
    flags = ", ".join("--" + d.replace("_", "-") for d in given)
    if args.base_url:
        raise InvalidRequestError(f"{flags}: local audit options, but --base-url audits a running server; "
                                  "drop them (the servers' own settings are what is audited)")
    raise InvalidRequestError(f"{flags}: options of a deployment audit; give --base-url URL --reference-url URL too")


def run(args: argparse.Namespace) -> int:
    from ..backends.remote import RemoteBackend, checked_base_url
    from ..errors import AgentSparkError

    if not args.reference_url:
        raise InvalidRequestError("--base-url needs --reference-url: the same model served without speculation")
    if bool(args.trace) == bool(args.prompts):
        raise InvalidRequestError("give either a TRACE or --prompts FILE")
    for flag, url in (("--base-url", args.base_url), ("--reference-url", args.reference_url)):
        try:
            checked_base_url(url)
        except AgentSparkError as exc:
            raise InvalidRequestError(f"{flag}: {exc}") from None
    requests = _requests(args)  # the inputs before the network: a bad file fails at once
    model = _model_name(args.base_url, None if args.model == "default" else args.model, args, "--base-url")
    reference_model = _model_name(args.reference_url, args.reference_model or (None if args.model == "default" else args.model),
                                  args, "--reference-url")
    candidate = RemoteBackend(args.base_url, model, api_key=args.api_key, timeout=args.timeout, retries=args.retries)
    reference = RemoteBackend(args.reference_url, reference_model, api_key=args.api_key, timeout=args.timeout,
                              retries=args.retries)
    try:
        report = _audit(args, requests, candidate, reference, model, reference_model)
    finally:
        candidate.close()
        reference.close()
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise InvalidRequestError(f"cannot write the report to {args.out!r}: {exc.strerror or exc}") from exc
    return 0 if report.passed else 1


def _audit(args, requests, candidate, reference, model: str, reference_model: str):  # noqa: ANN001, ANN202
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..remote_audit import AUDIT_SEED, LogprobsRefusals, RemoteAuditReport, audit_many

    out = console()
    out.print(f"audit of {escape(args.base_url)} ({escape(model)}) against {escape(args.reference_url)} "
              f"({escape(reference_model)}): {len(requests)} greedy requests, seed {AUDIT_SEED}, "
              f"{args.concurrency} at a time")
    columns = (TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # a bar only on a terminal: in a pipe or a log the verdict lines below are the record
    refusals = LogprobsRefusals()
    with Progress(*columns, console=out, transient=True, disable=not out.is_terminal) as progress:
        task = progress.add_task("audit", total=len(requests))
        outcomes = audit_many(requests, candidate, reference, concurrency=args.concurrency,
                              on_done=lambda _: progress.advance(task), refusals=refusals)
    # soft_wrap: one line per request and per refusal, however long, so a log can be grepped
    for outcome in outcomes:
        style = "green" if outcome.identical else "red"
        out.print(f"[{style}]{escape(outcome.line())}[/]", soft_wrap=True)
    for refusal in refusals.by_server.values():  # the message names the server
        out.print(f"[yellow]{escape(refusal)}; its requests were asked again without logprobs and compared by text[/]",
                  soft_wrap=True)
    report = RemoteAuditReport(args.base_url, args.reference_url, model, reference_model, AUDIT_SEED, outcomes,
                               dict(refusals.by_server))
    out.print(f"[bold {'green' if report.passed else 'red'}]verdict: {escape(report.verdict())}[/]", soft_wrap=True)
    return report


def _requests(args: argparse.Namespace) -> list:
    """AuditRequests: a prompts file's first turns (no tools), or a trace's recorded requests (each
    round's messages, tools and tool choice, its recorded budget)."""
    from ..remote_audit import AuditRequest
    from .common import checked_prompts

    if args.prompts:
        budget = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        return [AuditRequest(f"{rec.dataset}#{i}", [{"role": "user", "content": rec.turns[0]}], max_new_tokens=budget)
                for i, rec in enumerate(checked_prompts(args.prompts)[: args.limit])]
    from ..traces import read_trace
    from ..traces.replay import sampling_of

    requests = []
    for r in read_trace(args.trace)[: args.limit]:
        params, tool_choice = sampling_of(r.request)
        requests.append(AuditRequest(f"{r.session_id}#{r.round_index}", r.request.messages, r.request.tools or None,
                                     tool_choice, args.max_new_tokens or params.max_new_tokens))
    if not requests:
        raise InvalidRequestError(f"{args.trace!r} holds no rounds to audit")
    return requests


def _model_name(url: str, given: str | None, args: argparse.Namespace, flag: str) -> str:
    """The model to ask ``url`` for: ``given``, else the first its /v1/models lists. The listing is
    also the reachability check: a server that cannot be reached is one line naming it, now, not
    an error per request after every retry."""
    import httpx

    from ..backends.remote import server_root

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = httpx.get(server_root(url) + "/v1/models", headers=headers, timeout=min(args.timeout, 30.0))
    except httpx.HTTPError as exc:
        raise InvalidRequestError(f"cannot reach {flag} {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code in (401, 403):
        raise InvalidRequestError(f"{flag} {url} refused the API key (HTTP {response.status_code}); give --api-key")
    if given:
        return given  # any other answer: the server may not list models; the requests will tell
    try:
        return str(response.json()["data"][0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidRequestError(f"{flag} {url} lists no models at /v1/models (HTTP {response.status_code}); "
                                  "give the model name with --model (and --reference-model)") from None
