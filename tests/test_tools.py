"""Tool definitions (schema from type hints, docstrings and pydantic models) and the registry
(validation before the call, unknown tools, errors, timeouts, concurrency, result order)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, field_validator

from agentspark.errors import AgentSparkError
from agentspark.tools import (
    EventLoopRunningError,
    Tool,
    ToolCall,
    ToolDefinitionError,
    ToolRegistry,
    ToolResult,
    UnknownToolError,
    tool,
)
from agentspark.tools.docstrings import parse_docstring


@tool
def search(query: str, limit: int = 5, tags: list[str] | None = None) -> list[str]:
    """Search the notes
    by keyword.

    This second paragraph is for humans only.

    Args:
        query: Words to look for.
        limit (int): How many hits to return,
            at most.
        tags: Only notes with one of these tags.

    Returns:
        The matching note titles.
    """
    return [f"{query}:{i}" for i in range(limit)]


class Ticket(BaseModel):
    """Open a support ticket."""

    title: str = Field(description="One-line summary.")
    priority: int = Field(3, ge=1, le=5, description="1 is most urgent.")

    @field_validator("title")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title must not be blank")
        return value


# --- definition -------------------------------------------------------------------------------------


def test_schema_from_type_hints_and_docstring() -> None:
    schema = search.openai_schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the notes by keyword."
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    assert params["properties"] == {
        "query": {"type": "string", "description": "Words to look for."},
        "limit": {"type": "integer", "default": 5, "description": "How many hits to return, at most."},
        "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                 "default": None, "description": "Only notes with one of these tags."},
    }
    assert "title" not in params
    assert params["additionalProperties"] is False


def test_decorated_tool_is_still_callable_and_options_apply() -> None:
    assert search("x", limit=2) == ["x:0", "x:1"]

    @tool(name="lookup-v2", description="Custom words.", timeout=1.5)
    def lookup(key: str) -> str:
        """Ignored: an explicit description wins."""
        return key

    assert (lookup.name, lookup.description, lookup.timeout) == ("lookup-v2", "Custom words.", 1.5)

    @tool()
    def bare(flag: bool) -> bool:
        return flag

    assert bare.name == "bare" and bare.description == ""
    assert bare.openai_schema()["function"]["parameters"]["required"] == ["flag"]


def test_annotated_constraints_alias_shadowing_names_and_title_property() -> None:
    @tool
    def note(title: str, json: bool = False, size: Annotated[int, Field(gt=0)] = 1) -> dict:
        """Make a note.

        Args:
            title: The note's title.
            json: Answer as JSON.
        """
        return {"title": title, "json": json, "size": size}

    props = note.parameters_schema()["properties"]
    assert list(props) == ["title", "json", "size"]
    assert props["title"] == {"type": "string", "description": "The note's title."}
    assert props["size"] == {"type": "integer", "exclusiveMinimum": 0, "default": 1}
    results = ToolRegistry([note]).run_sync([ToolCall("1", "note", {"title": "t", "json": True}),
                                             ToolCall("2", "note", {"title": "t", "size": 0})])
    assert results[0].status == "ok" and results[0].content == '{"title": "t", "json": true, "size": 1}'
    assert results[1].status == "invalid_arguments" and "size" in results[1].content


def test_positional_only_parameters_are_passed_positionally() -> None:
    @tool
    def div(a: float, b: float, /) -> float:
        return a / b

    [result] = ToolRegistry([div]).run_sync([ToolCall("1", "div", {"a": 6, "b": 4})])
    assert (result.status, result.content) == ("ok", "1.5")


@pytest.mark.parametrize("bad", ["untyped", "varargs", "kwargs"])
def test_functions_that_cannot_be_tools_are_refused(bad: str) -> None:
    def untyped(x) -> None: ...  # noqa: ANN001
    def varargs(*xs: int) -> None: ...
    def kwargs(**xs: int) -> None: ...

    with pytest.raises(ToolDefinitionError) as info:
        Tool.from_function({"untyped": untyped, "varargs": varargs, "kwargs": kwargs}[bad])
    assert isinstance(info.value, AgentSparkError)
    assert "'x" in str(info.value)


def test_bad_names_and_timeouts_are_refused() -> None:
    def ok(x: int) -> int:
        return x

    for kwargs in ({"name": "has space"}, {"name": "x" * 65}, {"timeout": 0}, {"timeout": -1.0}):
        with pytest.raises(ToolDefinitionError):
            Tool.from_function(ok, **kwargs)
    with pytest.raises(ToolDefinitionError, match="unique"):
        ToolRegistry([Tool.from_function(ok), Tool.from_function(ok)])


def test_docstring_parser_sections_and_continuations() -> None:
    parsed = parse_docstring("""Summary line.

    Args:
        a: First.
        b (list[int]): Second,
            continued.
        *rest: Others.

    Raises:
        ValueError: never an argument.
    """)
    assert parsed.description == "Summary line."
    assert parsed.args == {"a": "First.", "b": "Second, continued.", "rest": "Others."}
    assert parse_docstring(None).description == "" and parse_docstring("Args:\n  x: y").description == ""


def test_tool_from_pydantic_model_receives_the_validated_instance() -> None:
    received: list[Ticket] = []

    def open_ticket(ticket: Ticket) -> dict:
        received.append(ticket)
        return {"id": 7, "title": ticket.title}

    ticket_tool = Tool.from_model(Ticket, open_ticket)
    fn = ticket_tool.openai_schema()["function"]
    assert fn["name"] == "open_ticket"
    assert fn["description"] == "Open a support ticket."  # from the model: the function has no docstring
    assert fn["parameters"]["required"] == ["title"]
    assert fn["parameters"]["properties"]["priority"] == {
        "type": "integer", "default": 3, "minimum": 1, "maximum": 5, "description": "1 is most urgent."}

    registry = ToolRegistry([ticket_tool])
    ok, blank, too_high = registry.run_sync([
        ToolCall("a", "open_ticket", {"title": "Disk full", "priority": "2"}),
        ToolCall("b", "open_ticket", {"title": "  "}),
        ToolCall("c", "open_ticket", {"title": "x", "priority": 9}),
    ])
    assert (ok.status, ok.content) == ("ok", '{"id": 7, "title": "Disk full"}')
    assert len(received) == 1 and received[0] == Ticket(title="Disk full", priority=2)
    assert blank.status == "invalid_arguments" and "title must not be blank" in blank.content
    assert too_high.status == "invalid_arguments" and "priority" in too_high.content


def test_from_model_refuses_non_models() -> None:
    with pytest.raises(ToolDefinitionError):
        Tool.from_model(dict, lambda x: x, name="x")  # type: ignore[arg-type]


# --- registry -----------------------------------------------------------------------------------------


def test_arguments_are_validated_before_the_call() -> None:
    calls: list[tuple] = []

    @tool
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    registry = ToolRegistry([add])
    results = registry.run_sync([
        ToolCall("1", "add", {"a": 1, "b": "two"}),
        ToolCall("2", "add", {"a": 1}),
        ToolCall("3", "add", {"a": 1, "b": 2, "c": 3}),
        ToolCall("4", "add", ["not", "a", "dict"]),  # type: ignore[arg-type]
    ])
    assert [r.status for r in results] == ["invalid_arguments"] * 4
    assert calls == []
    assert "b: Input should be a valid integer" in results[0].content and "'two'" in results[0].content
    assert "b: Field required" in results[1].content
    assert "c: Extra inputs are not permitted" in results[2].content
    assert "JSON object" in results[3].content
    assert all("errors.pydantic.dev" not in r.content for r in results)

    [good] = registry.run_sync([ToolCall("5", "add", {"a": 1, "b": "2"})])
    assert (good.status, good.content, calls) == ("ok", "3", [(1, 2)])


def test_unknown_tool_lists_available_names() -> None:
    registry = ToolRegistry([search])
    [result] = registry.run_sync([ToolCall("9", "serch", {"query": "x"})])
    assert result == ToolResult("9", "serch", result.content, "unknown_tool", result.seconds)
    assert "'serch'" in result.content and "search" in result.content
    with pytest.raises(UnknownToolError) as info:
        registry.get("serch")
    assert isinstance(info.value, LookupError) and "Available tools: search" in str(info.value)
    assert registry.get("search") is search and "search" in registry and len(registry) == 1
    assert registry.openai_schemas() == [search.openai_schema()]


def test_exceptions_become_error_results() -> None:
    @tool
    def explode(message: str) -> str:
        raise ValueError(message)

    @tool
    async def explode_async() -> str:
        raise KeyError("k")

    @tool
    def own_timeout() -> str:
        raise TimeoutError("upstream was slow")  # the tool's own, not the registry's timeout

    results = ToolRegistry([explode, explode_async, own_timeout]).run_sync([
        ToolCall("1", "explode", {"message": "boom"}), ToolCall("2", "explode_async", {}),
        ToolCall("3", "own_timeout", {})])
    assert [(r.status, r.content) for r in results] == [
        ("error", "ValueError: boom"), ("error", "KeyError: 'k'"), ("error", "TimeoutError: upstream was slow")]


def test_sync_tool_timeout_abandons_the_thread() -> None:
    finished = threading.Event()

    @tool(timeout=0.2)
    def hang() -> str:
        time.sleep(1.5)
        finished.set()
        return "late"

    start = time.perf_counter()
    [result] = ToolRegistry([hang]).run_sync([ToolCall("1", "hang", {})])
    elapsed = time.perf_counter() - start
    assert result.status == "timeout" and "0.2 s" in result.content
    assert 0.15 < result.seconds < 0.6 and elapsed < 0.8  # run_sync did not wait for the thread
    assert not finished.is_set()


def test_async_tool_timeout_cancels_the_task() -> None:
    cancelled = threading.Event()

    @tool(timeout=0.2)
    async def hang() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    start = time.perf_counter()
    [result] = ToolRegistry([hang]).run_sync([ToolCall("1", "hang", {})])
    assert result.status == "timeout" and time.perf_counter() - start < 0.8
    assert cancelled.is_set()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_calls_of_one_round_run_concurrently(kind: str) -> None:
    if kind == "sync":
        def nap(seconds: float) -> str:
            time.sleep(seconds)
            return "slept"
    else:
        async def nap(seconds: float) -> str:
            await asyncio.sleep(seconds)
            return "slept"

    tools = [Tool.from_function(nap, name=f"nap{i}") for i in range(3)]
    calls = [ToolCall(str(i), f"nap{i}", {"seconds": 0.3}) for i in range(3)]
    start = time.perf_counter()
    results = ToolRegistry(tools).run_sync(calls)
    elapsed = time.perf_counter() - start
    assert [r.content for r in results] == ["slept"] * 3
    assert elapsed < 0.75, f"three 0.3 s calls took {elapsed:.2f} s: not concurrent"
    assert all(r.seconds >= 0.28 for r in results)


def test_results_keep_the_order_of_the_calls() -> None:
    @tool
    async def wait_then_echo(text: str, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return text

    calls = [ToolCall("c", "wait_then_echo", {"text": "first", "seconds": 0.2}),
             ToolCall("a", "nope", {}),
             ToolCall("b", "wait_then_echo", {"text": "third", "seconds": 0.0}),
             ToolCall("z", "wait_then_echo", {"text": "fourth", "seconds": 0.1})]
    results = asyncio.run(ToolRegistry([wait_then_echo]).run(calls))
    assert [r.call_id for r in results] == ["c", "a", "b", "z"]
    assert [r.content for r in results[2:]] == ["third", "fourth"] and results[0].content == "first"
    assert [r.name for r in results] == [c.name for c in calls]


def test_content_rendering() -> None:
    @tool
    def give(kind: str) -> object:
        return {"text": "héllo", "model": Ticket(title="t"), "none": None, "set": {2, 1}, "list": [1.5, "é"]}[kind]

    registry = ToolRegistry([give])
    results = registry.run_sync([ToolCall(k, "give", {"kind": k}) for k in ("text", "model", "none", "set", "list")])
    assert [r.content for r in results] == ['héllo', '{"title": "t", "priority": 3}', "null", "[1, 2]", '[1.5, "é"]']
    assert results[0].to_openai_message() == {"role": "tool", "tool_call_id": "text", "content": "héllo"}
    assert results[0].ok and not ToolResult("x", "y", "", "error", 0.0).ok


def test_run_sync_inside_a_running_loop_is_refused() -> None:
    async def inside() -> None:
        ToolRegistry([search]).run_sync([])

    with pytest.raises(EventLoopRunningError, match="await registry.run"):
        asyncio.run(inside())


def test_async_tool_from_model_and_description_precedence() -> None:
    async def file_ticket(ticket: Ticket) -> str:
        """File the ticket in the tracker.

        Args:
            ticket: Not shown: the model's fields are the arguments.
        """
        await asyncio.sleep(0)
        return f"filed {ticket.title!r} at P{ticket.priority}"

    filed = Tool.from_model(Ticket, file_ticket, name="file", timeout=2.0)
    assert filed.is_async and filed.takes_model
    assert filed.description == "File the ticket in the tracker."
    assert Tool.from_model(Ticket, file_ticket, description="Given.").description == "Given."
    assert list(filed.parameters_schema()["properties"]) == ["title", "priority"]
    [result] = ToolRegistry([filed]).run_sync([ToolCall("1", "file", {"title": "Disk", "priority": 1})])
    assert (result.status, result.content) == ("ok", "filed 'Disk' at P1")
