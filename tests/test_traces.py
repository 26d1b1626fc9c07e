"""Traces: schema strictness, crash-tolerant append-only recording, audit rewrite, tables, plots."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
from agentspark.traces import (
    AuditVerdict,
    RequestRecord,
    SpecRound,
    ToolCallRecord,
    TraceError,
    TraceRecorder,
    TraceRound,
    TraceWarning,
    compare_summary,
    compare_table,
    plot_trace,
    prompt_hash,
    read_trace,
    render_table,
    set_audit,
    spec_totals,
    speedup_line,
)
from pydantic import ValidationError
from rich.console import Console

from agentspark import traces
from agentspark.errors import AgentSparkError
from agentspark.stats import RequestStats, RoundStats


def make_round(
    i: int,
    *,
    session: str = "sess-1",
    prefill_s: float = 0.1,
    decode_s: float = 0.4,
    tool_s: float = 0.05,
    tau: float = 2.5,
    backend: str = "torch",
    tools: list[ToolCallRecord] | None = None,
) -> TraceRound:
    if tools is None:
        tools = [ToolCallRecord(id=f"c{i}", name="read_file", args={"path": "a.py"}, status="ok",
                                seconds=tool_s, content="print('hi')")]
    return TraceRound(
        session_id=session,
        round_index=i,
        started_at=1_700_000_000.0 + i,
        backend=backend,
        request=RequestRecord(
            messages=[{"role": "user", "content": f"step {i} ünïcode"}],
            tools=[{"type": "function", "function": {"name": "read_file"}}],
            prompt_hash=prompt_hash([1, 2, 3, i]),
            prompt_tokens=40 + i,
            sampling={"temperature": 0.0, "max_new_tokens": 64},
        ),
        prefill_tokens=40 + i,
        prefill_s=prefill_s,
        decode_s=decode_s,
        new_tokens=20,
        tokens_per_second=20 / (prefill_s + decode_s),
        mean_accepted_length=tau,
        finish_reason="stop",
        spec_rounds=[SpecRound(drafted=4, verified=4, accepted=2, committed=3, draft_s=0.01,
                               verify_s=0.02, other_s=0.001, confidences=[0.9, 0.8, 0.3, 0.1])],
        response={"content": "", "tool_calls": [{"id": f"c{i}", "name": "read_file"}]},
        tool_calls=tools,
        tool_s=sum(t.seconds for t in tools),
    )


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


# --- schema -----------------------------------------------------------------------------------

def test_prompt_hash_is_sha256_of_le_int32():
    ids = [0, 1, 151_643, 2**31 - 1]
    expected = hashlib.sha256(struct.pack("<4i", *ids)).hexdigest()[:16]
    assert prompt_hash(ids) == expected
    assert len(prompt_hash([])) == 16
    assert prompt_hash([1, 2]) != prompt_hash([2, 1])


def test_extra_field_rejected_at_every_level():
    good = json.loads(make_round(0).model_dump_json())
    TraceRound.model_validate(good)
    for mutate in (
        lambda d: d.update(sesion_id="typo"),
        lambda d: d["request"].update(promt_hash="x"),
        lambda d: d["spec_rounds"][0].update(acepted=1),
        lambda d: d["tool_calls"][0].update(secs=1.0),
    ):
        bad = json.loads(json.dumps(good))
        mutate(bad)
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            TraceRound.model_validate(bad)
    with pytest.raises(ValidationError):
        AuditVerdict(mode="beam", passed=True)


def test_from_stats_uses_real_request_stats():
    stats = RequestStats(
        prompt_tokens=50, prefill_tokens=48, prefill_s=0.2, new_tokens=9, total_s=1.0,
        finish_reason="length", drafter="ngram",
        rounds=[RoundStats(4, 4, 3, 4, 0.01, 0.05, 0.002), RoundStats(4, 3, 0, 1, 0.01, 0.04, 0.001)],
    )
    calls = [ToolCallRecord(id="a", name="ls", args={}, status="ok", seconds=0.25, content="x"),
             ToolCallRecord(id="b", name="cat", args={"f": "y"}, status="error", seconds=0.5, content="")]
    req = RequestRecord(messages=[{"role": "user", "content": "hi"}], tools=None,
                        prompt_hash=prompt_hash([5, 6]), prompt_tokens=50, sampling={"temperature": 0})
    rnd = TraceRound.from_stats(
        stats, session_id="s", round_index=3, started_at=1.0, backend="torch", request=req,
        response={"content": "ok", "tool_calls": []}, tool_calls=calls,
        confidences=[[0.9, 0.8, 0.7, 0.6], None],
    )
    assert rnd.decode_s == pytest.approx(0.8)
    assert rnd.prefill_tokens == 48 and rnd.new_tokens == 9 and rnd.finish_reason == "length"
    assert rnd.mean_accepted_length == pytest.approx(2.5) == stats.mean_accepted_length
    assert rnd.tokens_per_second == pytest.approx(9.0)
    assert rnd.tool_s == pytest.approx(0.75)
    assert [s.accepted for s in rnd.spec_rounds] == [3, 0]
    assert rnd.spec_rounds[1].verified == 3 and rnd.spec_rounds[0].verify_s == 0.05
    assert rnd.spec_rounds[0].confidences == [0.9, 0.8, 0.7, 0.6] and rnd.spec_rounds[1].confidences is None
    with pytest.raises(TraceError, match="confidences has 1 entries"):
        TraceRound.from_stats(stats, session_id="s", round_index=0, started_at=1.0, backend="b",
                              request=req, response={}, confidences=[[0.5]])


# --- recorder ---------------------------------------------------------------------------------

def test_round_trip_several_rounds(tmp_path):
    path = tmp_path / "sub" / "t.jsonl"
    written = [make_round(i) for i in range(4)]
    with TraceRecorder(path) as rec:
        for r in written:
            rec.write(r)
    assert rec.closed
    assert read_trace(path) == written
    assert len(path.read_text(encoding="utf-8").splitlines()) == 4
    # append mode: a second recorder adds, never truncates
    with TraceRecorder(path) as rec:
        rec.write(make_round(4))
    assert [r.round_index for r in read_trace(path)] == [0, 1, 2, 3, 4]
    with pytest.raises(TraceError, match="closed"):
        rec.write(make_round(5))


def test_flushed_per_round(tmp_path):
    path = tmp_path / "t.jsonl"
    rec = TraceRecorder(path)
    try:
        rec.write(make_round(0))
        with open(path, encoding="utf-8") as other:  # a separate handle, recorder still open
            lines = other.read().splitlines()
        assert len(lines) == 1 and TraceRound.model_validate_json(lines[0]).round_index == 0
        rec.write(make_round(1))
        assert [r.round_index for r in read_trace(path)] == [0, 1]
    finally:
        rec.close()


def test_crash_mid_write_keeps_finished_rounds(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceRecorder(path) as rec:
        rec.write(make_round(0))
        rec.write(make_round(1))
    line = make_round(2).model_dump_json()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line[: len(line) // 2])  # torn: no newline
    with pytest.warns(TraceWarning, match="truncated final line"):
        rounds = read_trace(path)
    assert [r.round_index for r in rounds] == [0, 1]
    # reopening the recorder cuts the fragment, so the next round is not glued onto it
    with pytest.warns(TraceWarning, match="torn final line"):
        rec = TraceRecorder(path)
    with rec:
        rec.write(make_round(2))
    assert [r.round_index for r in read_trace(path)] == [0, 1, 2]


def test_corrupt_middle_line_raises_with_line_number(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [make_round(i).model_dump_json() for i in range(3)]
    lines[1] = lines[1][:40]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TraceError, match=r"t\.jsonl:2: invalid trace line") as info:
        read_trace(path)
    assert isinstance(info.value, AgentSparkError)
    # a complete but invalid last line (newline present) is corruption too, not a torn write
    lines = [make_round(i).model_dump_json() for i in range(2)] + ['{"session_id": "x"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TraceError, match=":3: "):
        read_trace(path)
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "missing.jsonl")


def test_set_audit_rewrites_atomically(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    with TraceRecorder(path) as rec:
        for i in range(3):
            rec.write(make_round(i))
        rec.write(make_round(1, session="other"))
    os.chmod(path, 0o644)
    verdict = AuditVerdict(mode="greedy", passed=False, detail="diverged at 7",
                           first_divergence={"position": 7, "plain_token": 11, "spec_token": 12})
    assert set_audit(path, "sess-1", 1, verdict) == 1
    rounds = read_trace(path)
    assert [r.audit for r in rounds] == [None, verdict, None, None]
    assert rounds[1].model_dump(exclude={"audit"}) == make_round(1).model_dump(exclude={"audit"})
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]  # no temp file left behind
    with pytest.raises(TraceError, match="no round"):
        set_audit(path, "sess-1", 9, verdict)

    # a failure before os.replace leaves the original untouched
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(TraceError, match="disk full"):  # a user-facing error, the OS's reason kept
        set_audit(path, "sess-1", 0, AuditVerdict(mode="sampling", passed=True))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


# --- report -----------------------------------------------------------------------------------

def test_render_table_cells(tmp_path):
    tools = [ToolCallRecord(id="1", name="grep", args={}, status="ok", seconds=0.02, content=""),
             ToolCallRecord(id="2", name="run[tests]", args={}, status="timeout", seconds=0.03, content="")]
    rounds = [make_round(0, prefill_s=0.123, decode_s=0.456, tau=2.345, tools=tools),
              make_round(1, tau=1.5, tools=[]),
              make_round(2, tau=3.0)]
    rounds[0] = rounds[0].model_copy(update={"audit": AuditVerdict(mode="greedy", passed=True)})
    rounds[2] = rounds[2].model_copy(update={"audit": AuditVerdict(mode="greedy", passed=False)})
    text = render(render_table(rounds))
    row0 = next(line for line in text.splitlines() if "grep" in line)
    for cell in ("sess-1", "torch", "123.0", "456.0", "2.35", "34.5", "50.0", "grep ✓",
                 "run[tests] ✗ timeout", "✓"):
        assert cell in row0, cell
    row1 = next(line for line in text.splitlines() if " 1.50 " in line)
    assert "–" in row1
    footer = text.splitlines()[-2]
    assert "total" in footer and "3 rounds" in footer
    assert "323.0" in footer  # 123 + 100 + 100 ms prefill
    assert "med 2.35" in footer and "60" in footer and "3 calls" in footer and "1/2 ok" in footer

    path = tmp_path / "t.jsonl"
    with TraceRecorder(path) as rec:
        for r in rounds:
            rec.write(r)
    console = Console(record=True, width=200)
    assert traces.print_trace(path, console=console) == rounds
    assert "run[tests] ✗ timeout" in console.export_text()
    assert "stopped" not in text and "guard notes" not in text  # rounds not written by the agent loop


def test_the_compact_table_fits_80_columns():
    """The demo's table on an 80-column terminal: every cell whole on one line (no "…", no row
    folded), times in seconds, calls as counts with their outcomes, the shared session and backend
    in the title, and the footer's medians said in the caption."""
    tools = [ToolCallRecord(id="1", name="grep", args={}, status="ok", seconds=0.02, content=""),
             ToolCallRecord(id="2", name="run[tests]", args={}, status="timeout", seconds=0.03, content="")]
    rounds = [make_round(0, prefill_s=12.3, decode_s=45.6, tools=tools), make_round(1, tools=[]),
              make_round(2).model_copy(update={"stopped": "answer", "audit": AuditVerdict(mode="greedy", passed=True)})]
    console = Console(record=True, width=80)
    console.print(render_table(rounds, title="per-round latency", compact=True))
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines) and "…" not in "".join(lines)
    assert "sess-1" in lines[0] and "torch" in lines[0]  # the shared session and backend, in the title
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == 4  # three rounds and the footer, one line each
    assert "12.3" in body[0] and "45.6" in body[0] and "2 ✓✗" in body[0]
    assert "answer" in body[2] and "1 turn" in body[3]
    assert "τ and tok/s medians" in lines[-1]


