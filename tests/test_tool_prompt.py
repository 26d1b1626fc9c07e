"""tool_prompt: detecting tool-aware templates, the Hermes system prompt, and prompt token ids for
tool-aware and plain templates (a tiny character-level tokenizer, then the real default model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from agentspark.agent.parsing import parse_tool_calls
from agentspark.agent.tool_prompt import (
    apply_chat_template_with_tools,
    render_tool_calls_text,
    render_tools_system_prompt,
    template_supports_tools,
)
from agentspark.errors import InvalidRequestError

# A template in the style of SmolLM's: string concatenation, so a None content would fail.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<tools>' }}{% for t in tools %}{{ t.function.name + ';' }}{% endfor %}{{ '</tools>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "{{ '[' + (c.id or '') + ' ' + c.function.name + ' ' }}{{ c.function.arguments | tojson }}{{ ']' }}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city — today",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}}

CHARS = [chr(i) for i in range(32, 127)] + ["\n", "é", "—"]


def char_tokenizer(template: str | None):
    """A transformers fast tokenizer with one token per character (so ids decode back exactly)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tok.chat_template = template
    return tok


def chars_of(ids: list[int]) -> str:
    table = ["\ufffd", *CHARS]
    return "".join(table[i] for i in ids)


@pytest.fixture(scope="module")
def plain_tok():
    return char_tokenizer(PLAIN_TEMPLATE)


@pytest.fixture(scope="module")
def tool_tok():
    return char_tokenizer(TOOL_TEMPLATE)


@pytest.fixture(scope="module")
def smol_tok():
    from agentspark.model.loading import load_model

    return load_model("default").tokenizer


# --------------------------------------------------------------------------------------------
# template_supports_tools


def test_template_supports_tools_with_real_tokenizers(plain_tok, tool_tok):
    assert template_supports_tools(tool_tok) is True
    assert template_supports_tools(plain_tok) is False
    assert template_supports_tools(char_tokenizer(None)) is False


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{%- if tools is defined and tools %}x{% endif %}", True),
        ("{{ tools | tojson }}", True),
        ("{% for t in tools %}{{ t }}{% endfor %}", True),
        ("{%- set x = custom_tools if custom_tools is defined else tools %}", True),
        ("You are a helpful assistant with tools. {{ messages[0]['content'] }}", False),
        ("{{ 'you have no tools' }}{{ \"tools\" }}", False),
        ("{# tools are not supported #}{{ messages }}", False),
        ("{{ message.tools }}{{ tools_in_user_message }}", False),
        ("", False),
    ],
)
def test_template_supports_tools_reads_the_jinja_logic(template, expected):
    assert template_supports_tools(SimpleNamespace(chat_template=template)) is expected


def test_template_supports_tools_odd_values():
    assert template_supports_tools(SimpleNamespace(chat_template=None)) is False
    assert template_supports_tools(object()) is False
    assert template_supports_tools(SimpleNamespace(chat_template={"default": "{{ messages }}", "tool_use": "{{ tools }}"})) is True
    assert template_supports_tools(SimpleNamespace(chat_template=[{"name": "default", "template": "{{ messages }}"}])) is False


def test_smollm_template_has_no_tool_support(smol_tok):
    assert template_supports_tools(smol_tok) is False


# --------------------------------------------------------------------------------------------
# render_tools_system_prompt

EXPECTED_TOOLS_BLOCK = (
    "# Tools\n\n"
    "You may call one or more functions to help with the user's request. "
    "The functions you can call are described by the JSON signatures inside <tools></tools> tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city — today", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}}\n'
    "</tools>\n\n"
    "To call a function, reply with a JSON object holding its name and arguments inside <tool_call></tool_call> tags, "
    "in exactly this format:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>\n"
    "Use one <tool_call> block per call. Each result comes back to you inside <tool_response></tool_response> tags."
)


