"""Forced tool calls (tool_choice a tool's name) on the agent loop's default local path and in the
demo go through the tool-call grammar, not a text prefix; rounds recorded on the older text path
(their trace's ``forced_prefix`` / ``forced_suffix``) are still replayed and rebuilt on it.

A fake engine (one character = one token, the text it is told to write) records what it was
asked to run, so each test sees the prepared request itself. No model: milliseconds."""

from __future__ import annotations

import pytest

from agentspark.agent.loop import Agent
from agentspark.audit import rebuilt_round
from agentspark.backends.local import CLOSE_FORCED_CALL, LocalBackend
from agentspark.commands.demo import TASKS, constraint_text, demo_backends
from agentspark.engine import GenerationResult, StreamChunk
from agentspark.sampling import SamplingParams
from agentspark.stats import RequestStats
from agentspark.tools import ToolRegistry, calculator, make_file_tools
from agentspark.traces import prompt_hash, read_trace
from agentspark.traces.replay import forced_by, replay

from char_tokenizer import CharTokenizer

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'


class RecordingEngine:
    """Writes its texts in turn (cut at a stop string), keeping every (prompt ids, params) it ran."""

    drafter = None

    def __init__(self, *texts: str) -> None:
        self.texts, self.tokenizer, self.runs = list(texts), CharTokenizer(), []

    def reset(self) -> None:
        pass

    def stream(self, prompt_ids, params, *, speculative=False, reuse_cache=False):
        self.runs.append((list(prompt_ids), params))
        text = self.texts.pop(0)
        cut = min([i for i in (text.find(s) for s in params.stop) if i >= 0], default=len(text))
        text = text[:cut]
        ids = self.tokenizer.encode(text)
        stats = RequestStats(prompt_tokens=len(prompt_ids), new_tokens=len(ids), finish_reason="stop")
        yield StreamChunk(delta=text, token_ids=ids, result=GenerationResult(text, ids, list(prompt_ids), stats))


def forced_session(backend: LocalBackend, trace) -> Agent:  # noqa: ANN001
    """A forced calculator call, its result fed back, an answer."""
    agent = Agent(backend, [calculator], trace=trace, max_rounds=2, sampling=SamplingParams(max_new_tokens=128))
    result = agent.run("What is 6*7?", tool_choice="calculator")
    agent.close()
    assert [r.tool_results[0].content for r in result.rounds[:1]] == ["42"] and result.answer == "42."
    return agent


def test_the_agent_loops_default_local_backend_forces_a_call_through_the_grammar(tmp_path):
    engine = RecordingEngine(CALL, "42.")
    forced_session(LocalBackend(engine), tmp_path / "t.jsonl")
    (prompt, params), (_, answer_params) = engine.runs
    assert params.grammar is not None and params.grammar.kind == "lark" and '"const": "calculator"' in params.grammar.source
    assert answer_params.grammar is None  # the forced choice covered the first round only
    unforced = LocalBackend(RecordingEngine()).prepare([{"role": "user", "content": "What is 6*7?"}],
                                                       ToolRegistry([calculator]).openai_schemas(), None, "auto")
    assert prompt == unforced.prompt_ids  # no call opening appended to the prompt
    first = read_trace(tmp_path / "t.jsonl")[0]
    assert first.request.sampling["forced_prefix"] == "" and first.request.sampling["forced_suffix"] == ""
    assert first.tool_calls[0].name == "calculator" and first.tool_calls[0].status == "ok"


@pytest.mark.parametrize("task,choice", [t for t in TASKS if t[1] != "auto"])
def test_the_demos_backends_both_constrain_its_forced_calls(task, choice, tmp_path):
    """Speculative and plain alike (the demo's audit compares them under the same grammar)."""
    schemas = ToolRegistry([calculator, *make_file_tools(tmp_path)]).openai_schemas()
    messages = [{"role": "user", "content": task}]
    for backend in demo_backends(RecordingEngine(), RecordingEngine()):
        prepared = backend.prepare(messages, schemas, SamplingParams(max_new_tokens=64), choice)
        assert prepared.prefix == "" and prepared.suffix == "" and prepared.params.grammar is not None
        assert prepared.prompt_ids == backend.prepare(messages, schemas, None, "auto").prompt_ids
        assert f'"const": "{choice}"' in prepared.params.grammar.source
    assert constraint_text("read_file", schemas) == (
        "the grammar allows only the call read_file(path: string, max_bytes?: integer) and closes it")


def test_a_trace_recorded_on_the_text_path_is_replayed_and_rebuilt_on_it(tmp_path):
    recorder = RecordingEngine('6*7"}}', "42.")  # the text path: the model writes the value only
    forced_session(LocalBackend(recorder, constrain_tool_calls=False, close_forced_calls=True), tmp_path / "old.jsonl")
    rounds = read_trace(tmp_path / "old.jsonl")
    prefix = rounds[0].request.sampling["forced_prefix"]
    assert prefix.endswith('"expression": "') and rounds[0].request.sampling["forced_suffix"] == CLOSE_FORCED_CALL
    assert forced_by(rounds[0].request) == {"constrain_tool_call": False, "close_forced_call": True}

    # replayed on a default (grammar) backend: the recorded prefix, stop and closing again
    engine = RecordingEngine('6*7"}}', "42.")
    [first, _] = replay(rounds, LocalBackend(engine))
    (prompt, params), _ = engine.runs
    assert params.grammar is None and '"' in params.stop and bytes(prompt).decode().endswith(prefix)
    assert first.response["tool_calls"][0]["function"]["arguments"] == {"expression": "6*7"}

    # rebuilt for an audit: the very prompt the session sent (its hash) and its closing stop
    ids, params, _ = rebuilt_round(LocalBackend(RecordingEngine(), reuse_cache=False), rounds[0])
    assert prompt_hash(ids) == rounds[0].request.prompt_hash and params.grammar is None and '"' in params.stop


def test_a_trace_recorded_on_the_grammar_path_is_rebuilt_with_the_grammar(tmp_path):
    forced_session(LocalBackend(RecordingEngine(CALL, "42.")), tmp_path / "t.jsonl")
    rounds = read_trace(tmp_path / "t.jsonl")
    assert forced_by(rounds[0].request) == {"constrain_tool_call": True, "close_forced_call": False}
    # even on a backend set to the text path, as the recording's backend forced it
    backend = LocalBackend(RecordingEngine(), reuse_cache=False, constrain_tool_calls=False)
    ids, params, _ = rebuilt_round(backend, rounds[0])
    assert prompt_hash(ids) == rounds[0].request.prompt_hash and params.grammar is not None
