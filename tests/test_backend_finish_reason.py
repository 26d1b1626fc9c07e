"""finish_reason and the message of a reply the token budget cut: "length" whenever the budget
cut it, the fragment of a call it was writing in invalid_tool_calls, never "tool_calls" for a
truncated call. LocalBackend over a fake engine (one character = one token, exact budgets), and
the scripted backend's CutOff."""

from __future__ import annotations

import pytest

from agentspark.backends.base import AssistantMessage, ToolCallRequest, finish_reason
from agentspark.backends.local import CLOSE_FORCED_CALL, LocalBackend
from agentspark.backends.scripted import CutOff, ScriptedBackend
from agentspark.engine import GenerationResult, StreamChunk
from agentspark.sampling import SamplingParams
from agentspark.stats import RequestStats

from char_tokenizer import CharTokenizer

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
CALL = '<tool_call>\n{"name": "read_file", "arguments": {"path": "notes.txt"}}\n</tool_call>'


class FakeEngine:
    """Writes ``text`` one character per token: a stop string ends it ("stop"), and so does its
    end ("stop"); the budget cuts it ("length")."""

    drafter = None

    def __init__(self, text: str) -> None:
        self.text, self.tokenizer = text, CharTokenizer()

    def reset(self) -> None:
        pass

    def stream(self, prompt_ids, params, *, speculative=False, reuse_cache=False):
        text, reason = self.text, "stop"
        stops = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        if stops:
            text = text[: min(stops)]
        if len(text) > params.max_new_tokens:
            text, reason = text[: params.max_new_tokens], "length"
        ids = [ord(c) % 256 for c in text]
        stats = RequestStats(prompt_tokens=len(prompt_ids), new_tokens=len(ids), finish_reason=reason)
        yield StreamChunk(delta=text, token_ids=ids, result=GenerationResult(text, ids, list(prompt_ids), stats))


def reply(text: str, budget: int, tool_choice: str = "auto", *, close: bool = False):
    # the text path for forced calls (serve --tool-calls forced): the fake engine knows no grammar
    backend = LocalBackend(FakeEngine(text), close_forced_calls=close, constrain_tool_calls=False)
    chunks = list(backend.stream([{"role": "user", "content": "read notes.txt"}], TOOLS,
                                 SamplingParams(max_new_tokens=budget), tool_choice))
    response = chunks[-1].response
    assert "".join(c.delta for c in chunks) == response.message.raw_text  # what streamed is the reply
    return response


@pytest.mark.parametrize(
    "text",
    [
        "Let me read it.\n" + CALL,  # a tag call
        '{"name": "read_file", "arguments": {"path": "notes.txt"}}',  # a whole-reply JSON call
        '```json\n{"name": "read_file", "arguments": {"path": "notes.txt"}}\n```',  # a fenced call
    ],
)
def test_a_call_cut_by_the_budget_is_length_with_the_fragment_in_invalid_tool_calls(text):
    cut_at = text.index("notes.txt") + 3  # inside the argument's value
    r = reply(text, cut_at)
    assert r.finish_reason == "length"
    assert r.message.tool_calls == []
    [bad] = r.message.invalid_tool_calls
    assert "token limit" in bad.error and bad.raw.endswith('"not')
    assert "notes" not in r.message.content  # no fragment left in the content
    assert r.message.content == ("Let me read it." if text.startswith("Let") else "")
    # the same reply with room to finish is a call
    whole = reply(text, len(text) + 10)
    assert whole.finish_reason == "tool_calls" and [c.args for c in whole.message.tool_calls] == [{"path": "notes.txt"}]


def test_a_complete_call_then_a_cut_is_still_length():
    text = CALL + "\nNow I will summarise the file for you in detail"
    r = reply(text, len(CALL) + 10)
    assert r.finish_reason == "length"
    assert [c.name for c in r.message.tool_calls] == ["read_file"] and r.message.invalid_tool_calls == []


def test_a_call_cut_while_closing_its_tag_is_a_call_but_length():
    r = reply(CALL, len(CALL) - 4)  # "...}}\n</tool_" : the JSON is whole
    assert r.finish_reason == "length"
    assert [c.args for c in r.message.tool_calls] == [{"path": "notes.txt"}] and r.message.invalid_tool_calls == []


def test_a_plain_answer_cut_is_length_with_its_text():
    r = reply("The deadline is March 14, 2027.", 12)
    assert r.finish_reason == "length" and r.message.content == "The deadline" and not r.message.invalid_tool_calls


def test_a_forced_call_whose_value_the_budget_cut_is_not_closed():
    """Closing it would invent read_file("no"): the suffix is left off and the fragment reported."""
    r = reply('notes.txt"}}', 2, "read_file", close=True)
    assert r.forced_prefix.endswith('"path": "') and r.forced_suffix == ""
    assert r.finish_reason == "length" and r.message.tool_calls == []
    [bad] = r.message.invalid_tool_calls
    assert bad.raw.endswith('"path": "no') and "token limit" in bad.error
    assert not r.message.raw_text.endswith(CLOSE_FORCED_CALL)


def test_a_forced_call_whose_value_ended_is_closed_as_before():
    r = reply('notes.txt"}}', 32, "read_file", close=True)
    assert r.forced_suffix == CLOSE_FORCED_CALL and r.finish_reason == "tool_calls"
    assert [c.args for c in r.message.tool_calls] == [{"path": "notes.txt"}]


def test_without_tools_a_cut_reply_is_all_content():
    backend = LocalBackend(FakeEngine('{"name": "read_file", "arguments": {"path": "x"}}'))
    r = backend.complete([{"role": "user", "content": "hi"}], None, SamplingParams(max_new_tokens=20))
    assert r.finish_reason == "length" and r.message.content == '{"name": "read_file"'


def test_finish_reason_rule():
    call = AssistantMessage("", tool_calls=[ToolCallRequest("call_0", "f", {})])
    assert finish_reason(call, "stop") == "tool_calls"
    assert finish_reason(call, "length") == "length"
    assert finish_reason(AssistantMessage("hi"), "stop") == "stop"
    assert finish_reason(AssistantMessage("hi"), "length") == "length"


def test_scripted_cut_off_replies_like_the_local_backend():
    text = 'Reading.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "no'
    r = ScriptedBackend([CutOff(text)]).complete([{"role": "user", "content": "x"}], TOOLS)
    assert r.finish_reason == "length" and r.message.tool_calls == [] and r.message.content == "Reading."
    assert len(r.message.invalid_tool_calls) == 1 and "token limit" in r.message.invalid_tool_calls[0].error
    done = ScriptedBackend([CutOff(CALL)]).complete([{"role": "user", "content": "x"}], TOOLS)
    assert done.finish_reason == "length" and len(done.message.tool_calls) == 1
    assert ScriptedBackend([CALL]).complete([{"role": "user", "content": "x"}], TOOLS).finish_reason == "tool_calls"
