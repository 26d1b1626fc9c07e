"""``agentspark demo``: the main job. A multi-turn agent session on the embedded default model
(SmolLM2-135M-Instruct, CPU) with the built-in tools, speculative decoding (n-gram lookups + the shipped DSpark drafter unless --drafter says otherwise), a trace
under ./agentspark-traces/, the same requests replayed with plain decoding for the speedup, and a
per-round greedy audit (speculative tokens == plain tokens) written into the trace.

What is forced, and why: a 135M model rarely emits a tool call on its own, and when it does it
adds arguments that do not exist. The first round of the two tool tasks is given
``tool_choice=<tool>``, which both backends (speculative and plain, so the audit compares like
with like) turn into a grammar (``LocalBackend(constrain_tool_calls=True)``,
``backends.local.tool_call_grammar``): the model writes the whole call, ``<tool_call>`` then a
JSON object whose name is that tool's and whose arguments follow its schema (only the declared
ones), and the grammar closes the call (``</tool_call>``, then only the end). Nothing is written
into the model's reply for it. The demo prints what was constrained each time; everything else
the model writes on its own.
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


def demo_backends(spec_engine, plain_engine):  # noqa: ANN001, ANN201 (Engine, LocalBackend: they load torch)
    """(speculative, plain) local backends, both turning a forced tool_choice into the tool-call
    grammar: the replay and audit compare the speculative session with plain decoding under the
    same grammar (the grammar is lossless under speculation, constraints.py)."""
    from ..backends.local import LocalBackend

    return (LocalBackend(spec_engine, constrain_tool_calls=True),
            LocalBackend(plain_engine, speculative=False, constrain_tool_calls=True))


def warm_engines(spec_engine, plain_engine) -> None:  # noqa: ANN001 (Engine: it loads torch)
    """One short untimed request through each engine before the session: the speculative engine's
    first request carries one-time costs (the drafters' first forwards, the SPS table's load;
    3.7 s of a 4.8 s first request on a 2-core CPU, against 1.1 s for the next), which the plain
    replay, running after it, never pays: charged to round 0 they made it 0.73x plain."""
    from ..progress import status
    from ..sampling import SamplingParams

    ids = plain_engine.target.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}], add_generation_prompt=True, tokenize=True, return_dict=False)
    with status("warming up both engines (one short untimed request each)"):
        for engine in (spec_engine, plain_engine):
            engine.generate(list(ids), SamplingParams(max_new_tokens=8))


def rehearse_session(backends, tools, system: str, sampling) -> bool:  # noqa: ANN001 (LocalBackend, Tool)
    """Where a runner captures CUDA graphs (a shape's first forward captures it: prefill chunks,
    round lengths, masked rounds), run the whole session once, untimed, through each backend, then
    forget what the caches hold. Without it the speculative session, running first, paid every
    capture and the plain replay none (H200, run 32: round 0 took 1,273 ms speculative against 212
    ms plain, a 0.23x "speedup" where the later rounds ran 1.4-1.8x). Graphs and the drafters'
    running confidence estimates stay, as in a server that has served before. False (nothing run)
    elsewhere: the CPU's one-time costs are covered by ``warm_engines``."""
    from ..agent.loop import Agent
    from ..progress import status

    if not any(getattr(b.engine.runner, "graphs", False) for b in backends):
        return False
    with status("capturing the session's CUDA graphs (the session once, untimed, through each engine)"):
        for backend in backends:
            agent = Agent(backend, tools, max_rounds=3, system=system, sampling=sampling)
            for task, choice in TASKS:
                agent.run(task, tool_choice=choice)
            agent.close()
            backend.engine.reset()
            # the timed session's drafters start from the confidences the rehearsal left, so they
            # may verify lengths it did not, each a capture inside a timed round (H200, run 38:
            # n-gram's round 0 took 76-78 ms against 31-40 in run 36, one round 3 55 ms against
            # 6-7; with this, run 39's round 0 took 31-42 ms)
            backend.engine.runner.capture_lengths()
    return True


def warm_grammar(target) -> None:  # noqa: ANN001 (LoadedModel: it loads torch)
    """Pay llguidance's one-time cost, wrapping the tokenizer (seconds, once per tokenizer and
    process), before the session: paid inside the speculative session's first forced round it
    would be charged to speculation, since the plain replay then finds it done."""
    from ..constraints import Constraint, Grammar
    from ..progress import status

    with status("preparing the tool-call grammar for the tokenizer (once)"):
        Constraint(Grammar("regex", "a"), target.tokenizer, target.model.cfg.vocab_size, target.eos_token_ids)


def constraint_text(tool: str, schemas: list[dict]) -> str:
    """What the grammar of ``tool_choice=tool`` allows, in one line: the call's signature as its
    schema declares it (``?`` marks an optional argument)."""
    fn = next(s["function"] for s in schemas if s["function"]["name"] == tool)
    params = fn.get("parameters") or {}
    required = set(params.get("required") or [])
    args = ", ".join(f"{name}{'' if name in required else '?'}: {schema.get('type', 'any')}"
                     for name, schema in (params.get("properties") or {}).items())
    return f"the grammar allows only the call {tool}({args}) and closes it"


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
    plain_engine = Engine(target, exact=exact_of(args))
    spec_backend, plain_backend = demo_backends(spec_engine, plain_engine)
    warm_grammar(target)
    warm_engines(spec_engine, plain_engine)
    workspace = Path(tempfile.mkdtemp(prefix="agentspark-demo-"))
    (workspace / "notes.txt").write_text(NOTES)
    trace_path = trace_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    tools = [calculator, *make_file_tools(workspace)]
    system, sampling = "You are a helpful assistant. Use the tools when asked.", SamplingParams(max_new_tokens=args.max_new_tokens)
    rehearse_session((spec_backend, plain_backend), tools, system, sampling)

    agent = Agent(spec_backend, tools, trace=trace_path, max_rounds=3, system=system, sampling=sampling)
    console.rule(f"agentspark demo · {args.model} · {args.device} · {args.dtype} · speculative, drafter {drafter.name}")
    if args.model == "default":
        console.print("[dim]The default model (SmolLM2-135M-Instruct) is tiny: expect weak answers. What the demo "
                      "shows is the engine: the same tokens as plain decoding (the audit at the end), in less time "
                      "(the speedup line: plain wall time over speculative, per round and in all).[/]")
    schemas = agent.registry.openai_schemas()
    for task, choice in TASKS:
        console.print(f"[bold]user:[/] {task}")
        forced = choice not in ("auto", "none")  # a forced choice covers the turn's first round only
        for event in agent.stream(task, tool_choice=choice):
            if isinstance(event, ModelTurn):
                r = event.response
                if forced:
                    console.print(f"  [yellow]constrained (tool_choice={choice}):[/] {constraint_text(choice, schemas)}")
                    forced = False
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
