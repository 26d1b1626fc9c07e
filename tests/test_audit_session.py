"""``agentspark audit TRACE`` checks what the session itself produced, KV reuse and all: a real short
session on the default model is recorded, then a divergence is planted in the trace file (one
recorded completion token changed) and the audit must fail that round, and only it, while the
fresh speculative re-run (all the audit used to compare) still agrees with plain decoding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.agent.loop import Agent
from agentspark.audit import NEAR_TIE_EPSILON, check_session_sampled
from agentspark.backends.local import LocalBackend
from agentspark.cli import main
from agentspark.divergence import replay_plain
from agentspark.traces import read_trace
from agentspark.traces.replay import sampling_of
from conftest import ours_from_hf, tiny_hf_model

MAX_NEW = 16
TASKS = ["List three fruits.", "Now three vegetables.", "Which of them is the sweetest?"]
AUDIT = ["--drafter", "ngram", "--max-draft", "4", "--schedule", "full"]  # the recording's engine, no SPS timing


@pytest.fixture(scope="module")
def session_trace(tmp_path_factory, default_model):
    """Three turns of one session, a round each; rounds 1 and 2 decode on the KV cache kept from the
    rounds before (prefilling only what was appended). No tools: short prompts keep it cheap (the
    forced-call rebuild is the demo audit's, tests/test_agent_commands.py)."""
    path = tmp_path_factory.mktemp("session") / "session.jsonl"
    engine = Engine(default_model, NgramDrafter(), max_draft=4, schedule="full")
    agent = Agent(LocalBackend(engine), [], trace=path, max_rounds=1, sampling=SamplingParams(max_new_tokens=MAX_NEW))
    for task in TASKS:
        agent.run(task)
    agent.close()
    rounds = read_trace(path)
    assert len(rounds) == len(TASKS) and all(len(r.response.get("token_ids") or []) >= 2 for r in rounds)
    assert all(r.prefill_tokens < r.request.prompt_tokens / 2 for r in rounds[1:])  # the session reused its cache
    return path


@pytest.fixture
def audit(monkeypatch, default_model, capsys):
    """``agentspark audit COPY ...`` on the already loaded default model; returns (exit code, stdout)."""
    import agentspark.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: default_model)

    def run(trace, *extra):
        capsys.readouterr()
        code = main(["audit", str(trace), *AUDIT, *extra])
        return code, capsys.readouterr().out

    return run


def _copy(src, tmp_path):
    dst = tmp_path / "copy.jsonl"
    shutil.copyfile(src, dst)
    return dst


def _edit_line(path, index, edit) -> None:
    """Rewrite one line's JSON in place. The response's token ids and the prompt hash are outside
    what the v2 prefix hash covers (the messages), so the file stays valid."""
    lines = path.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[index])
    edit(record)
    lines[index] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _clear_position(model, rnd, backend) -> tuple[int, int]:
    """(position, plain's runner-up token there) at the recorded token where plain's top-2 margin
    is largest: a change there is a clear-margin divergence, never excusable as a near-tie."""
    params, tool_choice = sampling_of(rnd.request)
    ids = backend.prepare(rnd.request.messages, rnd.request.tools, params, tool_choice,
                          close_forced_call=bool(rnd.request.sampling.get("forced_suffix"))).prompt_ids
    tokens = rnd.response["token_ids"]
    found: list[tuple[float, int, int]] = []

    def visit(i, logits):
        top = torch.topk(logits.float(), 2)
        found.append((float(top.values[0] - top.values[1]), i, int(top.indices[1])))

    replay_plain(model, ids, tokens[:-1], visit)
    margin, position, runner_up = max(found)
    assert margin > 2 * NEAR_TIE_EPSILON
    return position, runner_up


def test_the_recorded_session_passes_both_checks(session_trace, tmp_path, audit):
    trace = _copy(session_trace, tmp_path)
    code, out = audit(trace)
    assert code == 0, out
    rounds = read_trace(trace)
    assert f"{len(rounds)}/{len(rounds)} requests passed" in out
    for r in rounds:  # the verdict in the trace names both checks
        assert r.audit.passed and r.audit.mode == "greedy"
        assert "session tokens vs plain from scratch: ok, identical" in r.audit.detail
        assert "fresh speculative vs plain: ok, identical" in r.audit.detail


