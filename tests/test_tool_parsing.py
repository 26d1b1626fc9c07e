"""parse_tool_calls: the call syntaxes (whole-message JSON, tags), JSON in prose as text, cut-off replies, invalid calls, content, IDs, speed, never raising."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentspark.agent import parsing
from agentspark.agent.parsing import (
    InvalidToolCall,
    ParsedMessage,
    ParsedToolCall,
    parse_tool_calls,
)


def calls(msg: ParsedMessage) -> list[tuple[str, str, dict]]:
    return [(c.id, c.name, c.args) for c in msg.tool_calls]


# --------------------------------------------------------------------------------------------
# data classes


def test_dataclasses_are_frozen_and_shaped():
    call = ParsedToolCall(id="call_0", name="f", args={"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.name = "g"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(ParsedToolCall)] == ["id", "name", "args"]
    assert [f.name for f in dataclasses.fields(InvalidToolCall)] == ["raw", "error"]
    assert [f.name for f in dataclasses.fields(ParsedMessage)] == ["content", "tool_calls", "invalid_tool_calls"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ParsedMessage("x", [], []).content = "y"  # type: ignore[misc]


def test_plain_text_has_no_calls():
    msg = parse_tool_calls("  The capital of France is Paris.\n")
    assert msg == ParsedMessage(content="The capital of France is Paris.", tool_calls=[], invalid_tool_calls=[])


# --------------------------------------------------------------------------------------------
# a. <tool_call> tags


def test_hermes_single_call_with_text_around():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>\nOne moment.'
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "get_weather", {"city": "Paris", "days": 3})]
    assert msg.content == "Let me check.\n\nOne moment."
    assert msg.invalid_tool_calls == []


def test_hermes_several_calls_keys_and_ids_in_order():
    text = (
        '<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "parameters": {"y": [1, 2]}}\n</tool_call>\n'
        '<tool_call>\n{"name": "c", "args": {"z": null}}\n</tool_call>\n'
        '<tool_call>\n{"name": "d", "arguments": "{\\"q\\": \\"caf\\u00e9\\"}"}\n</tool_call>'
    )
    msg = parse_tool_calls(text, id_prefix="tc-")
    assert calls(msg) == [
        ("tc-0", "a", {"x": 1}),
        ("tc-1", "b", {"y": [1, 2]}),
        ("tc-2", "c", {"z": None}),
        ("tc-3", "d", {"q": "café"}),
    ]
    assert msg.content == ""
    assert parse_tool_calls(text) == parse_tool_calls(text)  # deterministic


def test_hermes_no_arguments_means_empty_args():
    msg = parse_tool_calls('<tool_call>{"name": "now"}</tool_call><tool_call>{"name": "later", "arguments": null}</tool_call>')
    assert calls(msg) == [("call_0", "now", {}), ("call_1", "later", {})]


def test_hermes_unclosed_final_tag_with_complete_json_is_parsed():
    text = 'Calling.\n<tool_call>\n{"name": "search", "arguments": {"q": "llama"}}\n'
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "search", {"q": "llama"})]
    assert msg.content == "Calling."
    assert msg.invalid_tool_calls == []


def test_hermes_unclosed_final_tag_with_incomplete_json_is_invalid():
    text = 'ok <tool_call>\n{"name": "search", "arguments": {"q": "lla'
    msg = parse_tool_calls(text)
    assert msg.tool_calls == []
    assert msg.content == "ok"
    [bad] = msg.invalid_tool_calls
    assert bad.raw == '<tool_call>\n{"name": "search", "arguments": {"q": "lla'
    assert bad.error.startswith("the message ended inside the <tool_call> block and its JSON is incomplete")
    assert '"arguments"' in bad.error


def test_hermes_malformed_json_is_invalid_with_position():
    text = '<tool_call>\n{"name": "f" "arguments": {}}\n</tool_call>'
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.content == ""
    assert msg.invalid_tool_calls == [
        InvalidToolCall(
            raw=text,
            error='tool call JSON is malformed: Expecting \',\' delimiter at char 13; '
            'emit {"name": "<function-name>", "arguments": {...}} inside <tool_call></tool_call>',
        )
    ]


@pytest.mark.parametrize(
    ("body", "error_start"),
    [
        ('{"arguments": {"a": 1}}', 'the tool call has no "name"'),
        ('{"name": 7, "arguments": {}}', 'the tool call "name" must be a string, got a number'),
        ('{"name": "  ", "arguments": {}}', 'the tool call "name" is empty'),
        ('{"name": "f", "arguments": [1, 2]}', "\"arguments\" of 'f' must be a JSON object, got an array"),
        ('{"name": "f", "parameters": 3}', "\"parameters\" of 'f' must be a JSON object, got a number"),
        ('{"name": "f", "arguments": "{oops"}', "\"arguments\" of 'f' is a string that is not valid JSON"),
        ('{"name": "f", "arguments": "[1]"}', "\"arguments\" of 'f' must be a JSON object, got a string holding an array"),
        ('"just a string"', "a tool call must be a JSON object, got a string"),
        ("", "the <tool_call> block is empty"),
    ],
)
def test_hermes_invalid_calls_say_what_is_wrong(body, error_start):
    text = f"Before <tool_call>\n{body}\n</tool_call> after"
    msg = parse_tool_calls(text)
    assert msg.tool_calls == []
    assert msg.content == "Before  after"
    [bad] = msg.invalid_tool_calls
    assert bad.raw == f"<tool_call>\n{body}\n</tool_call>"
    assert bad.error.startswith(error_start), bad.error
    assert bad.error.endswith('emit {"name": "<function-name>", "arguments": {...}} inside <tool_call></tool_call>') or "block is empty" in bad.error


def test_hermes_valid_and_invalid_mixed_ids_count_valid_calls_only():
    text = (
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": 5}</tool_call>'
        '<tool_call>{"name": "c", "arguments": {"k": "v"}}</tool_call>'
    )
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "a", {}), ("call_1", "c", {"k": "v"})]
    assert [b.raw for b in msg.invalid_tool_calls] == ['<tool_call>{"name": "b", "arguments": 5}</tool_call>']


def test_hermes_tag_without_close_before_next_tag():
    text = '<tool_call>{"name": "a", "arguments": {}}\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert calls(parse_tool_calls(text)) == [("call_0", "a", {}), ("call_1", "b", {})]


def test_hermes_lenient_bits_fence_inside_tag_list_and_extra_brace():
    text = (
        '<tool_call>\n```json\n{"name": "a", "arguments": {"x": 1}}\n```\n</tool_call>'
        '<tool_call>[{"name": "b", "arguments": {}}, {"name": "c", "arguments": {}}]</tool_call>'
        '<tool_call>{"name": "d", "arguments": {"y": 2}}}</tool_call>'
    )
    assert calls(parse_tool_calls(text)) == [
        ("call_0", "a", {"x": 1}),
        ("call_1", "b", {}),
        ("call_2", "c", {}),
        ("call_3", "d", {"y": 2}),
    ]


def test_hermes_text_after_json_inside_tag_is_invalid():
    msg = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}} thanks</tool_call>')
    assert msg.tool_calls == []
    [bad] = msg.invalid_tool_calls
    assert bad.error.startswith("unexpected text after the tool call JSON: 'thanks'")


def test_hermes_tags_take_priority_over_other_formats():
    text = 'Example: {"name": "x", "arguments": {}}\n<tool_call>{"name": "real", "arguments": {}}</tool_call>'
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "real", {})]
    assert msg.content == 'Example: {"name": "x", "arguments": {}}'


def test_hermes_openai_wrapper_inside_tag():
    text = '<tool_call>{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}</tool_call>'
    assert calls(parse_tool_calls(text)) == [("call_0", "f", {"a": 1})]


def test_arguments_with_braces_and_tags_inside_strings():
    args = {"code": "if (x) { return '</tool_call>'; }", "note": 'say "hi" \\ bye'}
    text = "<tool_call>\n" + json.dumps({"name": "run", "arguments": args}) + "\n</tool_call>"
    # a closing tag inside a JSON string ends the block early: that is what the text says
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1
    args = {"code": "if (x) { return 1; }", "note": 'say "hi" \\ bye'}
    text = "<tool_call>\n" + json.dumps({"name": "run", "arguments": args}) + "\n</tool_call>"
    assert calls(parse_tool_calls(text)) == [("call_0", "run", args)]


# --------------------------------------------------------------------------------------------
# b. fenced JSON: a call when the fence is the whole message


def test_fenced_json_object_that_is_the_whole_message():
    text = '\n```json\n{"name": "search", "arguments": {"q": "a ``` b"}}\n```\n'
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "search", {"q": "a ``` b"})]
    assert msg.content == "" and msg.invalid_tool_calls == []


def test_fenced_call_with_prose_around_is_text():
    for text in (
        'I will search.\n```json\n{"name": "search", "arguments": {"q": "x"}}\n```\nDone.',
        'Sure:\n```json\n{"name": "a", "arguments": {"x": 1}}\n',
        '```json\n{"name": "a", "arguments": {"x": 1}}\n```\nThat is how you would call it.',
    ):
        msg = parse_tool_calls(text)
        assert msg.tool_calls == [] and msg.invalid_tool_calls == [], text
        assert msg.content == text.strip()


def test_fenced_plain_list_of_calls():
    text = '```\n[{"name": "a", "parameters": {"x": 1}}, {"name": "b", "args": {}}]\n```'
    msg = parse_tool_calls(text)
    assert calls(msg) == [("call_0", "a", {"x": 1}), ("call_1", "b", {})]
    assert msg.content == ""


@pytest.mark.parametrize("end", ["", "\n", "\n`", "\n``", "\n```", "```"])
def test_fenced_unclosed_or_half_closed_at_end(end):
    msg = parse_tool_calls('```json\n{"name": "a", "arguments": {"x": 1}}' + end)
    assert calls(msg) == [("call_0", "a", {"x": 1})]
    assert msg.content == ""


def test_two_fenced_calls_are_text():
    block = '```json\n{"name": "a", "arguments": {"x": %d}}\n```'
    text = block % 1 + "\n" + block % 2
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.content == text


def test_fenced_invalid_arguments_reported():
    text = '```json\n{"name": "a", "arguments": "not json"}\n```'
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.content == ""
    [bad] = msg.invalid_tool_calls
    assert bad.raw == text
    assert bad.error.startswith("\"arguments\" of 'a' is a string that is not valid JSON (Expecting value at char 0)")


def test_fenced_non_call_json_and_other_languages_stay_content():
    text = (
        'Config:\n```json\n{"name": "my-app", "version": "1.0"}\n```\n'
        'Code:\n```python\ncall = {"name": "f", "arguments": {}}\n```'
    )
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.invalid_tool_calls == []
    assert msg.content == text
    python = '```python\n{"name": "f", "arguments": {}}\n```'
    assert parse_tool_calls(python) == ParsedMessage(python, [], [])


# --------------------------------------------------------------------------------------------
# c. bare JSON: a call when it is the whole message; in prose it is text


def test_bare_whole_message_object():
    msg = parse_tool_calls('  {"name": "get_time", "arguments": {"tz": "UTC"}}  ')
    assert calls(msg) == [("call_0", "get_time", {"tz": "UTC"})]
    assert msg.content == ""


def test_bare_whole_message_list():
    msg = parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"n": 2}}]')
    assert calls(msg) == [("call_0", "a", {}), ("call_1", "b", {"n": 2})]


def test_whole_message_json_may_hold_tags_and_fences_in_strings():
    args = {"text": "<tool_call> and ```json\n{}\n``` are just text here"}
    msg = parse_tool_calls(json.dumps({"name": "write", "arguments": args}))
    assert calls(msg) == [("call_0", "write", args)]
    assert msg.content == "" and msg.invalid_tool_calls == []
    fenced = "```json\n" + json.dumps({"name": "write", "arguments": args}) + "\n```"
    assert calls(parse_tool_calls(fenced)) == [("call_0", "write", args)]


@pytest.mark.parametrize(
    "text",
    [
        'First {"name": "a", "arguments": {"s": "x} { \\" y"}} then {"name": "b", "parameters": {}} end.',
        'Use { to open and a lone " quote.\nNow {"name": "f", "arguments": {"k": 1}}',
        'Calls:\n[\n  {"name": "a", "arguments": {"p": "C:\\\\dir"}},\n  {"name": "b", "arguments": {}}\n]\nDone \\ [',
        'I called {"name": "read_file", "arguments": {"path": "a.txt"}} before.',
        '{"name": "f", "arguments": {}} is the call I made.',
        'Calling {"name": ["f"], "arguments": {}} now',
        '```python\nx = {"name": "f", "arguments": {}}\n```\nAnd {"name": "g", "arguments": {"a": 1}}',
    ],
)
def test_json_in_prose_is_text(text):
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.invalid_tool_calls == []
    assert msg.content == text.strip()


def test_an_echoed_tools_list_and_call_examples_run_nothing():
    """The issue's reply: a model echoing its schemas and its earlier calls got 6-7 calls run."""
    schema = {"type": "function", "function": {"name": "read_file", "description": "Read a file.",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}
    call = {"name": "read_file", "arguments": {"path": "notes.txt"}}
    text = ("You gave me these tools:\n" + "\n".join([json.dumps(schema)] * 3) + "\nI already called "
            + ", ".join([json.dumps(call)] * 4) + ".\nThe deadline is March 14.")
    msg = parse_tool_calls(text)
    assert msg.tool_calls == [] and msg.invalid_tool_calls == [] and msg.content == text


def test_a_tool_definition_is_no_call():
    schema = {"type": "function", "function": {"name": "f", "description": "d",
              "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    for text in (json.dumps(schema), json.dumps(schema["function"]), "```json\n" + json.dumps([schema]) + "\n```"):
        assert parse_tool_calls(text) == ParsedMessage(text, [], []), text
    msg = parse_tool_calls("<tool_call>" + json.dumps(schema) + "</tool_call>")
    [bad] = msg.invalid_tool_calls
    assert msg.tool_calls == [] and bad.error.startswith("this is the definition of the tool 'f'")
    # a call whose arguments happen to use the word "type" is still a call
    assert calls(parse_tool_calls('{"name": "f", "parameters": {"type": "object"}}')) == [("call_0", "f", {"type": "object"})]


def test_bare_ordinary_json_stays_content():
    for text in (
        'The user is {"name": "Alice", "age": 30}.',
        '{"name": "Alice", "age": 30}',
        'Result: {"status": "ok", "items": [1, 2]}',
        'Nested data {"user": {"name": "f", "arguments": {}}} is data, not a call.',
        "A set {1, 2} and {name: f}",
    ):
        msg = parse_tool_calls(text)
        assert msg.tool_calls == [] and msg.invalid_tool_calls == [], text
        assert msg.content == text.strip()


def test_bare_call_like_object_with_bad_name_is_invalid():
    msg = parse_tool_calls('{"name": ["f"], "arguments": {}}')
    assert msg.tool_calls == []
    assert msg.content == ""
    [bad] = msg.invalid_tool_calls
    assert bad.raw == '{"name": ["f"], "arguments": {}}'
    assert bad.error.startswith('the tool call "name" must be a string, got an array; emit {"name"')


# --------------------------------------------------------------------------------------------
# d. a message the token budget cut (cut_off=True)


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "calculator", "arguments": {"expression": "1234 * 56',
        '  {"name": "calculator", "argu',
        '{"na',
        "{",
        '[{"name": "a", "arguments": {}}, {"name": "b"',
        '```json\n{"name": "read_file", "arguments": {"path": "no',
        '{"type": "function", "function": {"name": "f", "arguments": {"x": [1, 2',
    ],
)
def test_a_whole_message_call_cut_off_is_invalid_not_content(text):
    msg = parse_tool_calls(text, cut_off=True)
    assert msg.tool_calls == [] and msg.content == ""
    [bad] = msg.invalid_tool_calls
    assert bad.raw == text.strip()
    assert bad.error.startswith("the reply reached the token limit before this tool call's JSON was complete")
    assert parse_tool_calls(text) == ParsedMessage(text.strip(), [], [])  # not cut off: it is text, as before


def test_a_tag_call_cut_off_says_the_token_limit_cut_it():
    text = 'Let me read it.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "notes'
    msg = parse_tool_calls(text, cut_off=True)
    assert msg.tool_calls == [] and msg.content == "Let me read it."
    [bad] = msg.invalid_tool_calls
    assert bad.error.startswith("the reply reached the token limit inside the <tool_call> block before its JSON was complete")
    assert "shorter" in bad.error


@pytest.mark.parametrize("close", ["", "\n<", "\n</tool", "\n</tool_call"])
def test_a_complete_tag_call_cut_while_closing_is_a_call(close):
    text = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}' + close
    for cut_off in (True, False):
        msg = parse_tool_calls(text, cut_off=cut_off)
        assert calls(msg) == [("call_0", "f", {"x": 1})] and msg.invalid_tool_calls == []


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": "The deadline is Ma',  # JSON data, not a call
        'The call would be {"name": "f", "arguments": {"x": "ab',  # prose first: text
        '```python\n{"name": "f", "arguments": {',  # not a JSON fence
        '{"name": "f" "arguments": {}, "x": "',  # broken before the end: not cut by the budget
    ],
)
def test_cut_off_text_that_is_no_call_stays_content(text):
    assert parse_tool_calls(text, cut_off=True) == ParsedMessage(text.strip(), [], [])