def test_render_table_shows_the_agent_loops_guards():
    read = dict(name="read_file", args={"path": "a.py"}, seconds=0.0, content="x")
    rounds = [make_round(0, tools=[ToolCallRecord(id="c0", status="ok", **read)]),
              make_round(1, tools=[ToolCallRecord(id="c0", status="repeated", **read)]).model_copy(
                  update={"guard_notes": ["repeat: c0 [read_file] was already made (c0, round 0); not run again"]}),
              make_round(2, tools=[]).model_copy(update={"stopped": "answer"})]
    text = render(render_table(rounds))
    lines = text.splitlines()
    assert "stopped" in next(line for line in lines if "session" in line)
    row1 = next(line for line in lines if "↻" in line)
    assert "read_file ↻ repeated" in row1 and "✗" not in row1
    assert "answer" in next(line for line in lines if " 2 " in line and "sess-1" in line)
    assert "2 calls, 1 repeated" in text and "1 turn " in text
    # the notes under the table, by round, shown literally (no rich markup)
    assert [line.rstrip() for line in lines[-2:]] == [
        "guard notes:", "round 1: repeat: c0 [read_file] was already made (c0, round 0); not run again"]


def test_compare_table_speedups():
    a = [make_round(0, prefill_s=0.2, decode_s=0.8), make_round(1, prefill_s=0.1, decode_s=0.9),
         make_round(2, prefill_s=0.5, decode_s=1.5)]
    b = [make_round(0, prefill_s=0.1, decode_s=0.4, backend="spec"),
         make_round(1, prefill_s=0.1, decode_s=0.15, backend="spec"),
         make_round(2, prefill_s=0.5, decode_s=1.5, backend="spec")]
    s = compare_summary(a, b)
    assert s["speedups"] == pytest.approx([2.0, 4.0, 1.0])
    assert s["median_speedup"] == pytest.approx(2.0)
    assert s["total_ratio"] == pytest.approx(4.0 / 2.75)
    text = render(compare_table(a, b, "plain", "spec"))
    assert "plain ms" in text and "spec ms" in text and "speedup plain/spec" in text
    assert "1000.0" in text and "250.0" in text and "4.00×" in text
    assert "median 2.00×" in text and "total 1.45×" in text

    # replay with fresh session ids pairs by position; a missing round shows a dash
    b2 = [r.model_copy(update={"session_id": "replay"}) for r in b[:2]]
    s2 = compare_summary(a, b2)
    assert s2["speedups"][:2] == pytest.approx([2.0, 4.0]) and s2["speedups"][2] is None
    assert s2["median_speedup"] == pytest.approx(3.0)
    assert "–" in render(compare_table(a, b2, "a", "b"))


