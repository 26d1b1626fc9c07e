"""The agent loop over the scripted backend (fast, exact) and over the real default model."""

from __future__ import annotations

import time

import pytest

from agentspark.agent.loop import Agent, Finished, ModelTurn, TextDelta, ToolOutputs
from agentspark.backends.scripted import ScriptedBackend
from agentspark.tools import calculator, tool
from agentspark.traces import read_trace


@tool
def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: the city's name
    """
    return f"sunny in {city}"


@tool(timeout=0.2)
def slow() -> str:
    """Sleeps too long."""
    time.sleep(1.0)
    return "late"


def call(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def test_tool_round_then_answer_and_the_trace(tmp_path):
    backend = ScriptedBackend([call("calculator", '{"expression": "6*7"}'), "The answer is 42."])
    agent = Agent(backend, [calculator, get_weather], system="be brief", trace=tmp_path / "t.jsonl")
    result = agent.run("what is 6*7?")
    assert result.answer == "The answer is 42." and result.stopped == "answer" and len(result.rounds) == 2
    assert result.rounds[0].tool_results[0].content == "42" and result.rounds[0].tool_results[0].ok
    second_request = backend.requests[1]["messages"]
    assert second_request[-1]["role"] == "tool" and second_request[-1]["content"] == "42"
    assert second_request[-2]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": "6*7"}}
    assert [t["function"]["name"] for t in backend.requests[0]["tools"]] == ["calculator", "get_weather"]
    rounds = read_trace(tmp_path / "t.jsonl")
    assert [r.round_index for r in rounds] == [0, 1]
    assert rounds[0].tool_calls[0].name == "calculator" and rounds[0].tool_calls[0].content == "42"
    assert rounds[0].request.messages[-1] == {"role": "user", "content": "what is 6*7?"}


@pytest.mark.parametrize(
    "bad,expect",
    [
        (call("nope", "{}"), "unknown"),
        (call("calculator", '{"expression": 5}'), "expression"),
        (call("calculator", '{"expression": "__import__(1)"}'), "rror"),
        ("<tool_call>\n{\"name\": \"calculator\", \"arguments\": {oops}\n</tool_call>", "malformed"),
        (call("slow", "{}"), "timed out"),
    ],
)
def test_model_mistakes_are_fed_back_and_the_loop_goes_on(bad, expect):
    backend = ScriptedBackend([bad, "recovered"])
    result = Agent(backend, [calculator, slow]).run("go")
    assert result.answer == "recovered" and len(result.rounds) == 2
    fed_back = backend.requests[1]["messages"][-1]["content"]
    assert expect in fed_back.lower() or expect in fed_back


def test_parallel_calls_come_back_in_call_order():
    backend = ScriptedBackend([call("get_weather", '{"city": "Oslo"}') + call("get_weather", '{"city": "Rome"}'), "ok"])
    agent = Agent(backend, [get_weather])
    result = agent.run("weather?")
    assert [r.content for r in result.rounds[0].tool_results] == ["sunny in Oslo", "sunny in Rome"]
    tool_msgs = [m for m in backend.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["call_0", "call_1"]


def test_max_rounds_ends_the_loop():
    backend = ScriptedBackend([call("get_weather", '{"city": "X"}')] * 3)
    result = Agent(backend, [get_weather], max_rounds=3).run("loop forever")
    assert result.stopped == "max_rounds" and len(result.rounds) == 3


def test_stream_yields_deltas_turns_tools_and_the_result():
    backend = ScriptedBackend([call("get_weather", '{"city": "Oslo"}'), "It is sunny."])
    events = list(Agent(backend, [get_weather]).stream("weather in Oslo?"))
    kinds = [type(e) for e in events]
    assert kinds.count(ModelTurn) == 2 and kinds.count(ToolOutputs) == 1 and kinds[-1] is Finished
    text = "".join(e.text for e in events if isinstance(e, TextDelta) and e.round_index == 1)
    assert text == "It is sunny."


def test_a_session_keeps_its_messages_across_turns():
    backend = ScriptedBackend(["first answer", "second answer"])
    agent = Agent(backend, [], system="sys")
    agent.run("one")
    agent.run("two")
    roles = [m["role"] for m in backend.requests[1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]


def test_local_backend_session_on_the_real_model(default_model, tmp_path):
    """A forced calculator call, its result fed back, an answer: every round after the first
    prefills only what it appended, and speculative equals plain over the whole session. The
    default local backend forces the call through the tool-call grammar: the model writes it all."""
    from agentspark import Engine, NgramDrafter, SamplingParams
    from agentspark.backends.local import LocalBackend

    params = SamplingParams(max_new_tokens=48)  # the whole call, written under the grammar, is 35 tokens
    runs = {}
    for name, engine in (("spec", Engine(default_model, NgramDrafter(), max_draft=4, schedule="full")),
                         ("plain", Engine(default_model))):
        backend = LocalBackend(engine, speculative=name == "spec")
        agent = Agent(backend, [calculator], sampling=params, max_rounds=3, trace=tmp_path / f"{name}.jsonl")
        result = agent.run("What is 12 times 7? Use the calculator.", tool_choice="calculator")
        first = result.rounds[0]
        assert first.response.forced_prefix == "" and first.response.forced_suffix == ""
        assert first.response.message.raw_text.startswith('<tool_call>\n{"name": "calculator", "arguments": {')
        assert first.response.message.tool_calls[0].name == "calculator"
        assert first.tool_results[0].status in ("ok", "error", "invalid_arguments")
        if len(result.rounds) > 1:
            second = result.rounds[1].response
            appended = second.prompt_tokens - first.response.prompt_tokens - first.response.completion_tokens
            # At most the appended tokens plus the last reply, whose re-tokenised text can split
            # differently than it was generated; never the conversation.
            assert second.stats.prefill_tokens <= appended + first.response.completion_tokens
            assert second.stats.prefill_tokens < second.prompt_tokens / 4
        runs[name] = [(r.response.message.content, [c.args for c in r.response.message.tool_calls]) for r in result.rounds]
        trace = read_trace(tmp_path / f"{name}.jsonl")
        assert len(trace) == len(result.rounds) and trace[0].backend == backend.name
    assert runs["spec"] == runs["plain"]
