"""ChatAgentSpark: the LangChain chat-model contract over agentspark backends (scripted, and the
real default model end to end)."""

from __future__ import annotations

import asyncio
import functools
import operator
import threading
import time

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from agentspark.backends.base import AssistantMessage, Backend, BackendChunk, BackendResponse, ToolCallRequest
from agentspark.backends.messages import message_from_text
from agentspark.backends.scripted import ScriptedBackend
from agentspark.langchain_chat import ChatAgentSpark
from agentspark.sampling import SamplingParams


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers a and b."""
    return a * b


CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": 7}}\n</tool_call>'
BAD_CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b": }}\n</tool_call>'
RAW = "agentspark_raw_text"


def total(chunks):
    return functools.reduce(operator.add, chunks)


class CharBackend(Backend):
    """Streams a text one character at a time (the hardest case for the stream gate), parses it as
    the local backend does, and records each request with its sampling parameters."""

    name = "chars"

    def __init__(self, texts, delay_s: float = 0.0) -> None:
        self.texts, self.delay_s, self.requests = list(texts), delay_s, []
        self.threads: list[int] = []

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        self.requests.append({"messages": messages, "tools": tools, "sampling": sampling, "tool_choice": tool_choice})
        self.threads.append(threading.get_ident())
        text = self.texts[(len(self.requests) - 1) % len(self.texts)]
        for ch in text:
            if self.delay_s:
                time.sleep(self.delay_s)  # a blocking backend, as a local model is
            yield BackendChunk(delta=ch)
        message = message_from_text(text, parse_tools=bool(tools) and tool_choice != "none")
        message.raw_text = text
        finish = "tool_calls" if message.tool_calls else "stop"
        yield BackendChunk("", BackendResponse(message, finish, 5, len(text), self.name))


# -- invoke ------------------------------------------------------------------------------------


def test_invoke_content_usage_and_metadata():
    backend = ScriptedBackend(["Hello there, world."])
    ai = ChatAgentSpark(backend=backend).invoke([HumanMessage("hi")])
    assert isinstance(ai, AIMessage)
    assert ai.content == "Hello there, world."
    assert ai.tool_calls == [] and ai.invalid_tool_calls == []
    assert ai.usage_metadata == {"input_tokens": 2, "output_tokens": 19, "total_tokens": 21}
    meta = ai.response_metadata
    assert meta["finish_reason"] == "stop" and meta["model_name"] == "scripted"
    assert meta["agentspark_stats"] is None and meta["forced_prefix"] == ""
    assert backend.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert backend.requests[0]["tools"] is None and backend.requests[0]["tool_choice"] == "auto"


def test_sampling_fields_and_stop():
    backend = CharBackend(["ok"])
    llm = ChatAgentSpark(backend=backend, temperature=0.7, max_tokens=33, top_p=0.9, top_k=5, seed=3, stop=["END"])
    llm.invoke("a")
    assert backend.requests[0]["sampling"] == SamplingParams(0.7, 5, 0.9, 3, 33, ("END",))
    llm.invoke("b", stop=["X", "Y"])
    assert backend.requests[1]["sampling"].stop == ("X", "Y")
    llm.bind(max_tokens=7, temperature=0.0).invoke("c")
    assert backend.requests[2]["sampling"].max_new_tokens == 7 and backend.requests[2]["sampling"].temperature == 0.0
    assert llm._identifying_params["backend"] == "chars" and llm._llm_type == "agentspark"
    with pytest.raises(TypeError, match="temprature"):
        llm.invoke("d", temprature=1.0)


def test_messages_converted():
    backend = ScriptedBackend(["fine"])
    history = [
        SystemMessage("You are terse."),
        HumanMessage("What is 2 times 3?"),
        AIMessage(content="", tool_calls=[{"name": "multiply", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage(content="6", tool_call_id="c1"),  # no name: taken from the AI message's call
        HumanMessage(content=[{"type": "text", "text": "Thanks"}, {"type": "text", "text": "!"}]),
    ]
    ChatAgentSpark(backend=backend).invoke(history)
    assert backend.requests[0]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 times 3?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "multiply", "content": "6"},
        {"role": "user", "content": "Thanks!"},
    ]


def test_unconvertible_messages_raise_clearly():
    llm = ChatAgentSpark(backend=ScriptedBackend(["x"]))
    with pytest.raises(ValueError, match="FunctionMessage"):
        llm.invoke([FunctionMessage(content="1", name="f")])
    with pytest.raises(ValueError, match="image"):
        llm.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])])


# -- tools -------------------------------------------------------------------------------------


def test_bind_tools_sends_openai_schemas():
    backend = ScriptedBackend(["no call needed"])
    ChatAgentSpark(backend=backend).bind_tools([multiply]).invoke("hi")
    tools = backend.requests[0]["tools"]
    assert tools == [convert_to_openai_tool(multiply)]
    fn = tools[0]["function"]
    assert tools[0]["type"] == "function" and fn["name"] == "multiply" and "Multiply" in fn["description"]
    assert fn["parameters"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert sorted(fn["parameters"]["required"]) == ["a", "b"]
    assert backend.requests[0]["tool_choice"] == "auto"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("any", "required"), ("required", "required"), ("auto", "auto"), ("none", "none"), ("multiply", "multiply"),
     ({"type": "function", "function": {"name": "multiply"}}, "multiply"), (True, "required")],
)
def test_tool_choice_mapping(choice, expected):
    backend = ScriptedBackend(["ok"])
    ChatAgentSpark(backend=backend).bind_tools([multiply], tool_choice=choice).invoke("hi")
    assert backend.requests[0]["tool_choice"] == expected


def test_tool_choice_errors():
    llm = ChatAgentSpark(backend=ScriptedBackend(["ok"]))
    with pytest.raises(ValueError, match="divide"):
        llm.bind_tools([multiply], tool_choice="divide")
    with pytest.raises(ValueError, match="needs tools"):
        llm.invoke("hi", tool_choice="any")


def test_two_round_tool_loop():
    def answer(messages):
        tool_msg = messages[-1]
        assert tool_msg == {"role": "tool", "tool_call_id": "call_0", "name": "multiply", "content": "42"}
        assert messages[-2]["tool_calls"][0]["function"] == {"name": "multiply", "arguments": {"a": 6, "b": 7}}
        return f"6 times 7 is {tool_msg['content']}."

    backend = ScriptedBackend(["I will use the tool.\n" + CALL, answer])
    llm = ChatAgentSpark(backend=backend).bind_tools([multiply])
    human = HumanMessage("What is 6 times 7?")
    ai = llm.invoke([human])
    assert ai.content == "I will use the tool."
    assert ai.tool_calls == [{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "call_0", "type": "tool_call"}]
    assert ai.response_metadata["finish_reason"] == "tool_calls"
    tool_message = multiply.invoke(ai.tool_calls[0])
    assert isinstance(tool_message, ToolMessage) and tool_message.content == "42"
    final = llm.invoke([human, ai, tool_message])
    assert final.content == "6 times 7 is 42." and not final.tool_calls
    assert len(backend.requests) == 2


def test_raw_text_round_trips_only_while_the_message_is_unchanged():
    reply = AssistantMessage(content="", tool_calls=[ToolCallRequest("call_0", "multiply", {"a": 6, "b": 7})],
                             raw_text=CALL)
    backend = ScriptedBackend([reply, "done", "done"])
    llm = ChatAgentSpark(backend=backend).bind_tools([multiply])
    ai = llm.invoke("6*7?")
    assert ai.additional_kwargs == {RAW: CALL}
    result = ToolMessage(content="42", tool_call_id="call_0")
    llm.invoke([HumanMessage("6*7?"), ai, result])
    assert backend.requests[1]["messages"][1][RAW] == CALL
    edited = ai.model_copy(update={"tool_calls": [{"name": "multiply", "args": {"a": 1, "b": 7}, "id": "call_0"}]})
    llm.invoke([HumanMessage("6*7?"), edited, result])
    assert RAW not in backend.requests[2]["messages"][1]


def test_malformed_tool_json_becomes_invalid_tool_call():
    llm = ChatAgentSpark(backend=ScriptedBackend([BAD_CALL, BAD_CALL])).bind_tools([multiply])
    ai = llm.invoke("6*7?")
    assert ai.tool_calls == []
    [bad] = ai.invalid_tool_calls
    assert bad["args"] == BAD_CALL and bad["name"] is None and "malformed" in bad["error"]
    streamed = total(list(llm.stream("6*7?")))
    assert streamed.tool_calls == [] and [c["args"] for c in streamed.invalid_tool_calls] == [BAD_CALL]


def test_a_call_cut_by_max_tokens_is_an_invalid_call_with_finish_reason_length():
    from agentspark.backends.scripted import CutOff

    cut = CutOff('<tool_call>\n{"name": "multiply", "arguments": {"a": 6, "b')
    llm = ChatAgentSpark(backend=ScriptedBackend([cut, cut])).bind_tools([multiply])
    ai = llm.invoke("6*7?")
    assert ai.tool_calls == [] and ai.content == ""
    [bad] = ai.invalid_tool_calls
    assert bad["args"] == cut.text and "token limit" in bad["error"]
    assert ai.response_metadata["finish_reason"] == "length"
    streamed = total(list(llm.stream("6*7?")))
    assert streamed.tool_calls == [] and [c["args"] for c in streamed.invalid_tool_calls] == [cut.text]
    assert streamed.response_metadata["finish_reason"] == "length"


# -- streaming ---------------------------------------------------------------------------------


def test_stream_without_tools_is_token_by_token():
    text = "Speculative decoding keeps the output exactly the same."
    llm = ChatAgentSpark(backend=ScriptedBackend([text, text]))
    ai = llm.invoke("hi")
    chunks = list(llm.stream("hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len([c for c in chunks if c.content]) > 1
    streamed = total(chunks)
    assert streamed.content == ai.content == text
    assert streamed.usage_metadata == ai.usage_metadata
    assert streamed.response_metadata["finish_reason"] == "stop"


STREAM_CASES = [
    "Let me compute that.\n" + CALL,
    CALL,
    "  Sure:\n\n" + CALL + "\nDone.",
    CALL + "\n" + CALL.replace('"a": 6', '"a": 2'),
    'Calling:\n```json\n{"name": "multiply", "arguments": {"a": 1, "b": 2}}\n```\nok',
    'Here: {"name": "multiply", "arguments": {"a": 3, "b": 4}} and more text.',
    '{"name": "multiply", "arguments": {"a": 3, "b": 4}}',
    "If a < b then [a, b] is sorted; use `min` or ``` fences.",
    "Plain prose with <b>tags</b> and trailing space.   ",
    "",
    "Broken: " + BAD_CALL,
]


@pytest.mark.parametrize("text", STREAM_CASES)
def test_stream_with_tools_aggregates_to_invoke(text):
    llm = ChatAgentSpark(backend=CharBackend([text])).bind_tools([multiply])
    ai = llm.invoke("go")
    chunks = list(llm.stream("go"))
    streamed = total(chunks)
    assert streamed.content == ai.content
    assert streamed.tool_calls == ai.tool_calls
    assert [c["args"] for c in streamed.invalid_tool_calls] == [c["args"] for c in ai.invalid_tool_calls]
    assert streamed.usage_metadata == ai.usage_metadata
    assert streamed.response_metadata["finish_reason"] == ai.response_metadata["finish_reason"]
    assert streamed.additional_kwargs == ai.additional_kwargs == {RAW: text}
    last = chunks[-1]
    assert [c["args"] for c in last.tool_call_chunks[: len(ai.tool_calls)]] == [
        '{"a": %d, "b": %d}' % (c["args"]["a"], c["args"]["b"]) for c in ai.tool_calls]
    assert [c["index"] for c in last.tool_call_chunks] == list(range(len(last.tool_call_chunks)))


def test_stream_with_tools_streams_prose_before_the_call():
    llm = ChatAgentSpark(backend=CharBackend(["Let me compute that.\n" + CALL])).bind_tools([multiply])
    chunks = list(llm.stream("go"))
    before = [c for c in chunks if not c.tool_call_chunks and c.content]
    assert len(before) > 5 and "".join(c.content for c in before) == "Let me compute that."
    assert chunks[-1].tool_call_chunks[0]["name"] == "multiply" and chunks[-1].content == ""
    assert "<" not in "".join(c.content for c in chunks)


def test_stream_with_tool_choice_none_streams_raw_text():
    text = "No tools: " + CALL
    llm = ChatAgentSpark(backend=CharBackend([text])).bind_tools([multiply], tool_choice="none")
    streamed = total(list(llm.stream("go")))
    assert streamed.content == text and streamed.tool_calls == []


# -- async -------------------------------------------------------------------------------------


def test_ainvoke_and_astream_match_sync():
    text = "Let me compute that.\n" + CALL
    backend = CharBackend([text])
    llm = ChatAgentSpark(backend=backend).bind_tools([multiply])
    ai = llm.invoke("go")

    async def main():
        got = await llm.ainvoke("go")
        chunks = [c async for c in llm.astream("go")]
        return got, chunks

    got, chunks = asyncio.run(main())
    assert got.content == ai.content and got.tool_calls == ai.tool_calls
    assert len(chunks) > 2
    streamed = total(chunks)
    assert streamed.content == ai.content and streamed.tool_calls == ai.tool_calls
    assert backend.threads[0] == threading.get_ident()
    assert threading.get_ident() not in backend.threads[1:]  # async calls ran in worker threads


@pytest.mark.parametrize("mode", ["astream", "ainvoke"])
def test_event_loop_not_blocked(mode):
    llm = ChatAgentSpark(backend=CharBackend(["x" * 20], delay_s=0.02))  # ~0.4 s of blocking work

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        if mode == "astream":
            chunks = [c async for c in llm.astream("go")]
            content = "".join(c.content for c in chunks)
        else:
            content = (await llm.ainvoke("go")).content
        done.set()
        await task
        return ticks, content

    ticks, content = asyncio.run(main())
    assert content == "x" * 20
    assert ticks >= 20  # a blocked loop would tick once or twice


def test_leaving_astream_early_stops_generation_and_frees_the_backend():
    backend = CharBackend(["abcdefghij" * 50, "short"], delay_s=0.01)  # 5 s to stream in full
    llm = ChatAgentSpark(backend=backend)

    async def main():
        async for _ in llm.astream("go"):
            break
        return await asyncio.wait_for(llm.ainvoke("again"), timeout=2)  # waits for the backend's lock

    start = time.perf_counter()
    assert asyncio.run(main()).content == "short"
    assert time.perf_counter() - start < 2


def test_concurrent_calls_into_one_backend_are_serialized():
    class Guarded(CharBackend):
        active = overlap = 0

        def stream(self, *args, **kwargs):
            Guarded.active += 1
            Guarded.overlap = max(Guarded.overlap, Guarded.active)
            try:
                yield from super().stream(*args, **kwargs)
            finally:
                Guarded.active -= 1

    llm = ChatAgentSpark(backend=Guarded(["abcde"], delay_s=0.01))

    async def main():
        async def streamed():
            return "".join([c.content async for c in llm.astream("s")])

        return await asyncio.gather(llm.ainvoke("a"), streamed(), llm.ainvoke("b"), streamed())

    results = asyncio.run(main())
    assert [getattr(r, "content", r) for r in results] == ["abcde"] * 4
    assert Guarded.overlap == 1


def test_async_errors_propagate():
    llm = ChatAgentSpark(backend=ScriptedBackend([]))

    async def main():
        return [c async for c in llm.astream("go")]

    with pytest.raises(Exception, match="script has 0 responses"):
        asyncio.run(main())


# -- the real default model --------------------------------------------------------------------


@pytest.mark.slow
def test_real_default_model_end_to_end(default_model):
    from agentspark import Engine, NgramDrafter
    from agentspark.backends.local import LocalBackend

    llm = ChatAgentSpark(backend=LocalBackend(Engine(default_model, NgramDrafter(), max_draft=4)), max_tokens=24)
    ai = llm.invoke([HumanMessage("What is the capital of France?")])
    assert isinstance(ai.content, str) and ai.content.strip()
    assert 0 < ai.usage_metadata["output_tokens"] <= 24
    assert ai.response_metadata["agentspark_stats"]["new_tokens"] == ai.usage_metadata["output_tokens"]
    assert ai.response_metadata["model_name"] == "local-ngram"

    forced = llm.bind_tools([multiply], tool_choice="multiply")
    question = [HumanMessage("What is 6 times 7? Use the multiply tool.")]
    call = forced.invoke(question)
    assert call.tool_calls or call.invalid_tool_calls
    # the local backend's default: a grammar, nothing put in the model's mouth; the model wrote the call
    assert call.response_metadata["forced_prefix"] == ""
    assert call.additional_kwargs[RAW].startswith('<tool_call>\n{"name": "multiply"')
    if call.tool_calls:
        assert call.tool_calls[0]["name"] == "multiply"
    streamed = total(list(forced.stream(question)))  # greedy: the same text, streamed
    assert streamed.content == call.content and streamed.tool_calls == call.tool_calls
    # logprobs through bind, where langchain-openai puts them; streamed, on the last chunk
    scored = llm.bind(logprobs=True, top_logprobs=2)
    ai = scored.invoke([HumanMessage("What is the capital of France?")])
    items = ai.response_metadata["logprobs"]["content"]
    assert len(items) == ai.usage_metadata["output_tokens"] and all(len(i["top_logprobs"]) == 2 for i in items)
    again = total(list(scored.stream([HumanMessage("What is the capital of France?")])))
    streamed = again.response_metadata["logprobs"]["content"]  # the backend reused the prompt's K/V this time:
    assert [i["token"] for i in streamed] == [i["token"] for i in items]  # the same tokens, logprobs to rounding
    assert all(abs(a["logprob"] - b["logprob"]) < 1e-4 for a, b in zip(streamed, items))
    with pytest.raises(ValueError, match="top_logprobs"):
        llm.bind(top_logprobs=2).invoke([HumanMessage("hi")])