# --- speedups the rounds support ---------------------------------------------------------------


def sr(drafted: int, verified: int, accepted: int, committed: int) -> SpecRound:
    return SpecRound(drafted=drafted, verified=verified, accepted=accepted, committed=committed,
                     draft_s=0.0, verify_s=0.01, other_s=0.0)


PLAIN = sr(0, 0, 0, 1)
NOTHING_VERIFIED = sr(9, 0, 0, 1)
ALL_ACCEPTED = sr(9, 9, 8, 9)


def run_of(seconds: list[float], spec_rounds: list[SpecRound], backend: str = "spec",
           first: int = 0) -> list[TraceRound]:
    """Trace rounds ``first``, ... of these model seconds, each with the decoding rounds ``spec_rounds``."""
    return [make_round(i, prefill_s=0.0, decode_s=s, backend=backend).model_copy(update={"spec_rounds": spec_rounds})
            for i, s in enumerate(seconds, start=first)]


def plain_run(seconds: list[float]) -> list[TraceRound]:
    return run_of(seconds, [PLAIN] * 20, backend="plain")


def test_speedup_line_reports_tau_and_verified_share():
    plain = plain_run([1.0, 1.0, 1.0])
    spec = run_of([0.5, 0.5, 0.5], [sr(9, 4, 2, 3)] * 41)
    t = spec_totals(spec)
    assert (t.rounds, t.drafted, t.verified, t.accepted, t.tau) == (123, 1107, 492, 246, 3.0)
    assert speedup_line(plain, spec) == ("speedup over plain decoding: 2.00x total model time, 2.00x median "
                                         "per round (tau 3.00; 492 of 1,107 drafted tokens verified, 44%)")
    assert "*" not in render(compare_table(plain, spec, "plain", "spec", plain_side="a"))


