"""LangChain's ChatOpenAI against our server over real HTTP: invoke, stream, and a two-round
tool loop with a LangChain @tool (ScriptedBackend behind the server)."""

from __future__ import annotations


import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from agentspark.backends.scripted import ScriptedBackend
from test_server import KEY, MODEL, serve  # noqa: F401 - serve is a fixture

pytestmark = pytest.mark.timeout(60)


@tool
def get_weather(city: str) -> str:
    """Current weather of a city."""
    return f"sunny in {city}, 21 C"


def chat(url: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{url}/v1", api_key=KEY, model=MODEL, max_retries=0, timeout=20, **kwargs)


def test_invoke_and_stream(serve):  # noqa: F811
    backend = ScriptedBackend(["Hello from agentspark.", "Streamed through LangChain."])
    llm = chat(serve(backend), temperature=0)
    reply = llm.invoke([SystemMessage("Be brief."), HumanMessage("hi")])
    assert isinstance(reply, AIMessage) and reply.content == "Hello from agentspark."
    assert reply.usage_metadata["output_tokens"] == len("Hello from agentspark.")
    assert reply.response_metadata["finish_reason"] == "stop"
    assert backend.requests[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "hi"}]

    pieces = [c.content for c in llm.stream("again")]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == "Streamed through LangChain."


def test_bind_tools_two_round_loop(serve):  # noqa: F811
    def final(messages):
        assert messages[-1] == {"role": "tool", "content": "sunny in Paris, 21 C",
                                "tool_call_id": messages[-2]["tool_calls"][0]["id"], "name": "get_weather"}
        return "It is sunny in Paris (21 C)."

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    backend = ScriptedBackend([call, final, call, final])
    llm = chat(serve(backend), temperature=0).bind_tools([get_weather])

    for streaming in (False, True):
        messages = [HumanMessage("What's the weather in Paris?")]
        if streaming:
            ai = None
            for chunk in llm.stream(messages):
                ai = chunk if ai is None else ai + chunk
        else:
            ai = llm.invoke(messages)
        assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"city": "Paris"})]
        assert ai.content == "" and ai.response_metadata["finish_reason"] == "tool_calls"
        offered = backend.requests[-1]["tools"]
        assert [t["function"]["name"] for t in offered] == ["get_weather"]
        assert offered[0]["function"]["parameters"]["properties"]["city"]["type"] == "string"

        messages.append(ai)
        for c in ai.tool_calls:
            messages.append(ToolMessage(content=get_weather.invoke(c["args"]), tool_call_id=c["id"]))
        answer = llm.invoke(messages)
        assert answer.content == "It is sunny in Paris (21 C)." and not answer.tool_calls
        sent = backend.requests[-1]["messages"][1]
        assert sent["role"] == "assistant" and sent["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert len(backend.requests) == 4
