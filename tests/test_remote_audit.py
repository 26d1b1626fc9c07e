"""``agentspark audit --base-url URL --reference-url URL``: a running deployment against a reference.

Three layers: the comparison itself on hand-made logprobs items and texts; the CLI over loopback
against scripted servers (fast: text comparison, concurrency, option mixes, an unreachable URL);
and the real default model served twice in this process, speculative and plain, whose greedy
replies must be identical token for token, plus a third server that swaps one token of the plain
reply, which the audit must catch at that token.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from agentspark.backends.base import AssistantMessage, Backend, BackendChunk, BackendResponse, ToolCallRequest
from agentspark.backends.scripted import ScriptedBackend
from agentspark.cli import main
from agentspark.datasets import bundled_eval_sample
from agentspark.remote_audit import (
    AuditRequest,
    RemoteAuditReport,
    RequestOutcome,
    audit_many,
    compare_responses,
    compare_text,
    compare_tokens,
    logprob_margin,
)
from agentspark.server import create_app, serve_in_thread

# the package's bundled sample of the eval sets (CI's fresh clone has no ../shared beside it)
EVAL_PROMPTS = bundled_eval_sample()


def item(token: str, best: float = -0.1, second: float | None = -2.6) -> dict:
    """A logprobs.content item as OpenAI sends it; ``token`` is the best of its alternatives."""
    tops = [{"token": token, "logprob": best, "bytes": list(token.encode())}]
    if second is not None:
        tops.append({"token": "<other>", "logprob": second, "bytes": None})
    return {"token": token, "logprob": best, "bytes": list(token.encode()), "top_logprobs": tops}


def response(text: str, logprobs: list[dict] | None = None, calls: list[ToolCallRequest] | None = None) -> BackendResponse:
    return BackendResponse(message=AssistantMessage(content=text, tool_calls=calls or []), finish_reason="stop",
                           prompt_tokens=3, completion_tokens=len(logprobs or []) or 4, backend="test", logprobs=logprobs)


# --- the comparison ------------------------------------------------------------------------------

def test_identical_tokens_have_no_divergence():
    tokens = [item("The"), item(" cat"), item(" sat")]
    assert compare_tokens(tokens, [dict(t) for t in tokens]) is None


def test_first_token_divergence_with_the_references_margin():
    reference = [item("The"), item(" cat"), item(" sat", best=-0.3, second=-0.45), item(" down")]
    candidate = [item("The"), item(" cat"), item(" lay"), item(" down")]
    d = compare_tokens(reference, candidate)
    assert (d.by, d.position, d.reference, d.candidate) == ("token", 2, " sat", " lay")
    assert d.margin == pytest.approx(0.15)  # the reference's best minus its second best, at token 2
    assert d.char_offset == len("The cat") and d.context == "The cat"
    assert "token 2" in d.describe() and "0.15" in d.describe()


def test_a_reply_that_ends_first_diverges_where_it_ended():
    reference = [item("a"), item("b")]
    d = compare_tokens(reference, reference[:1])
    assert (d.position, d.reference, d.candidate) == (1, "b", None)
    d = compare_tokens(reference[:1], reference)
    assert (d.position, d.reference, d.candidate, d.margin) == (1, None, "b", None)
    assert "(reply ended)" in d.describe()


def test_margin_needs_two_alternatives():
    assert logprob_margin(item("x", best=-1.0, second=-1.25)) == pytest.approx(0.25)
    assert logprob_margin(item("x", second=None)) is None
    assert logprob_margin({"token": "x", "logprob": -1.0}) is None  # a server that sent no top_logprobs


def test_text_fallback_reports_the_character_offset_and_context():
    d = compare_text("The answer is 42.", "The answer is 43.")
    assert (d.by, d.position, d.char_offset) == ("text", 15, 15)
    assert (d.reference, d.candidate, d.context) == ("2.", "3.", "The answer is 4")
    assert compare_text("same", "same") is None
    d = compare_text("abc", "abcdef")  # one text a prefix of the other
    assert (d.position, d.reference, d.candidate) == (3, None, "def")


def test_responses_compare_by_tokens_when_both_sent_logprobs_else_by_text():
    tokens = [item("4"), item("2")]
    same = compare_responses("r", response("42", tokens), response("42", tokens))
    assert same.identical and same.compared == "tokens" and same.reference_tokens == 2
    planted = compare_responses("r", response("42", tokens), response("43", [item("4"), item("3")]))
    assert not planted.identical and planted.divergence.by == "token" and planted.divergence.position == 1
    # one server without logprobs: the texts decide
    text_only = compare_responses("r", response("42", tokens), response("43"))
    assert text_only.compared == "text" and text_only.divergence.position == 1
    # the same tokens but a tool call parsed differently still diverges, by text
    call = [ToolCallRequest(id="c", name="add", args={"a": 1})]
    parsed = compare_responses("r", response("", tokens), response("", tokens, calls=call))
    assert not parsed.identical and parsed.divergence.by == "text"


def test_report_verdict_and_json():
    ok = RequestOutcome("a", True, "tokens", 5, 5)
    bad = compare_responses("b", response("x", [item("x")]), response("y", [item("y")]))
    failed = RequestOutcome("c", False, "", error="remote:m at http://h failed after 2 retries: ConnectError")
    assert RemoteAuditReport("u", "r", "m", "m", 1, [ok, ok]).verdict() == "all 2 identical"
    report = RemoteAuditReport("u", "r", "m", "m", 1, [ok, bad, failed])
    assert not report.passed and report.verdict().startswith("2 of 3 diverged")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["diverged"] == 1 and data["errors"] == 1 and not data["passed"]
    assert data["outcomes"][1]["divergence"]["reference"] == "x"


def test_audit_many_keeps_the_requests_order_under_concurrency():
    echo = lambda messages: f"echo {messages[-1]['content']}"  # noqa: E731
    requests = [AuditRequest(f"p{i}", [{"role": "user", "content": str(i)}]) for i in range(6)]
    seen = []
    outcomes = audit_many(requests, ScriptedBackend([echo] * 6), ScriptedBackend([echo] * 6), concurrency=3,
                          on_done=seen.append)
    assert [o.label for o in outcomes] == [f"p{i}" for i in range(6)] and all(o.identical for o in outcomes)
    assert len(seen) == 6


# --- the CLI over loopback, scripted servers -------------------------------------------------------

def _prompts(tmp_path: Path, *turns: str) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"turns": [t], "dataset": "t"}) + "\n" for t in turns))
    return path


def _audit(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_scripted_servers_text_divergence_and_report(tmp_path, capsys):
    """Scripted backends send no logprobs: compared by text. The candidate answers one prompt
    differently at a known character; the other two are identical."""
    reference = lambda messages: f"You said {messages[-1]['content']}."  # noqa: E731
    planted = lambda messages: reference(messages).replace("beta", "bexa")  # noqa: E731
    prompts = _prompts(tmp_path, "alpha", "beta", "gamma")
    out_file = tmp_path / "report" / "audit.json"
    with serve_in_thread(create_app(ScriptedBackend([planted] * 3), model_name="spec")) as spec_url, \
            serve_in_thread(create_app(ScriptedBackend([reference] * 3), model_name="plain")) as plain_url:
        code, out, err = _audit(capsys, "--base-url", spec_url, "--reference-url", plain_url, "--prompts", str(prompts),
                                "--concurrency", "2", "--out", str(out_file))
    assert code == 1, err
    assert "identical t#0" in out and "identical t#2" in out
    assert 'DIVERGED t#1: diverged at char 11: reference "ta." vs candidate "xa."' in out
    assert "verdict: 1 of 3 diverged" in out
    report = json.loads(out_file.read_text())
    assert report["model"] == "spec" and report["reference_model"] == "plain"  # each its first listed model
    assert [o["identical"] for o in report["outcomes"]] == [True, False, True]
    assert report["outcomes"][1]["divergence"]["char_offset"] == len("You said be")


def test_a_trace_is_audited_by_its_recorded_requests(tmp_path, capsys):
    from test_cli_hardening import write_trace

    trace = write_trace(tmp_path / "trace.jsonl", rounds=2)
    before = trace.read_text()
    seen = ScriptedBackend([lambda messages: "ok"] * 2)
    with serve_in_thread(create_app(seen, model_name="m")) as spec_url, \
            serve_in_thread(create_app(ScriptedBackend([lambda messages: "ok"] * 2), model_name="m")) as plain_url:
        code, out, err = _audit(capsys, str(trace), "--base-url", spec_url, "--reference-url", plain_url)
    assert code == 0, err
    assert "identical s#0" in out and "identical s#1" in out and "verdict: all 2 identical" in out
    assert sorted(r["messages"][-1]["content"] for r in seen.requests) == ["hi 0", "hi 1"]
    assert trace.read_text() == before  # the remote mode only reads the trace


@pytest.mark.parametrize("argv,needle", [
    (["--base-url", "http://127.0.0.1:9", "--prompts", "p.jsonl"], "--reference-url"),
    (["--base-url", "http://127.0.0.1:9", "--reference-url", "http://127.0.0.1:9", "--prompts", "p.jsonl",
      "--drafter", "ngram", "--temperature", "0.7"], "--drafter, --temperature: local audit options"),
    (["--prompts", "p.jsonl", "--reference-url", "http://127.0.0.1:9", "--concurrency", "2"],
     "--reference-url, --concurrency: options of a deployment audit"),
    (["--base-url", "http://127.0.0.1:9", "--reference-url", "ftp://x", "--prompts", "p.jsonl"], "--reference-url:"),
    (["--base-url", "http://127.0.0.1:9", "--reference-url", "http://127.0.0.1:9", "--prompts", "p.jsonl"],
     "cannot reach --base-url http://127.0.0.1:9"),
])
def test_user_mistakes_are_one_line(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    _prompts(tmp_path, "hello").rename(tmp_path / "p.jsonl")
    code, _, err = _audit(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("agentspark: error: "), err
    assert needle in err and "Traceback" not in err


# --- the real default model, speculative and plain, over loopback ----------------------------------

class SwapOneToken(Backend):
    """A deployment with a planted bug: the wrapped backend's reply with the token at ``position``
    replaced (its text, logprobs item and content), as a broken verifier would accept a wrong token."""

    name = "planted"

    def __init__(self, inner: Backend, position: int, token: str) -> None:
        self.inner, self.position, self.token = inner, position, token

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):  # noqa: ANN001, ANN201
        final = self.inner.complete(messages, tools, sampling, tool_choice)
        items = [dict(i) for i in final.logprobs]
        self.replaced = items[self.position]["token"]
        items[self.position]["token"] = self.token
        content = "".join(i["token"] for i in items)
        yield BackendChunk(delta=content, logprobs=items,
                           response=replace(final, message=replace(final.message, content=content), logprobs=items))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_speculative_server_equals_plain_and_a_planted_token_is_caught(default_model, tmp_path, capsys):
    from agentspark import Engine, NgramDrafter
    from agentspark.backends.local import LocalBackend

    speculative = LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4), reuse_cache=False)
    plain = LocalBackend(Engine(default_model), speculative=False, reuse_cache=False)
    planted = SwapOneToken(LocalBackend(Engine(default_model), speculative=False, reuse_cache=False), 3, " banana")
    out_file = tmp_path / "audit.json"
    with serve_in_thread(create_app(speculative, model_name="agentspark-default")) as spec_url, \
            serve_in_thread(create_app(plain, model_name="agentspark-default")) as plain_url, \
            serve_in_thread(create_app(planted, model_name="agentspark-default")) as planted_url:
        # concurrency 1: the servers share one model object in this process, so one forward at a time
        code, out, err = _audit(capsys, "--base-url", spec_url, "--reference-url", plain_url, "--prompts",
                                str(EVAL_PROMPTS), "--limit", "3", "--max-new-tokens", "16", "--concurrency", "1",
                                "--out", str(out_file))
        assert code == 0, out + err
        assert "verdict: all 3 identical" in out
        report = json.loads(out_file.read_text())
        assert report["passed"] and len(report["outcomes"]) == 3
        assert all(o["compared"] == "tokens" and 0 < o["reference_tokens"] <= 16 for o in report["outcomes"])

        code, out, err = _audit(capsys, "--base-url", planted_url, "--reference-url", plain_url, "--prompts",
                                str(EVAL_PROMPTS), "--limit", "1", "--max-new-tokens", "16", "--out", str(out_file))
    assert code == 1, out + err
    assert "verdict: 1 of 1 diverged" in out
    divergence = json.loads(out_file.read_text())["outcomes"][0]["divergence"]
    assert divergence["by"] == "token" and divergence["position"] == 3
    assert divergence["reference"] == planted.replaced and divergence["candidate"] == " banana"
    assert divergence["margin"] is not None and divergence["margin"] >= 0  # greedy's pick is the reference's best