def test_speedup_without_a_verified_token_is_timing_noise():
    """The issue's run: tau 1.00 in every round, nothing verified, and a measured 1.78x."""
    plain = plain_run([1.78, 1.78, 1.78])
    spec = run_of([1.0, 1.0, 1.0], [NOTHING_VERIFIED] * 41)
    assert speedup_line(plain, spec) == (
        "speedup over plain decoding: not supported by the rounds (tau 1.00; 0 of 1,107 drafted "
        "tokens verified, 0%): measured 1.78x total, 1.78x median per round is timing noise")
    text = render(compare_table(plain, spec, "plain", "spec", plain_side="a"))
    assert "1.78×*" in text and "median 1.78×*" in text and "total 1.78×*" in text
    assert "timing noise" in text
    # without plain_side (runs on different targets or machines: no bound holds) nothing is marked
    assert "*" not in render(compare_table(plain, spec, "plain", "spec"))


def test_speedup_beyond_tau_is_timing_noise_but_a_slowdown_is_reported():
    spec = run_of([1.0, 1.0], [sr(4, 2, 1, 2), sr(4, 2, 0, 1)])  # tau 1.5
    assert speedup_line(plain_run([2.0, 2.0]), spec).startswith(
        "speedup over plain decoding: not supported by the rounds (tau 1.50; 8 of 16 drafted tokens verified, 50%)")
    assert speedup_line(plain_run([1.4, 1.4]), spec).startswith("speedup over plain decoding: 1.40x total")
    # slower than plain is always possible (drafting costs): reported as measured
    nothing = run_of([1.0], [NOTHING_VERIFIED])
    assert speedup_line(plain_run([0.9]), nothing).startswith("speedup over plain decoding: 0.90x total")


