"""The agent-runtime commands end to end on the real default model: demo (trace, replay, audit),
trace show / plot, replay against another configuration, audit of a trace and of prompts."""

from __future__ import annotations

import json

import pytest

from agentspark.cli import main
from agentspark.traces import read_trace
from conftest import patch_default_loads


@pytest.fixture(scope="module")
def demo_trace(tmp_path_factory, default_model):
    out = tmp_path_factory.mktemp("demo")
    # 56 tokens: under the tool-call grammar the model writes the whole calculator call (53 tokens
    # on the default model; the text path wrote only the expression)
    with pytest.MonkeyPatch.context() as mp:
        patch_default_loads(mp, default_model)  # the session's model, not a second load of the GGUF
        code = main(["demo", "--trace-dir", str(out), "--max-new-tokens", "56"])
    assert code == 0  # the demo's own audit passed
    (trace,) = list(out.glob("demo-*.jsonl"))
    return trace


def test_demo_writes_an_audited_trace(demo_trace):
    rounds = read_trace(demo_trace)
    assert len(rounds) >= 3
    assert all(r.audit is not None and r.audit.passed for r in rounds)
    # the forced call went through the grammar: nothing was put in the model's mouth or closed for it
    first = rounds[0].request.sampling
    assert first["tool_choice"] == "calculator" and first["forced_prefix"] == "" and first["forced_suffix"] == ""
    assert rounds[0].tool_calls and rounds[0].tool_calls[0].name == "calculator"
    assert rounds[0].tool_calls[0].status == "ok" and rounds[0].tool_calls[0].args.keys() == {"expression"}
    assert rounds[1].prefill_tokens < rounds[1].request.prompt_tokens / 2  # the session reused its cache
    # on disk each later round holds only what it added to the conversation (read back in full above)
    lines = [json.loads(line) for line in demo_trace.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["request"].get("prefix") is None
    assert all(line["request"]["prefix"]["count"] >= 2 for line in lines[1:])
    assert all(len(line["request"]["messages"]) < len(r.request.messages) for line, r in zip(lines[1:], rounds[1:]))


def test_trace_show_and_plot(demo_trace, tmp_path, capsys):
    assert main(["trace", "show", str(demo_trace)]) == 0
    out = capsys.readouterr().out
    assert "calculator" in out and "prefill" in out
    png = tmp_path / "t.png"
    assert main(["trace", "plot", str(demo_trace), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_against_plain_decoding(demo_trace, tmp_path, capsys, reuse_default_model):
    out = tmp_path / "replayed.jsonl"
    assert main(["replay", str(demo_trace), "--plain", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed.lower() or "×" in printed
    recorded, replayed = read_trace(demo_trace), read_trace(out)
    assert [r.round_index for r in replayed] == [r.round_index for r in recorded]
    assert all(r.backend == "local-plain" for r in replayed)
    # greedy and lossless: the plain replay reproduces the speculative session's replies
    assert [r.response.get("token_ids") for r in replayed] == [r.response.get("token_ids") for r in recorded]


def test_audit_of_a_trace_writes_verdicts(demo_trace, tmp_path, capsys, reuse_default_model):
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(demo_trace.read_bytes())
    assert main(["audit", str(copy), "--limit", "2", "--max-new-tokens", "24"]) == 0
    assert "2/2 requests passed" in capsys.readouterr().out
    assert all(r.audit.passed and "identical" in r.audit.detail for r in read_trace(copy)[:2])
    # both checks ran, the forced call rebuilt as the session sent it (its prompt hash matched): the
    # tokens the session recorded with its KV reuse, and a fresh speculative run, each against plain
    for r in read_trace(copy)[:2]:
        assert "session tokens vs plain from scratch: ok, identical" in r.audit.detail
        assert "fresh speculative vs plain: ok, identical" in r.audit.detail


def test_audit_of_prompts_and_a_failing_audit_exits_non_zero(tmp_path, capsys, reuse_default_model, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"turns": ["List five fruits."]}) + "\n")
    assert main(["audit", "--prompts", str(prompts), "--max-new-tokens", "24"]) == 0

    # a broken verifier (accept every draft) must make the same audit fail, with a divergence
    import agentspark.engine as engine_mod
    from agentspark.verify import Verdict

    def accept_always(draft, q, p, generator):
        return Verdict(accepted=draft.shape[0], token=int(p[draft.shape[0]].argmax()))

    original = engine_mod.Engine.__init__

    def broken_init(self, *a, **k):
        original(self, *a, **k)
        self.verifier = accept_always

    monkeypatch.setattr(engine_mod.Engine, "__init__", broken_init)
    capsys.readouterr()
    assert main(["audit", "--prompts", str(prompts), "--max-new-tokens", "24", "--schedule", "full"]) == 1
    assert "FAIL" in capsys.readouterr().out