def test_a_complete_call_in_a_cut_off_message_is_a_call():
    assert calls(parse_tool_calls('{"name": "f", "arguments": {}}', cut_off=True)) == [("call_0", "f", {})]
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"q'
    msg = parse_tool_calls(text, cut_off=True)
    assert calls(msg) == [("call_0", "a", {})] and len(msg.invalid_tool_calls) == 1


# --------------------------------------------------------------------------------------------
# robustness


def test_non_string_input_does_not_raise():
    assert parse_tool_calls(None) == ParsedMessage("", [], [])  # type: ignore[arg-type]
    assert parse_tool_calls(12) == ParsedMessage("12", [], [])  # type: ignore[arg-type]


PATHOLOGICAL = {
    "open braces": "{" * 100_000,
    "open brackets in tag": "<tool_call>" + "[" * 100_000,
    "deep balanced": '{"name": "f", "arguments": ' * 10_000 + "{}" + "}" * 10_000,
    "open tags": "<tool_call>" * 9_000,
    "close tags": "</tool_call>" * 9_000,
    "fences": "```json\n{" * 12_000,
    "fence one line": '```{"a":"' * 12_000,
    "names": '{"name": ' * 12_000,
    "quotes and escapes": '"\\' * 50_000,
    "name args soup": '{"name": "f", "arguments": {"a": "' * 3_000,
    "huge number": '<tool_call>{"name": "f", "arguments": {"n": ' + "9" * 99_000 + "}}</tool_call>",
    "brace pairs": '{"name"}' * 12_000,
}


