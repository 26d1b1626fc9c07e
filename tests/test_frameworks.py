"""Real agent frameworks against `agentspark serve` with the default model, over loopback (issue 13,
item 5): each runs a two-step tool task with temperature 0 -- the model calls `get_weather`, the
framework runs it and sends the result back, the model answers -- using the framework's own way to
force the first call (tool_choice "required", which the server answers with a grammar of the offered
tools, so the 135M model's call is well-formed) and leaving the second turn to the model ("auto").

The app is the one `agentspark serve` builds with its defaults (batch engine, 4 slots, the auto
drafter, --tool-calls constrained), taken from the command with uvicorn.run stubbed, so the tests
exercise what a user runs. Every request the server receives is recorded, so each test also checks
the framework's traffic: exactly two chat requests, the first forced, the second carrying the tool's
result and not forced. Nothing here may reach the internet: the Agents SDK's tracing and LangSmith's
are off (pydantic-ai-slim has only logfire-api, a no-op without logfire, which is not installed),
clients do not retry, and each test has a timeout.

smolagents' ToolCallingAgent is the exception: it needs a tool call on every step (the answer is its
final_answer tool), sends tool_choice "required" on every request by default, and the 135M model
under "required" calls final_answer first or get_weather again after the result (README.md,
"Constrained decoding"). So its test names each step's tool, smolagents' own way: the model's
tool_choice set to get_weather, and a step callback that sets it to final_answer once the tool
has answered. The model writes both calls' arguments."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODEL = "agentspark-default"
TASK = "What is the weather in Paris?"
INSTRUCTIONS = "You answer questions about the weather. Use the tool."
WEATHER = "sunny and 21 C in {city}"
MAX_TOKENS = 64  # the forced call is ~36 tokens; the answer that quotes the tool's result ~22


class Recorder:
    """ASGI wrapper that keeps the JSON body of every /v1/chat/completions request."""

    def __init__(self, app):
        self.app, self.chats = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:  # read the whole body, then replay it to the app
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.chats.append(json.loads(body))
        pending = iter(messages)

        async def replay():
            return next(pending, None) or await receive()

        return await self.app(scope, replay, send)


@pytest.fixture(scope="module")
def served():
    """(base URL, recorder) of the app `agentspark serve --port 0` builds with every default."""
    import uvicorn

    from agentspark.cli import main
    from agentspark.server import serve_in_thread

    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(uvicorn, "run", lambda app, host, port, **kw: captured.update(app=app))
        mp.delenv("AGENTSPARK_API_KEY", raising=False)
        # no exporter may try the network: the Agents SDK's tracing, LangSmith's
        mp.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
        mp.setenv("LANGSMITH_TRACING", "false")
        mp.setenv("LANGCHAIN_TRACING_V2", "false")
        assert main(["serve", "--port", "0"]) == 0
        recorder = Recorder(captured["app"])
        with serve_in_thread(recorder) as url:
            yield url, recorder


@pytest.fixture
def server(served):
    url, recorder = served
    recorder.chats.clear()
    return url, recorder


def weather_tool(calls: list[str]):
    def get_weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: the city's name
        """
        calls.append(city)
        return WEATHER.format(city=city)

    return get_weather


