"""Where a multi-turn session's prefill time goes, per drafter: the target's prefill forward, the
drafter's start and its observation of the target's features (summed over the turn).

Why: on the H200 (run 34) the agent demo's `auto` (n-gram + the learned drafter) decoded its 5
rounds as fast as n-gram alone (69 against 67 ms) but prefilled them in 51 ms against 36: about 3
ms more a round, which is why `auto` trails n-gram there. A learned drafter makes the target
capture its features in the prefill and projects them into its own context; this script times
each part (synchronized on CUDA), turn by turn, with the session's prefix reused as the demo does.

    python examples/session_prefill_phases.py --drafter ngram --drafter auto [--device cuda --dtype bfloat16]
        [--session chat|demo]

``--session chat`` (the default): four chat turns, no tools. ``--session demo``: the agent demo's
own session (its tools, system prompt and tasks, the forced tool calls under their grammar, through
the same LocalBackend), where run 36 found `auto` prefilling round 0 in 30 ms against n-gram's 24
on the H200 while the chat session's turn 0 differed by 1 ms; its phases add the first token's
pick (the grammar's mask on the prefill's logits).

It prints a table and writes a JSON ($OUT/session_prefill_phases.json, else ./).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark.drafters.factory import build_drafter  # noqa: E402
from agentspark.engine import Engine  # noqa: E402
from agentspark.model.loading import load_model  # noqa: E402
from agentspark.sampling import SamplingParams  # noqa: E402

TURNS = ["What is 1234 * 5678 + 91011? Think step by step.", "Thanks. Now divide it by 7.",
         "Say the two numbers again, in one sentence.", "And their sum?"]


class PhaseClock:
    """Wraps functions so that each call's time (synced before and after on CUDA) adds to a phase,
    in all (``seconds``) and per request (``requests``: a call of a phase that ``opens`` a request,
    the engine's first step of one, starts a new entry)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.requests: list[dict[str, float]] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, owner: object, name: str, phase: str, opens: bool = False) -> Callable:
        """Replace ``owner.name`` by its timed version; returns the original (to put back)."""
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if opens or not self.requests:
                self.requests.append({})
            self.sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            dt = time.perf_counter() - t0
            self.seconds[phase] = self.seconds.get(phase, 0.0) + dt
            self.requests[-1][phase] = self.requests[-1].get(phase, 0.0) + dt
            return out

        setattr(owner, name, timed)
        return fn


def session(target, spec: str, args) -> list[dict]:  # noqa: ANN001 (LoadedModel: it loads torch)
    drafter = build_drafter(spec, target)
    engine = Engine(target, drafter, max_draft=7)
    clock = PhaseClock(target.model.embed.weight.device)
    if drafter is not None:
        clock.wrap(drafter, "start", "drafter start", opens=True)
        clock.wrap(drafter, "observe", "drafter observe")
    clock.wrap(engine.runner, "prefill", "target prefill", opens=drafter is None)
    if args.session == "demo":
        import agentspark.engine as engine_module

        # a module function, shared by every session: put back after this one, or the next
        # session's wrapper would wrap this one's (and time into its clock too)
        original = clock.wrap(engine_module, "first_logits", "first token (mask)")
        try:
            return demo_session(engine, args, clock)
        finally:
            engine_module.first_logits = original
    params = SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    tok = target.tokenizer
    for _ in range(args.warmup):  # the same session once, untimed: graph captures, first calls
        run_turns(engine, tok, params, clock)
        engine.reset()
    clock.seconds.clear()
    return run_turns(engine, tok, params, clock)


def demo_session(engine: Engine, args, clock: PhaseClock) -> list[dict]:  # noqa: ANN001
    """The demo's session through its speculative backend (warm-up passes first, then one timed):
    per round the trace's prefill and decode times and the phases of that round's request."""
    import tempfile

    from agentspark.agent.loop import Agent
    from agentspark.backends.local import LocalBackend
    from agentspark.commands.demo import NOTES, TASKS, warm_grammar
    from agentspark.tools import calculator, make_file_tools
    from agentspark.traces import read_trace

    warm_grammar(engine.target)
    backend = LocalBackend(engine, constrain_tool_calls=True)  # demo_backends' speculative one
    workspace = Path(tempfile.mkdtemp(prefix="prefill-phases-"))
    (workspace / "notes.txt").write_text(NOTES)
    tools = [calculator, *make_file_tools(workspace)]
    system = "You are a helpful assistant. Use the tools when asked."
    params = SamplingParams(temperature=0.0, max_new_tokens=64)
    for i in range(args.warmup + 1):
        engine.reset()
        clock.seconds.clear()
        clock.requests.clear()
        trace = workspace / f"trace-{i}.jsonl"
        agent = Agent(backend, tools, trace=trace, max_rounds=3, system=system, sampling=params)
        for task, choice in TASKS:
            agent.run(task, tool_choice=choice)
        agent.close()
    rows = []
    for rec, phases in zip(read_trace(trace), clock.requests):
        rows.append({"prompt_tokens": rec.request.prompt_tokens, "prefill_tokens": rec.prefill_tokens,
                     "prefill_ms": 1e3 * rec.prefill_s, "decode_ms": 1e3 * rec.decode_s,
                     "phases_ms": {k: 1e3 * v for k, v in phases.items()}})
    return rows


def run_turns(engine: Engine, tok, params: SamplingParams, clock: PhaseClock) -> list[dict]:  # noqa: ANN001
    messages, rows = [{"role": "system", "content": "You are a helpful assistant. " * 20}], []
    for turn in TURNS:
        messages.append({"role": "user", "content": turn})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        before = dict(clock.seconds)
        result = engine.generate(list(ids), params, reuse_cache=True)
        phases = {k: 1e3 * (v - before.get(k, 0.0)) for k, v in clock.seconds.items()}
        rows.append({"prompt_tokens": len(ids), "prefill_tokens": result.stats.prefill_tokens,
                     "prefill_ms": 1e3 * result.stats.prefill_s, "decode_ms": 1e3 * (result.stats.total_s - result.stats.prefill_s),
                     "phases_ms": phases})
        messages.append({"role": "assistant", "content": result.text})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", action="append", help="build_drafter specs (default: ngram and auto)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--session", choices=("chat", "demo"), default="chat",
                    help="four chat turns (default) or the agent demo's session with its tools and grammars")
    ap.add_argument("--new-tokens", type=int, default=32, help="per chat turn (the demo session: 64, as the demo)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes of the session first")
    ap.add_argument("--repeats", type=int, default=3, help="timed sessions per drafter, alternating; medians")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    target = load_model("default", dtype=dtype, device=args.device)
    specs = args.drafter or ["ngram", "auto"]
    runs: dict[str, list[list[dict]]] = {s: [] for s in specs}
    for _ in range(args.repeats):
        for spec in specs:
            runs[spec].append(session(target, spec, args))
    summary = {}
    for spec, sessions in runs.items():
        turns = []
        for t in range(min(map(len, sessions))):
            cells = [s[t] for s in sessions]
            phases = {k: statistics.median(c["phases_ms"].get(k, 0.0) for c in cells) for k in cells[0]["phases_ms"]}
            turns.append({"prefill_tokens": cells[0]["prefill_tokens"],
                          "prefill_ms": statistics.median(c["prefill_ms"] for c in cells),
                          "decode_ms": statistics.median(c["decode_ms"] for c in cells), "phases_ms": phases})
        summary[spec] = turns
        for t, row in enumerate(turns):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["phases_ms"].items())
            print(f"{spec:>8} turn {t}: prefill {row['prefill_tokens']:4d} tokens {row['prefill_ms']:8.2f} ms "
                  f"(phase totals over the turn: {parts}); decode {row['decode_ms']:8.2f} ms")
    out = Path(args.out or os.path.join(os.environ.get("OUT", "."), "session_prefill_phases.json"))
    out.write_text(json.dumps({"command": " ".join(sys.argv), "device": args.device, "dtype": dtype,
                               "torch": torch.__version__, "summary": summary, "runs": runs}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