def best_time(fn, repeats: int = 3):
    """The fastest of a few runs (the CPU is shared), and the result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
        if best < 0.1:
            break
    return best, out


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_100kb_inputs_are_fast(name):
    text = PATHOLOGICAL[name]
    assert len(text) >= 90_000
    for cut_off in (False, True):
        seconds, msg = best_time(lambda: parsing._parse(text, "call_", cut_off))  # without the last-resort guard
        assert seconds < 0.5, (name, cut_off)
        assert isinstance(msg, ParsedMessage)


def test_many_calls_in_100kb_are_fast_and_all_found():
    block = '<tool_call>\n{"name": "tool_%d", "arguments": {"i": %d, "s": "abc {x} \\"y\\""}}\n</tool_call>\nok\n'
    text = "".join(block % (i, i) for i in range(1200))
    assert len(text) > 100_000
    seconds, msg = best_time(lambda: parse_tool_calls(text))
    assert seconds < 0.5
    assert len(msg.tool_calls) == 1200 and msg.invalid_tool_calls == []
    assert msg.tool_calls[777] == ParsedToolCall("call_777", "tool_777", {"i": 777, "s": 'abc {x} "y"'})


def test_bare_prose_100kb_with_call_examples_is_fast_and_text():
    chunk = 'Some prose with {braces} and "quotes" here. {"name": "f", "arguments": {"k": [1, {"a": "}"}]}} '
    text = chunk * (100_000 // len(chunk) + 1)
    for cut_off in (False, True):
        seconds, msg = best_time(lambda: parse_tool_calls(text, cut_off=cut_off))
        assert seconds < 0.5
        assert msg.tool_calls == [] and msg.invalid_tool_calls == [] and msg.content == text.strip()


FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<tool_call>\n", "\n</tool_call>", "{", "}", "[", "]", "```json\n", "```", "\n```",
    '"name"', '"arguments"', '"parameters"', '"args"', ":", ",", '"', "\\", '\\"', "\\u00e9", '"f"', "null", "1",
    '"{}"', '"{\\"a\\": 1}"', "é", "→", "😀", "\n", " ", "text", '{"name": "f", "arguments": {}}', '"type"', '"function"',
]


def assert_well_typed(msg, text: str, prefix: str = "call_") -> None:
    assert isinstance(msg, ParsedMessage)
    assert isinstance(msg.content, str)
    assert len(msg.content) <= len(text)
    assert isinstance(msg.tool_calls, list) and isinstance(msg.invalid_tool_calls, list)
    for i, call in enumerate(msg.tool_calls):
        assert isinstance(call, ParsedToolCall)
        assert call.id == f"{prefix}{i}"
        assert isinstance(call.name, str) and call.name.strip()
        assert isinstance(call.args, dict) and all(isinstance(k, str) for k in call.args)
    for bad in msg.invalid_tool_calls:
        assert isinstance(bad, InvalidToolCall)
        assert isinstance(bad.raw, str) and isinstance(bad.error, str) and bad.error


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    for cut_off in (False, True):
        assert_well_typed(parsing._parse(text, "call_", cut_off), text)
        assert_well_typed(parse_tool_calls(text, cut_off=cut_off), text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=40).map("".join), st.text(max_size=3))
def test_never_raises_on_tool_call_fragments(text, prefix):
    for cut_off in (False, True):
        assert_well_typed(parsing._parse(text, prefix, cut_off), text, prefix)
        assert_well_typed(parse_tool_calls(text, id_prefix=prefix, cut_off=cut_off), text, prefix)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
ARGS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
# A name holding the Hermes markup itself would turn the text into the tag format (ambiguous by design).
NAMES = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "<tool_call>" not in s and "</tool_call>" not in s)
PROSE = st.text(max_size=30).filter(lambda s: "<tool_call>" not in s and "</tool_call>" not in s)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3), PROSE, PROSE, st.booleans())
def test_rendered_tag_calls_round_trip(pairs, before, after, ascii_only):
    bodies = [json.dumps({"name": n, "arguments": a}, ensure_ascii=ascii_only) for n, a in pairs]
    assume(not any("<tool_call>" in b or "</tool_call>" in b for b in bodies))  # a tag in a string is a tag
    blocks = "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in bodies)
    msg = parse_tool_calls(before + blocks + after)
    assert [(c.name, c.args) for c in msg.tool_calls] == pairs
    assert [c.id for c in msg.tool_calls] == [f"call_{i}" for i in range(len(pairs))]
    assert msg.invalid_tool_calls == []
    assert msg.content == (before + after).strip()


WHITESPACE = st.text(" \t\n", max_size=3)


@settings(max_examples=300, deadline=None)
@given(NAMES, ARGS, st.sampled_from(["arguments", "parameters", "args"]), st.booleans(), WHITESPACE, WHITESPACE,
       st.booleans())
def test_bare_and_fenced_calls_round_trip(name, args, key, fenced, before, after, cut_off):
    """A call that is the whole message, bare or alone in one fence, is a call (cut off or not)."""
    assume(not (key == "parameters" and args.get("type") == "object"))  # reads as a tool's definition
    body = json.dumps({"name": name, key: args})
    text = before + (f"```json\n{body}\n```" if fenced else body) + after
    msg = parse_tool_calls(text, cut_off=cut_off)
    assert [(c.id, c.name, c.args) for c in msg.tool_calls] == [("call_0", name, args)]
    assert msg.content == "" and msg.invalid_tool_calls == []


# Prose with a word in it and no markup of its own (no tags, no fences).
WORDS = PROSE.filter(lambda s: "`" not in s and any(c.isalnum() for c in s))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=4), WORDS, WORDS,
       st.sampled_from(["before", "after", "both", "between"]), st.booleans(), st.booleans())
def test_calls_inside_prose_are_text(pairs, before, after, where, fenced, cut_off):
    """JSON calls (bare, or fenced) with prose around them run nothing, however many there are."""
    bodies = [json.dumps({"name": n, "arguments": a}) for n, a in pairs]
    blocks = [f"```json\n{b}\n```" if fenced else b for b in bodies]
    if where == "between":
        assume(len(blocks) > 1)
        text = f"\n{before}\n".join(blocks)
    else:
        text = (before if where != "after" else "") + "\n".join(blocks) + (after if where != "before" else "")
    msg = parse_tool_calls(text, cut_off=cut_off)
    assert msg.tool_calls == [] and msg.invalid_tool_calls == []
    assert msg.content == text.strip()


@settings(max_examples=300, deadline=None)
@given(NAMES, ARGS, st.sampled_from(["bare", "fenced", "tag"]), st.booleans(), st.data())
def test_a_call_cut_inside_its_json_is_never_a_call(name, args, form, ascii_only, data):
    """Wherever the budget cuts a call's JSON, the fragment is one invalid call, never a call or content."""
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=ascii_only)
    assume("<tool_call>" not in body and "</tool_call>" not in body)  # a tag in a string is a tag (by design)
    opening = {"bare": "", "fenced": "```json\n", "tag": "Checking.\n<tool_call>\n"}[form]
    cut = data.draw(st.integers(1, len(body) - 1), label="cut")
    msg = parse_tool_calls(opening + body[:cut], cut_off=True)
    assert msg.tool_calls == []
    [bad] = msg.invalid_tool_calls
    assert "token limit" in bad.error, bad.error
    assert msg.content == ("Checking." if form == "tag" else "")
    # the whole JSON, with or without the rest of its markup, is the call
    whole = parse_tool_calls(opening + body, cut_off=True)
    assert [(c.name, c.args) for c in whole.tool_calls] == [(name, args)]