def async_client(url: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def assert_two_step_traffic(chats: list[dict]) -> None:
    """Two chat requests: the first forced (tool_choice required), the second sending back the
    call and the tool's result, and not forcing another call."""
    assert len(chats) == 2, [c["messages"] for c in chats]
    first, second = chats
    assert first["tool_choice"] == "required" and first["temperature"] == 0
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert second.get("tool_choice", "auto") == "auto"  # left out is the server's default, auto
    calls = [m for m in second["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    assert [json.loads(c["function"]["arguments"]) for m in calls for c in m["tool_calls"]] == [{"city": "Paris"}]
    results = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert results == [WEATHER.format(city="Paris")]


def assert_answer_uses_the_result(answer) -> None:
    # The second turn saw the tool's result: its distinctive numbers are in the answer.
    assert isinstance(answer, str) and "21 C" in answer and "Paris" in answer, answer


def agents_sdk_agent(url: str, calls: list[str]):
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    return Agent(
        name="weather",
        instructions=INSTRUCTIONS,
        tools=[function_tool(weather_tool(calls))],
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=async_client(url)),
        # reset_tool_choice stays at its default (True): after the tool ran, tool_choice is dropped,
        # so the second turn is the model's own ("auto") and the run can end
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=MAX_TOKENS),
    )


def test_openai_agents_sdk_run(server):
    from agents import Runner

    url, recorder = server
    calls: list[str] = []
    result = asyncio.run(Runner.run(agents_sdk_agent(url, calls), TASK, max_turns=3))
    assert calls == ["Paris"]
    assert len(result.raw_responses) == 2
    assert_answer_uses_the_result(result.final_output)
    assert_two_step_traffic(recorder.chats)


def test_openai_agents_sdk_run_streamed(server):
    from agents import Runner

    url, recorder = server
    calls: list[str] = []

    async def run():
        result = Runner.run_streamed(agents_sdk_agent(url, calls), TASK, max_turns=3)
        names = [e.name async for e in result.stream_events() if e.type == "run_item_stream_event"]
        return result, names

    result, names = asyncio.run(run())
    assert calls == ["Paris"]
    assert names == ["tool_called", "tool_output", "message_output_created"]
    assert result.is_complete
    assert_answer_uses_the_result(result.final_output)
    assert all(c.get("stream") for c in recorder.chats)
    assert_two_step_traffic(recorder.chats)


def test_pydantic_ai(server):
    from dataclasses import dataclass

    from pydantic_ai import Agent
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.usage import UsageLimits

    @dataclass
    class ForceFirstCall(AbstractCapability):
        # pydantic-ai refuses a static tool_choice "required" (no step could end the run); a
        # capability's per-step settings are its way to force only the first request
        def get_model_settings(self):
            return lambda ctx: {"tool_choice": "required"} if ctx.run_step == 1 else {}

    url, recorder = server
    calls: list[str] = []
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=async_client(url)))
    agent = Agent(model, instructions=INSTRUCTIONS, tools=[weather_tool(calls)], retries=0,
                  model_settings={"temperature": 0, "max_tokens": MAX_TOKENS}, capabilities=[ForceFirstCall()])
    result = agent.run_sync(TASK, usage_limits=UsageLimits(request_limit=3))
    assert calls == ["Paris"]
    assert_answer_uses_the_result(result.output)
    assert result.usage.requests == 2
    assert_two_step_traffic(recorder.chats)


def test_langgraph_react_agent(server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    url, recorder = server
    calls: list[str] = []
    tools = [tool(weather_tool(calls))]
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=MODEL, temperature=0, max_tokens=MAX_TOKENS,
                     max_retries=0, timeout=60)

    def pick_model(state, runtime):
        # create_react_agent's dynamic model: tool_choice "required" until a tool has answered,
        # then the plain binding (a static forced binding would force every step and never end)
        forced = not any(m.type == "tool" for m in state["messages"])
        return llm.bind_tools(tools, tool_choice="required") if forced else llm.bind_tools(tools)

    with warnings.catch_warnings():
        # LangGraph 1.x points to langchain.agents.create_agent (the langchain package, not
        # installed); create_react_agent is LangGraph's own ReAct agent and still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        from langgraph.prebuilt import create_react_agent

        agent = create_react_agent(pick_model, tools, prompt=INSTRUCTIONS)
    # agent -> tools -> agent: with 3 this run ends in GraphRecursionError; a second tool round
    # would need more than 4
    state = agent.invoke({"messages": [("user", TASK)]}, {"recursion_limit": 4})
    messages = state["messages"]
    assert calls == ["Paris"]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"]
    assert messages[1].tool_calls[0]["name"] == "get_weather" and messages[1].tool_calls[0]["args"] == {"city": "Paris"}
    assert not messages[-1].tool_calls
    assert_answer_uses_the_result(messages[-1].content)
    # langchain-openai leaves tool_choice out when none is bound: the server's default, auto
    assert_two_step_traffic(recorder.chats)


def test_smolagents_tool_calling_agent(server):
    from smolagents import OpenAIServerModel, ToolCallingAgent, tool

    url, recorder = server
    calls: list[str] = []
    named = lambda name: {"type": "function", "function": {"name": name}}  # noqa: E731
    # the model's kwargs override what smolagents sends (its default tool_choice, "required")
    model = OpenAIServerModel(model_id=MODEL, api_base=f"{url}/v1", api_key="unused", temperature=0,
                              max_tokens=MAX_TOKENS, tool_choice=named("get_weather"),
                              client_kwargs={"max_retries": 0, "timeout": 60})

    def answer_once_the_tool_has(step, agent):
        if calls:
            agent.model.kwargs["tool_choice"] = named("final_answer")

    agent = ToolCallingAgent(tools=[tool(weather_tool(calls))], model=model, max_steps=3, verbosity_level=0,
                             step_callbacks=[answer_once_the_tool_has])
    answer = agent.run(TASK)
    assert calls == ["Paris"]
    assert_answer_uses_the_result(answer)
    chats = recorder.chats
    assert [c["tool_choice"] for c in chats] == [named("get_weather"), named("final_answer")]
    assert all(sorted(t["function"]["name"] for t in c["tools"]) == ["final_answer", "get_weather"] for c in chats)
    # smolagents sends the history as text: the call, then the observation with the tool's result
    assert WEATHER.format(city="Paris") in json.dumps(chats[1]["messages"])