def test_render_tools_system_prompt_exact():
    assert render_tools_system_prompt([WEATHER, CLOCK], None) == EXPECTED_TOOLS_BLOCK
    assert render_tools_system_prompt([WEATHER, CLOCK], "") == EXPECTED_TOOLS_BLOCK
    assert render_tools_system_prompt([WEATHER, CLOCK], "Be brief.\n") == "Be brief.\n\n" + EXPECTED_TOOLS_BLOCK


def test_render_tools_system_prompt_keeps_key_order_and_wraps_bare_functions():
    bare = {"name": "z", "parameters": {"b": 1, "a": 2}, "description": "é"}
    out = render_tools_system_prompt([bare], None)
    assert '{"type": "function", "function": {"name": "z", "parameters": {"b": 1, "a": 2}, "description": "é"}}' in out
    assert render_tools_system_prompt([bare], None) == out


@pytest.mark.parametrize("tool", ["get_weather", {"type": "function"}, {"function": {"name": ""}}, {"function": {"name": 3}}])
def test_render_tools_system_prompt_rejects_bad_tools(tool):
    with pytest.raises(InvalidRequestError):
        render_tools_system_prompt([tool], None)


def test_render_tool_calls_text_from_both_call_shapes():
    langchain = {"id": "call_0", "name": "get_weather", "args": {"city": "Zürich"}}
    openai = {"id": "x", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    assert render_tool_calls_text([langchain, openai]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    )
    with pytest.raises(InvalidRequestError):
        render_tool_calls_text([{"name": "f", "arguments": "{not json"}])


# --------------------------------------------------------------------------------------------
# apply_chat_template_with_tools on the tiny tokenizer

HISTORY = [
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_0", "name": "get_weather", "args": {"city": "Paris"}},
            {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_0", "name": "get_weather", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_1", "name": "now", "content": {"time": "12:00"}},
    {"role": "assistant", "content": "It is 18 C.", "tool_calls": [{"id": "call_2", "name": "now", "args": {}}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:01"},
]


def test_no_tools_is_the_plain_chat_template(plain_tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    ids = apply_chat_template_with_tools(plain_tok, messages, None)
    assert ids == list(plain_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    assert chars_of(ids) == "<system>S\n<user>hi\n<assistant>"
    assert chars_of(apply_chat_template_with_tools(plain_tok, messages, [], add_generation_prompt=False)) == "<system>S\n<user>hi\n"
    assert all(isinstance(i, int) for i in ids)


def test_tool_aware_template_gets_tools_and_openai_shaped_calls(tool_tok):
    ids = apply_chat_template_with_tools(tool_tok, HISTORY[:3], [WEATHER, CLOCK])
    assert chars_of(ids) == (
        "<tools>get_weather;now;</tools>\n"
        "<user>Weather in Paris and the time?\n"
        '<assistant>[call_0 get_weather {"city": "Paris"}][call_1 now {}]\n'
        "<tool>18 C, sunny\n"
        "<assistant>"
    )
    no_tools = apply_chat_template_with_tools(tool_tok, HISTORY[:1], None, add_generation_prompt=False)
    assert chars_of(no_tools) == "<user>Weather in Paris and the time?\n"


def test_plain_template_gets_hermes_system_prompt_and_text_tool_turns(plain_tok):
    messages = [{"role": "system", "content": "You are terse."}, *HISTORY]
    ids = apply_chat_template_with_tools(plain_tok, messages, [WEATHER, CLOCK])
    assert chars_of(ids) == (
        "<system>You are terse.\n\n" + EXPECTED_TOOLS_BLOCK + "\n"
        "<user>Weather in Paris and the time?\n"
        "<assistant><tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>\n"
        "<tool_call>\n"
        '{"name": "now", "arguments": {}}\n'
        "</tool_call>\n"
        "<user><tool_response>\n18 C, sunny\n</tool_response>\n"
        '<tool_response>\n{"time": "12:00"}\n</tool_response>\n'
        "<assistant>It is 18 C.\n"
        "<tool_call>\n"
        '{"name": "now", "arguments": {}}\n'
        "</tool_call>\n"
        "<user><tool_response>\n12:01\n</tool_response>\n"
        "<assistant>"
    )


def test_plain_template_without_system_message_gets_one_in_front(plain_tok):
    ids = apply_chat_template_with_tools(plain_tok, [{"role": "user", "content": "hi"}], [CLOCK], add_generation_prompt=False)
    assert chars_of(ids) == "<system>" + render_tools_system_prompt([CLOCK], None) + "\n<user>hi\n"


def test_plain_template_merges_into_first_system_message_only(plain_tok):
    messages = [{"role": "user", "content": "a"}, {"role": "system", "content": "S1"}, {"role": "system", "content": "S2"}]
    text = chars_of(apply_chat_template_with_tools(plain_tok, messages, [CLOCK], add_generation_prompt=False))
    assert text == "<user>a\n<system>" + render_tools_system_prompt([CLOCK], "S1") + "\n<system>S2\n"


def test_plain_template_rewrites_tool_history_even_without_tools(plain_tok):
    text = chars_of(apply_chat_template_with_tools(plain_tok, HISTORY[:3], None, add_generation_prompt=False))
    assert "<tools>" not in text
    assert text.endswith("<user><tool_response>\n18 C, sunny\n</tool_response>\n")


def test_input_messages_are_not_changed(plain_tok):
    before = json.dumps(HISTORY)
    apply_chat_template_with_tools(plain_tok, HISTORY, [WEATHER])
    assert json.dumps(HISTORY) == before


def test_no_chat_template_is_a_clear_error():
    with pytest.raises(InvalidRequestError, match="no chat template"):
        apply_chat_template_with_tools(char_tokenizer(None), [{"role": "user", "content": "hi"}], [CLOCK])


def test_rendered_history_parses_back_to_the_same_calls(plain_tok):
    text = chars_of(apply_chat_template_with_tools(plain_tok, HISTORY[:2], [WEATHER, CLOCK], add_generation_prompt=False))
    assistant_turn = text.split("<assistant>", 1)[1]
    msg = parse_tool_calls(assistant_turn)
    assert [(c.name, c.args) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert msg.content == "" and msg.invalid_tool_calls == []


# --------------------------------------------------------------------------------------------
# the real default model (SmolLM2-135M-Instruct: no tool support in its template)


def test_smollm_prompt_holds_the_tools(smol_tok):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    ids = apply_chat_template_with_tools(smol_tok, messages, [WEATHER])
    assert all(isinstance(i, int) for i in ids)
    text = smol_tok.decode(ids)
    assert json.dumps(WEATHER, ensure_ascii=False) in text
    assert text.startswith("<|im_start|>system\n# Tools\n")  # ours replaces the template's default system turn
    assert text.endswith("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    expected = smol_tok.apply_chat_template(
        [{"role": "system", "content": render_tools_system_prompt([WEATHER], None)}, *messages],
        add_generation_prompt=True,
        tokenize=True,
    )["input_ids"]
    assert ids == list(expected)


def test_smollm_tool_call_round_trip(smol_tok):
    calls = [
        {"id": "call_0", "name": "get_weather", "args": {"city": "São Paulo", "units": ["C"], "days": 2}},
        {"id": "call_1", "name": "now", "args": {}},
    ]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
    ]
    ids = apply_chat_template_with_tools(smol_tok, messages, [WEATHER, CLOCK], add_generation_prompt=True)
    text = smol_tok.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in text
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    msg = parse_tool_calls(assistant)
    assert [(c.id, c.name, c.args) for c in msg.tool_calls] == [(c["id"], c["name"], c["args"]) for c in calls]
    assert msg.content == "Checking."
    assert msg.invalid_tool_calls == []
