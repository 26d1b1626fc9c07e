"""The agent loop's guards over a scripted backend that repeats itself: an identical call is not
run again but answered with a note, an empty answer is nudged once and then ends the turn with
a stated reason, a call cut off by the token budget is fed back; all of it in the trace."""

from __future__ import annotations

import json

from agentspark.agent.loop import Agent
from agentspark.backends.scripted import CutOff, ScriptedBackend
from agentspark.tools import calculator, tool
from agentspark.traces import read_trace

NOTES = "Project Falcon\nDeadline: March 14, 2027\n"
READS: list[str] = []


@tool
def read_file(path: str) -> str:
    """Read a text file.

    Args:
        path: the file's path
    """
    READS.append(path)
    return NOTES if path == "notes.txt" else f"no file {path}"


def call(name: str, args: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


READ = call("read_file", {"path": "notes.txt"})


def tool_messages(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def setup_function() -> None:
    READS.clear()


def test_the_issue_five_identical_reads_then_an_empty_answer(tmp_path):
    """The reported session: read_file five times, then "". Now the file is read once, each repeat
    gets the earlier result back with a note, the empty answer is nudged, and the answer comes."""
    answer = "The deadline of Project Falcon is March 14, 2027."
    backend = ScriptedBackend([READ] * 5 + ["", answer])
    agent = Agent(backend, [read_file], trace=tmp_path / "t.jsonl")
    result = agent.run("What is the deadline in notes.txt?")
    assert READS == ["notes.txt"]  # run once, not five times
    assert result.stopped == "answer" and result.answer == answer and len(result.rounds) == 7
    statuses = [r.tool_results[0].status for r in result.rounds[:5]]
    assert statuses == ["ok", "repeated", "repeated", "repeated", "repeated"]
    note = result.rounds[1].tool_results[0].content
    assert "already made before (round 0)" in note and "not run again" in note
    assert NOTES.strip() in note and "Do not repeat it" in note
    # the model sees the note as that call's result
    fed = tool_messages(backend.requests[2])[-1]
    assert fed["tool_call_id"] == result.rounds[1].response.message.tool_calls[0].id and fed["content"] == note
    # the empty answer got one nudge, which restates the question
    nudge = backend.requests[6]["messages"][-1]
    assert nudge["role"] == "user" and "empty" in nudge["content"] and "What is the deadline in notes.txt?" in nudge["content"]
    assert "tool results" in nudge["content"]
    agent.close()

    rounds = read_trace(tmp_path / "t.jsonl")
    assert [r.tool_calls[0].status for r in rounds[:5]] == statuses
    assert rounds[1].tool_calls[0].content == note
    assert all(len(r.guard_notes) == 1 and r.guard_notes[0].startswith("repeat: call_0 read_file") for r in rounds[1:5])
    assert rounds[5].guard_notes == ["empty answer: asked the model once more for its answer"]
    assert [r.stopped for r in rounds] == [None] * 6 + ["answer"]
    assert rounds[6].request.messages[-1] == nudge  # the nudge is part of the next request
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert '"stopped"' not in lines[0] and '"guard_notes"' not in lines[0]  # unset: not written


def test_an_empty_answer_twice_ends_the_turn_with_its_reason(tmp_path):
    backend = ScriptedBackend([call("calculator", {"expression": "6*7"}), "", "  \n"])
    agent = Agent(backend, [calculator], trace=tmp_path / "t.jsonl")
    result = agent.run("what is 6*7?")
    assert result.stopped == "empty_answer" and result.answer == "" and len(result.rounds) == 3
    assert len(backend.requests) == 3  # one nudge, no more
    assert result.rounds[2].notes == ["empty answer again after the nudge: the turn ends without an answer"]
    # the session goes on normally: the next turn starts from the user's new message
    backend.script.append("42")
    assert agent.run("and again?").stopped == "answer"
    assert backend.requests[3]["messages"][-1] == {"role": "user", "content": "and again?"}
    agent.close()
    assert [r.stopped for r in read_trace(tmp_path / "t.jsonl")] == [None, None, "empty_answer", "answer"]


def test_an_empty_answer_in_the_last_round_is_not_nudged():
    backend = ScriptedBackend([call("calculator", {"expression": "1+1"}), ""])
    agent = Agent(backend, [calculator], max_rounds=2)
    result = agent.run("1+1?")
    assert result.stopped == "empty_answer" and result.answer == ""
    assert agent.messages[-1]["role"] == "assistant"  # no nudge left dangling in the session


def test_an_empty_answer_without_tools_is_nudged_too():
    backend = ScriptedBackend(["", "Paris."])
    result = Agent(backend, []).run("Capital of France?")
    assert result.stopped == "answer" and result.answer == "Paris."
    nudge = backend.requests[1]["messages"][-1]["content"]
    assert "Capital of France?" in nudge and "tool results" not in nudge


def test_the_same_call_twice_in_one_reply_runs_once():
    backend = ScriptedBackend([READ + "\n" + READ + "\n" + call("read_file", {"path": "other.txt"}), "done"])
    result = Agent(backend, [read_file]).run("read")
    assert READS == ["notes.txt", "other.txt"]
    first, second, third = result.rounds[0].tool_results
    assert (first.status, second.status, third.status) == ("ok", "repeated", "ok")
    assert "earlier in this same reply" in second.content and NOTES.strip() in second.content
    assert [m["tool_call_id"] for m in tool_messages(backend.requests[1])] == ["call_0", "call_1", "call_2"]


def test_identical_means_same_name_and_canonical_arguments():
    script = [
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>',
        '<tool_call>\n{"name": "calculator", "arguments": {"expression":"2+2"}}\n</tool_call>',  # same JSON
        call("calculator", {"expression": "2+3"}),  # other arguments: run
        "4 and 5",
    ]
    result = Agent(ScriptedBackend(script), [calculator]).run("sums")
    assert [r.tool_results[0].status for r in result.rounds[:3]] == ["ok", "repeated", "ok"]
    assert result.rounds[2].tool_results[0].content == "5"


def test_a_repeated_failing_call_says_it_failed():
    bad = call("read_file", {"paht": "notes.txt"})
    result = Agent(ScriptedBackend([bad, bad, "sorry"]), [read_file]).run("read")
    assert result.rounds[0].tool_results[0].status == "invalid_arguments"
    note = result.rounds[1].tool_results[0].content
    assert "It failed (invalid_arguments)" in note and "paht" in note


def test_repeats_are_judged_within_a_turn_not_the_session():
    backend = ScriptedBackend([READ, "March 14.", READ, "Still March 14."])
    agent = Agent(backend, [read_file])
    agent.run("Deadline?")
    second = agent.run("I edited the file; read it again.")
    assert READS == ["notes.txt", "notes.txt"] and second.rounds[0].tool_results[0].status == "ok"


def test_guard_repeats_off_runs_every_call():
    result = Agent(ScriptedBackend([READ, READ, "ok"]), [read_file], guard_repeats=False).run("read twice")
    assert READS == ["notes.txt", "notes.txt"] and result.rounds[1].tool_results[0].status == "ok"
    assert result.rounds[1].notes == []


def test_a_repeating_model_still_ends_at_max_rounds_with_every_repeat_answered():
    backend = ScriptedBackend([READ] * 4)
    result = Agent(backend, [read_file], max_rounds=4).run("loop")
    assert result.stopped == "max_rounds" and READS == ["notes.txt"]
    assert all(r.tool_results[0].status == "repeated" for r in result.rounds[1:])


def test_a_call_cut_off_by_the_budget_is_fed_back_and_the_loop_goes_on(tmp_path):
    cut = CutOff('Reading.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "no')
    backend = ScriptedBackend([cut, READ, "March 14, 2027."])
    agent = Agent(backend, [read_file], trace=tmp_path / "t.jsonl")
    result = agent.run("Deadline?")
    first = result.rounds[0].response
    assert first.finish_reason == "length" and first.message.tool_calls == []
    assert result.rounds[0].tool_results == [] and READS == ["notes.txt"]
    fed = backend.requests[1]["messages"][-1]
    assert fed["role"] == "user" and "token limit" in fed["content"] and "shorter" in fed["content"]
    assert result.stopped == "answer" and result.answer == "March 14, 2027."
    agent.close()
    assert read_trace(tmp_path / "t.jsonl")[0].finish_reason == "length"


def test_repeated_is_a_tool_status():
    from typing import get_args

    from agentspark.agent.loop import REPEATED
    from agentspark.tools import ToolStatus

    assert REPEATED == "repeated" and REPEATED in get_args(ToolStatus)


def test_trace_show_displays_repeats_stop_reasons_and_guard_notes(tmp_path, capsys):
    from agentspark.cli import main

    path = tmp_path / "t.jsonl"
    agent = Agent(ScriptedBackend([READ, READ, "", "March 14, 2027.", "", ""]), [read_file], trace=path)
    assert agent.run("Deadline in notes.txt?").stopped == "answer"
    assert agent.run("And again?").stopped == "empty_answer"
    agent.close()
    assert main(["trace", "show", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if "session" in line and "round" in line)
    assert "stopped" in header
    row = {int(line.split("│")[2]): line for line in lines if line.startswith("│") and line.split("│")[2].strip().isdigit()}
    assert "read_file ✓" in row[0] and "read_file ↻ repeated" in row[1] and "✗" not in row[1]
    assert "answer" in row[3] and "empty_answer" in row[5]
    assert all("answer" not in row[i] for i in (0, 1, 2, 4))
    footer = next(line for line in lines if "total" in line)
    assert "2 calls, 1 repeated" in footer and "2 turns" in footer
    notes = lines[lines.index(next(line for line in lines if line.startswith("guard notes:"))) + 1:]
    assert notes[0].startswith('round 1: repeat: call_0 read_file {"path":"notes.txt"} was already made')
    assert notes[1].startswith("round 2: empty answer: asked the model once more")
    assert notes[2].startswith("round 4: empty answer: asked the model once more")
    assert notes[3].startswith("round 5: empty answer again after the nudge")
