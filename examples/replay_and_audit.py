"""Trace an agent session, replay it with plain decoding, audit it: speculative tokens must equal
plain tokens round for round (greedy, CPU float32: exact by construction).

Shows: ``Agent`` over a speculative ``LocalBackend`` (n-gram) with the built-in ``calculator`` tool,
writing a JSONL trace; ``traces.replay.replay`` of the recorded requests on plain decoding and
``compare_table`` (per-round latency, speedup); the per-round greedy audit ``agentspark audit
TRACE`` runs (``audit_round``: the tokens the session recorded with its KV reuse, and a fresh
speculative re-run, each against plain decoding from scratch), each verdict written into the trace;
the trace's table.
Forced, honestly: the 135M model rarely calls a tool on its own, so round 1 runs with
``tool_choice="calculator"``, which the local backend turns into a grammar (the model writes the
whole call, only a calculator call with an ``expression`` string, and the grammar closes it; the
replay and the audit decode under the same grammar); round 2 is the model's own.

Run:  python examples/replay_and_audit.py [--trace-dir DIR] [--max-new-tokens 64]
Exit code 0 when every round passes the audit and the replay, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from agentspark import Engine, NgramDrafter, SamplingParams, load_model
from agentspark.agent.loop import Agent
from agentspark.audit import audit_round, rebuilt_round
from agentspark.backends.local import LocalBackend
from agentspark.commands.common import console as make_console
from agentspark.commands.demo import warm_grammar
from agentspark.tools import calculator
from agentspark.traces import AuditVerdict, compare_table, read_trace, render_table, set_audit, speedup_line
from agentspark.traces.replay import replay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace-dir", default=None, help="where to write the trace (default: a new temp dir)")
    # 64: the model writes the whole call under the grammar (about 45 tokens on the default model)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per round (default: 64)")
    args = parser.parse_args()
    out = make_console()
    trace_dir = Path(args.trace_dir) if args.trace_dir else Path(tempfile.mkdtemp(prefix="agentspark-example-"))
    trace_dir.mkdir(parents=True, exist_ok=True)
    trace = trace_dir / f"session-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"

    target = load_model("default")  # SmolLM2-135M-Instruct, float32 on the CPU
    engine = Engine(target, NgramDrafter(), max_draft=4)
    warm_grammar(target)  # the grammar's one-time tokenizer cost, not charged to the session's first round
    agent = Agent(LocalBackend(engine), [calculator], trace=trace, max_rounds=2,
                  system="You are a helpful assistant. Use the tools when asked.",
                  sampling=SamplingParams(max_new_tokens=args.max_new_tokens))
    task = "Use the calculator to compute 1234 * 5678."
    print(f"user: {task}   (round 1 forced: tool_choice='calculator')")
    result = agent.run(task, tool_choice="calculator")
    agent.close()
    for r in result.rounds:
        calls = [f"{c.name}({c.args})" for c in r.response.message.tool_calls]
        print(f"  round {r.index}: calls={calls} results={[t.content for t in r.tool_results]} "
                  f"text={r.response.message.content.strip()!r}")

    # Replay: the same recorded requests (tool results included) against plain target decoding.
    recorded = read_trace(trace)
    plain_rounds = replay(recorded, LocalBackend(Engine(target), speculative=False))
    out.print(compare_table(plain_rounds, recorded, "plain", "speculative", plain_side="a"))
    print(speedup_line(plain_rounds, recorded))  # with tau and the drafted tokens verified
    same = [a.response.get("token_ids") == b.response.get("token_ids") for a, b in zip(recorded, plain_rounds)]
    print(f"replayed tokens identical to the recorded ones: {sum(same)}/{len(same)} rounds")

    # Audit, as `agentspark audit TRACE` does: per recorded request, the session's own tokens and a fresh
    # speculative run, each against plain decoding from scratch; the verdict goes into the trace.
    auditor = LocalBackend(engine, reuse_cache=False)
    failures = 0
    for r in recorded:
        ids, params, record = rebuilt_round(auditor, r)
        verdict = audit_round(engine, ids, params, record)
        failures += not verdict.passed
        print(f"audit {r.session_id}#{r.round_index}: {'PASS' if verdict.passed else 'FAIL'} ({verdict.detail})")
        set_audit(trace, r.session_id, r.round_index, AuditVerdict(
            mode=verdict.mode, passed=verdict.passed, detail=verdict.detail, first_divergence=verdict.first_divergence))
    out.print(render_table(read_trace(trace), title="per-round latency (speculative, audited)"))
    differ = same.count(False)
    problems = f"{failures} round(s) failed the audit, {differ} replayed round(s) differ"
    print(f"verdict: {'PASS' if not (failures or differ) else f'FAIL ({problems})'}   trace: {trace}")
    return 1 if failures or differ else 0


if __name__ == "__main__":
    sys.exit(main())