def test_a_planted_divergence_fails_that_round_and_only_it(session_trace, tmp_path, audit, default_model):
    trace = _copy(session_trace, tmp_path)
    rounds = read_trace(trace)
    planted = 1  # the second turn: decoded on the cache of round 0
    position, token = _clear_position(default_model.model, rounds[planted],
                                      LocalBackend(Engine(default_model), reuse_cache=False))
    _edit_line(trace, planted, lambda rec: rec["response"]["token_ids"].__setitem__(position, token))
    assert read_trace(trace)[planted].response["token_ids"][position] == token  # still a valid trace

    code, out = audit(trace)
    assert code == 1
    assert f"{len(rounds) - 1}/{len(rounds)} requests passed (session check failed in 1)" in out
    verdicts = [r.audit for r in read_trace(trace)]
    assert [v.passed for v in verdicts] == [i != planted for i in range(len(rounds))]
    bad = verdicts[planted]
    assert "session tokens vs plain from scratch: FAILED, diverged at token" in bad.detail
    # the fresh speculative re-run still equals plain: the old audit, which compared only that, passed it
    assert "fresh speculative vs plain: ok, identical" in bad.detail
    d = bad.first_divergence
    assert d["check"] == "session" and d["position"] == position and d["spec_token"] == token
    assert d["plain_token"] == rounds[planted].response["token_ids"][position]
    assert d["plain_margin"] > NEAR_TIE_EPSILON
    assert f"plain top-2 margin {d['plain_margin']:.4g}" in bad.detail


def test_a_smaller_budget_compares_only_the_tokens_before_it(session_trace, tmp_path, audit, default_model):
    trace = _copy(session_trace, tmp_path)
    rounds = read_trace(trace)
    planted = 1
    position, token = _clear_position(default_model.model, rounds[planted],
                                      LocalBackend(Engine(default_model), reuse_cache=False))
    if position == 0:
        pytest.skip("the clearest position is the first token; no budget ends before it")
    _edit_line(trace, planted, lambda rec: rec["response"]["token_ids"].__setitem__(position, token))
    code, out = audit(trace, "--max-new-tokens", str(position), "--limit", str(planted + 1))
    assert code == 0, out
    detail = read_trace(trace)[planted].audit.detail
    assert f"over the first {position} of {len(rounds[planted].response['token_ids'])} recorded tokens" in detail


def test_a_prompt_that_is_not_the_sessions_fails_the_session_check(session_trace, tmp_path, audit):
    trace = _copy(session_trace, tmp_path)
    _edit_line(trace, 0, lambda rec: rec["request"].__setitem__("prompt_hash", "0123456789abcdef"))
    code, out = audit(trace, "--limit", "1")
    assert code == 1
    v = read_trace(trace)[0].audit
    assert not v.passed and "is not the one the session sent (0123456789abcdef)" in v.detail
    assert "fresh speculative vs plain: ok" in v.detail


def test_a_sampled_session_is_checked_for_tokens_plain_sampling_can_draw():
    """One sampled draw: every token must lie in plain's top-k support given the tokens before it;
    a token plain could never draw there is caught, at its position."""
    target = ours_from_hf(tiny_hf_model("llama", seed=3))
    prompt = [5, 17, 42, 8]
    params = SamplingParams(temperature=1.0, top_k=3, seed=11, max_new_tokens=12)
    drawn = Engine(target).generate(prompt, params, speculative=False).token_ids
    ok = check_session_sampled(target.model, prompt, drawn, params)
    assert ok.passed and "all 12 recorded tokens are ones plain sampling can draw" in ok.detail

    worst: list[int] = []  # plain's least likely token at position 4, far outside its top 3

    def visit(i, logits):
        if i == 4:
            worst.append(int(logits.argmin()))
            return True

    replay_plain(target.model, prompt, drawn[:4], visit)
    planted = drawn[:4] + worst + drawn[5:]
    bad = check_session_sampled(target.model, prompt, planted, params)
    assert not bad.passed and bad.divergence["position"] == 4 and bad.divergence["spec_token"] == worst[0]
    assert bad.divergence["support_gap"] > NEAR_TIE_EPSILON
