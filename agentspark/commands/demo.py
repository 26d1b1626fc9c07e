"""``agentspark demo``: the main job. A multi-turn agent session on the embedded default model
(SmolLM2-135M-Instruct, CPU) with the built-in tools, speculative decoding (n-gram lookups + the shipped DSpark drafter unless --drafter says otherwise), a trace
under ./agentspark-traces/, the same requests replayed with plain decoding for the speedup, and a
per-round greedy audit (speculative tokens == plain tokens) written into the trace.

What is forced, and why: a 135M model rarely emits a tool call on its own, and when it does it
adds arguments that do not exist. The first round of the two tool tasks is given
``tool_choice=<tool>``: the opening of the call (``<tool_call> {"name": ..., "arguments":
{"<first arg>": "``) is written into the model's reply, the model writes the argument's value,
and the call is closed for it (``"}} </tool_call>``). The demo prints what was forced each time;
everything else the model writes on its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..errors import InvalidRequestError
from .common import add_drafter_args, add_model_args, exact_of, output_dir, sampling_value
from .common import console as make_console

TASKS = [
    ("What is 1234 * 5678 + 91011? Use the calculator.", "calculator"),
    ("Read the file notes.txt and tell me the deadline of Project Falcon.", "read_file"),
    ("Thanks. In one sentence, repeat the number you computed and the deadline.", "auto"),
]
NOTES = "Project Falcon\nDeadline: March 14, 2027\nBudget: 12,500 EUR\nOwner: Dana Reyes\n"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a traced, audited multi-turn agent session on the default model")
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--max-new-tokens", type=sampling_value("max_new_tokens"), default=64, help="per round (default: 64)")
    p.add_argument("--trace-dir", default="agentspark-traces",
                   help="where the sessions' traces are written (default: ./agentspark-traces)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..agent.loop import Agent, ModelTurn, ToolOutputs
    from ..backends.local import LocalBackend
    from ..drafters.factory import build_drafter
    from ..engine import Engine
    from ..model.loading import load_model
    from ..sampling import SamplingParams
    from ..tools import calculator, make_file_tools
    from ..traces import AuditVerdict, compare_table, read_trace, render_table, set_audit, speedup_line
    from ..traces.report import COMPACT_BELOW
    from ..traces.replay import replay

    console = make_console()
    t_start = time.perf_counter()
    trace_dir = output_dir(Path(args.trace_dir), "--trace-dir")  # before the model loads: fail fast
    target = load_model(args.model, dtype=args.dtype, device=args.device)
    drafter = build_drafter(args.drafter, target)
    if drafter is None:
        raise InvalidRequestError("the demo compares speculative with plain decoding: choose a drafter, not none")
    spec_engine = Engine(target, drafter, max_draft=args.max_draft, exact=exact_of(args), schedule=args.schedule,
                         confidence_threshold=args.confidence_threshold)
    spec_backend = LocalBackend(spec_engine, close_forced_calls=True)
    plain_backend = LocalBackend(Engine(target, exact=exact_of(args)), speculative=False, close_forced_calls=True)
    workspace = Path(tempfile.mkdtemp(prefix="agentspark-demo-"))
    (workspace / "notes.txt").write_text(NOTES)
    trace_path = trace_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"

    agent = Agent(spec_backend, [calculator, *make_file_tools(workspace)], trace=trace_path, max_rounds=3,
                  system="You are a helpful assistant. Use the tools when asked.",
                  sampling=SamplingParams(max_new_tokens=args.max_new_tokens))
    console.rule(f"agentspark demo · {args.model} · {args.device} · {args.dtype} · speculative, drafter {drafter.name}")
    if args.model == "default":
        console.print("[dim]The default model (SmolLM2-135M-Instruct) is tiny: expect weak answers. What the demo "
                      "shows is the engine: the same tokens as plain decoding (the audit at the end), in less time "
                      "(the speedup line: plain wall time over speculative, per round and in all).[/]")
    for task, choice in TASKS:
        console.print(f"[bold]user:[/] {task}")
        for event in agent.stream(task, tool_choice=choice):
            if isinstance(event, ModelTurn):
                r = event.response
                if r.forced_prefix:
                    console.print(f"  [yellow]forced (tool_choice={choice}):[/] {r.forced_prefix!r} "
                                  f"… model writes the value … {r.forced_suffix!r}")
                for call in r.message.tool_calls:
                    console.print(f"  [cyan]tool call:[/] {call.name}({call.args})")
                for bad in r.message.invalid_tool_calls:
                    console.print(f"  [red]invalid tool call:[/] {bad.error}")
                if r.message.content:
                    console.print(f"  [bold]assistant:[/] {r.message.content.strip()}")
            elif isinstance(event, ToolOutputs):
                for res in event.results:
                    console.print(f"  [cyan]tool result[/] ({res.status}): {res.content[:120]}")
    agent.close()

    recorded = read_trace(trace_path)
    console.print(f"replaying {len(recorded)} rounds with plain decoding (same requests, recorded tool results)…")
    plain_rounds = replay(recorded, plain_backend)
    failures = 0
    for spec_round, plain_round in zip(recorded, plain_rounds):
        same = spec_round.response.get("token_ids") == plain_round.response.get("token_ids")
        failures += not same
        n = len(spec_round.response.get("token_ids") or [])
        detail = f"speculative tokens == plain tokens ({n} tokens)" if same else "speculative and plain tokens differ"
        set_audit(trace_path, spec_round.session_id, spec_round.round_index,
                  AuditVerdict(mode="greedy", passed=same, detail=detail))

    console.print(render_table(read_trace(trace_path), title="per-round latency (speculative, audited)",
                               compact=console.width < COMPACT_BELOW))
    console.print(compare_table(plain_rounds, recorded, "plain", "speculative", plain_side="a"))
    verdict = "PASS" if not failures else f"FAIL ({failures} rounds differ)"
    # with tau and the drafted tokens verified; a ratio more than tau is called timing noise
    console.print(speedup_line(plain_rounds, recorded), markup=False, soft_wrap=True)
    console.print(f"audit (greedy, token-exact per round): [{'green' if not failures else 'red'}]{verdict}[/]")
    console.print(f"trace: {trace_path}   ({time.perf_counter() - t_start:.0f} s in all)")
    return 1 if failures else 0