def test_median_is_held_to_the_rounds_own_bounds():
    """Total within tau, the median per round beyond the median of the rounds' own taus."""
    plain = plain_run([1.9, 1.9, 4.0])
    spec = [*run_of([1.0, 1.0], [NOTHING_VERIFIED]), *run_of([1.0], [ALL_ACCEPTED], first=2)]
    s = compare_summary(plain, spec)
    assert s["total_ratio"] == pytest.approx(7.8 / 3) and s["total_ratio"] < spec_totals(spec).tau
    assert s["median_speedup"] == pytest.approx(1.9)
    assert "not supported by the rounds" in speedup_line(plain, spec)
    text = render(compare_table(plain, spec, "plain", "spec", plain_side="a"))
    assert "median 1.90×*" in text and "total 2.60× " in text


def test_plain_side_b_flips_the_ratio():
    plain = plain_run([1.78])
    assert "0.56×*" in render(compare_table(run_of([1.0], [NOTHING_VERIFIED]), plain, "spec", "plain", plain_side="b"))
    assert "*" not in render(compare_table(run_of([1.0], [ALL_ACCEPTED]), plain, "spec", "plain", plain_side="b"))


# --- plot and package surface -----------------------------------------------------------------

def test_plot_trace_writes_png(tmp_path):
    path = tmp_path / "t.jsonl"
    with TraceRecorder(path) as rec:
        for i in range(5):
            rec.write(make_round(i, tau=1.0 + i / 2))
    out = plot_trace(path, tmp_path / "plots" / "t.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    mixed = [make_round(0), make_round(0, session="other-session")]
    assert plot_trace(mixed, tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(TraceError, match="no rounds"):
        plot_trace([], tmp_path / "empty.png")


def test_public_api():
    names = set(traces.__all__)
    assert {"TraceRound", "TraceRecorder", "read_trace", "set_audit", "render_table", "print_trace",
            "compare_table", "plot_trace", "prompt_hash", "TraceError"} <= names
    assert all(hasattr(traces, n) for n in names)
    assert issubclass(TraceError, AgentSparkError)


# --- incremental lines (version 2): linear growth, full messages on read ----------------------

def _scripted_session(path, rounds: int, workspace):
    """An agent session of ``rounds`` rounds, each reading a ~2 KB file (its result joins the
    conversation, so every request is longer than the one before)."""
    from agentspark.agent.loop import Agent
    from agentspark.backends.scripted import ScriptedBackend
    from agentspark.tools import make_file_tools

    workspace.mkdir(exist_ok=True)
    (workspace / "notes.txt").write_text("".join(f"line {i}: the project's notes, owner, deadline\n" for i in range(40)))
    call = '<tool_call>\n{"name": "read_file", "arguments": {"path": "notes.txt"}}\n</tool_call>'
    backend = ScriptedBackend([f"Reading it again. {call}"] * (rounds - 1) + ["Done."])
    agent = Agent(backend, make_file_tools(workspace), trace=path, max_rounds=rounds, system="be brief")
    agent.run("Read notes.txt again and again.")
    agent.close()
    return backend


def test_trace_grows_linearly_with_the_session(tmp_path):
    """Every round used to repeat the whole conversation: 55 rounds made 3.5 MB, 110 rounds 4x that."""
    sizes, sent = {}, {}
    for n in (55, 110):
        path = tmp_path / f"t{n}.jsonl"
        sent[n] = [req["messages"] for req in _scripted_session(path, n, tmp_path / f"ws{n}").requests]
        sizes[n] = path.stat().st_size
    assert sizes[110] < 2.2 * sizes[55]  # quadratic growth gives ~3.9x
    assert sizes[55] < 600_000  # measured: 3,585,065 bytes before, 366,162 after
    for n in (55, 110):  # replay and audit still see each request exactly as it was sent
        assert [r.request.messages for r in read_trace(tmp_path / f"t{n}.jsonl")] == sent[n]


def test_incremental_lines_survive_set_audit_and_catch_edits(tmp_path):
    path = tmp_path / "t.jsonl"
    backend = _scripted_session(path, 4, tmp_path / "ws")
    lines = path.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[0])["request"].get("prefix") is None  # a session's first line is whole
    assert all(json.loads(line)["request"]["prefix"]["count"] >= 1 for line in lines[1:])
    session = read_trace(path)[2].session_id
    set_audit(path, session, 2, AuditVerdict(mode="greedy", passed=True))
    rounds = read_trace(path)
    assert [r.request.messages for r in rounds] == [req["messages"] for req in backend.requests]
    assert rounds[2].audit is not None and path.read_bytes().count(b'"prefix"') == 3
    # a removed line leaves the next one pointing at messages the file no longer holds
    path.write_bytes(lines[0] + lines[2] + lines[3])
    with pytest.raises(TraceError, match=r"t\.jsonl:2: .*reuses .* messages"):
        read_trace(path)


def test_version_1_traces_with_full_messages_are_still_read(tmp_path):
    path = tmp_path / "v1.jsonl"
    old = [make_round(i).model_copy(update={"version": 1}) for i in range(2)]
    path.write_text("".join(r.model_dump_json(exclude={"request": {"prefix"}}) + "\n" for r in old), encoding="utf-8")
    assert read_trace(path) == old


# --- appending to a file whose last line has no newline -----------------------------------------

def test_recorder_adds_a_missing_final_newline_and_never_cuts_a_complete_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(make_round(0).model_dump_json() + "\n" + make_round(1).model_dump_json(), encoding="utf-8")
    with pytest.warns(TraceWarning, match="added one"):
        rec = TraceRecorder(path)
    with rec:
        rec.write(make_round(2))
    assert [r.round_index for r in read_trace(path)] == [0, 1, 2]
    assert not (tmp_path / "t.jsonl.torn").exists()


def test_recorder_keeps_a_torn_fragment_aside(tmp_path):
    path = tmp_path / "t.jsonl"
    line = make_round(1).model_dump_json()
    path.write_text(make_round(0).model_dump_json() + "\n" + line[:50], encoding="utf-8")
    with pytest.warns(TraceWarning, match="torn final line"):
        rec = TraceRecorder(path)
    with rec:
        rec.write(make_round(2))
    assert [r.round_index for r in read_trace(path)] == [0, 2]
    assert (tmp_path / "t.jsonl.torn").read_text(encoding="utf-8") == line[:50] + "\n"  # nothing is lost


# --- user mistakes are TraceErrors (one line in the CLI), never crashes --------------------------

def test_a_directory_is_not_a_trace(tmp_path):
    with pytest.raises(TraceError, match="is a directory"):
        read_trace(tmp_path)
    with pytest.raises(TraceError, match="is a directory"):
        TraceRecorder(tmp_path)
    with pytest.raises(TraceError, match="cannot write the plot"):
        plot_trace([make_round(0)], tmp_path)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["request"]["sampling"].update(top_p="x"), "top_p"),
        (lambda d: d["request"]["sampling"].update(stop=5), "stop must be a list"),
        (lambda d: d["request"]["sampling"].update(seed=2**64), "seed"),
        (lambda d: d["request"]["sampling"].update(temperature=float("inf")), "temperature"),
        (lambda d: d["request"]["sampling"].update(tool_choice=3), "tool_choice"),
        (lambda d: d["request"]["messages"][0].update(role=5), "role must be one of"),
        (lambda d: d["request"]["messages"][0].update(content=["x"]), "content must be a string"),
        (lambda d: d["request"]["messages"][0].update(tool_calls=[{"function": 1}]), "tool call"),
    ],
)
def test_records_replay_could_not_send_are_rejected_with_their_line(tmp_path, mutate, message):
    good = json.loads(make_round(0).model_dump_json())
    mutate(good)
    path = tmp_path / "t.jsonl"
    path.write_text(make_round(1).model_dump_json() + "\n" + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(TraceError, match=rf"t\.jsonl:2: invalid trace line \(request\..*{message}"):
        read_trace(path)
