"""The scripts under examples/ run as written (a fresh interpreter each, the real default model on
the CPU) and exit 0, printing what they demonstrate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentspark.traces import read_trace

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ)
    # One BLAS/OpenMP thread, as conftest sets for xdist workers: on 2 shared cores, spinning
    # thread pools of several processes slow each other down by an order of magnitude.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, f"examples/{name}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def test_langchain_agent(default_model):  # the fixture makes sure the default model is cached first
    out = run_example("langchain_agent.py")
    assert "constrained by tool_choice='calculator' (a grammar): the model wrote '<tool_call>\\n{\"name\": \"calculator\"" in out
    assert "assistant tool_calls: [{'name': 'calculator'" in out and "tool calculator(" in out
    assert out.count('agentspark stats: {"new_tokens": ') == 2
    assert "OK: 2 rounds" in out and "backend local-ngram+dspark" in out


def test_openai_client_agent(default_model):
    out = run_example("openai_client_agent.py")
    assert "health: {'status': 'ok'" in out and "server: http://127.0.0.1:" in out
    assert "round 1: finish_reason=tool_calls" in out and "tool calculator(" in out
    assert "round 1 agentspark: backend=local-ngram+dspark forced_prefix=''" in out  # the grammar forced it
    assert "round 2 agentspark: backend=local-ngram+dspark forced_prefix=''" in out
    assert out.count('stats: {"new_tokens": ') == 2
    assert "OK: 2 rounds through the openai client" in out and out.rstrip().endswith("server stopped")


def test_replay_and_audit(default_model, tmp_path):
    out = run_example("replay_and_audit.py", "--trace-dir", str(tmp_path))
    assert "plain vs speculative" in out and "speedup over plain decoding: " in out
    assert "replayed tokens identical to the recorded ones: 2/2 rounds" in out
    assert out.count(": PASS (session tokens vs plain from scratch: ok, identical (") == 2 and "verdict: PASS" in out
    assert out.count("fresh speculative vs plain: ok, identical (") == 2
    (trace,) = tmp_path.glob("session-*.jsonl")
    rounds = read_trace(trace)
    assert len(rounds) == 2 and all(r.audit is not None and r.audit.passed for r in rounds)
    assert rounds[0].request.sampling["tool_choice"] == "calculator" and rounds[0].request.sampling["forced_prefix"] == ""
    assert rounds[0].tool_calls and rounds[0].tool_calls[0].name == "calculator"
    assert rounds[1].request.sampling["tool_choice"] == "auto"


def test_ngram_calibration(default_model):
    """Both estimates are judged on the same verified tokens (same counts and outcomes per
    position), each predicting a survival probability in (0, 1]."""
    res = json.loads(run_example("ngram_calibration.py", "--prompts", "2", "--tokens", "24"))
    assert res["verified_tokens"] > 0
    own, single = res["per_position"]["positions"], res["single_rate"]["positions"]
    assert own.keys() == single.keys() and all(own[k]["tokens"] == single[k]["tokens"] for k in own)
    assert all(own[k]["observed"] == single[k]["observed"] for k in own)
    for est in (own, single):
        predicted = [est[k]["predicted"] for k in sorted(est, key=int)]
        assert all(0 < p <= 1 for p in predicted)


def test_batch_host_cost(tmp_path):
    """Both modes run on the tiny model and agree (greedy: each is plain decoding); the per-round
    host figures come out for each, and the JSON is written."""
    path = tmp_path / "host.json"
    res = json.loads(run_example("batch_host_cost.py", "--concurrency", "4", "--repeats", "1", "--new-tokens", "12",
                                 "--json", str(path)))
    assert json.loads(path.read_text()) == res and res["sps"] == "h200"
    at = res["results"]["4"]
    assert at["identical_outputs"]
    for mode in ("k3", "adaptive"):
        assert at[mode]["rounds"] > 0 and all(at[mode][f"{k}_us_per_round"] > 0 for k in ("draft_s", "commit_s", "runner_s"))


def test_eval_summary(tmp_path):
    """The device calls' τ lines: per drafter, each set's τ and their mean; a missing file is a
    line that says so, not a stop (the other files are still read)."""
    rows = [{"drafter": "ngram", "dataset": "gsm8k", "tau": 2.0}, {"drafter": "ngram", "dataset": "mbpp", "tau": 1.5},
            {"drafter": "default", "dataset": "gsm8k", "tau": 3.0}]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(rows))
    out = run_example("eval_summary.py", str(tmp_path / "missing.json"), str(path))
    lines = out.splitlines()
    assert "missing.json: No such file or directory" in lines[0]
    assert lines[1].endswith("ngram {'gsm8k': 2.0, 'mbpp': 1.5} mean 1.75")
    assert lines[2].endswith("default {'gsm8k': 3.0} mean 3.0")
