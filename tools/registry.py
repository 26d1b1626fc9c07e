"""The registry: the tools one agent may use, and the runner of one round of tool calls.

Every way a call can go wrong on the model's side comes back as a ``ToolResult`` with a status the
agent loop can show the model: ``invalid_arguments`` (validated before the function runs, so a
bad call has no side effects), ``unknown_tool``, ``error`` (the tool raised) and ``timeout``.
Only bugs in this package raise. Calls of one round run concurrently; results keep call order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .calls import ToolCall, ToolResult, ToolStatus, render_content
from .definition import Tool
from .errors import EventLoopRunningError, ToolDefinitionError, UnknownToolError

_MAX_INPUT_REPR = 80


def _describe_exception(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _describe_validation_error(tool_name: str, exc: ValidationError) -> str:
    """One line per problem, "field: message (got ...)", without pydantic's documentation links."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        problem = f"{where}: {error['msg']}"
        if error["type"] not in ("missing", "extra_forbidden") and error["loc"]:
            shown = repr(error.get("input"))
            if len(shown) > _MAX_INPUT_REPR:
                shown = shown[:_MAX_INPUT_REPR] + "..."
            problem += f" (got {shown})"
        problems.append(problem)
    return f"Invalid arguments for tool {tool_name!r}: " + "; ".join(problems)


class ToolRegistry:
    """A fixed set of tools with distinct names, and the runner of their calls."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if not isinstance(item, Tool):
                raise ToolDefinitionError(f"ToolRegistry takes Tool objects (see @tool), got {item!r}")
            if item.name in self._tools:
                raise ToolDefinitionError(f"two tools are named {item.name!r}; tool names must be unique")
            self._tools[item.name] = item

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> Tool:
        """The tool called ``name``; ``UnknownToolError`` (a ``LookupError``) if there is none."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(self._unknown_message(name)) from None

    def openai_schemas(self) -> list[dict[str, Any]]:
        """All tools in the OpenAI ``tools=[...]`` format, in registration order."""
        return [t.openai_schema() for t in self._tools.values()]

    async def run(self, calls: Iterable[ToolCall]) -> list[ToolResult]:
        """Run one round of calls concurrently; result ``i`` answers ``calls[i]``."""
        return list(await asyncio.gather(*(self._run_one(call) for call in calls)))

    def run_sync(self, calls: Iterable[ToolCall]) -> list[ToolResult]:
        """``run`` for synchronous code; inside a running event loop, ``await run(...)`` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(list(calls)))
        raise EventLoopRunningError("run_sync() was called inside a running event loop; "
                                    "use `await registry.run(calls)` there")

    def _unknown_message(self, name: str) -> str:
        available = ", ".join(sorted(self._tools)) or "(none)"
        return f"Unknown tool {name!r}. Available tools: {available}"

    async def _run_one(self, call: ToolCall) -> ToolResult:
        started = time.perf_counter()

        def result(content: str, status: ToolStatus) -> ToolResult:
            return ToolResult(call.id, call.name, content, status, time.perf_counter() - started)

        found = self._tools.get(call.name)
        if found is None:
            return result(self._unknown_message(call.name), "unknown_tool")
        if not isinstance(call.args, Mapping):
            return result(f"Invalid arguments for tool {call.name!r}: arguments must be a JSON object "
                          f"of named arguments, got {type(call.args).__name__}", "invalid_arguments")
        try:
            validated = found.validate(dict(call.args))
        except ValidationError as exc:
            return result(_describe_validation_error(call.name, exc), "invalid_arguments")
        except Exception as exc:  # a custom validator that raised something pydantic does not wrap
            return result(_describe_exception(exc), "error")

        try:
            outcome = await asyncio.wait_for(self._invoke(found, validated), timeout=found.timeout)
        except TimeoutError:  # only wait_for's: _invoke returns the tool's own exceptions as values
            return result(f"Tool {call.name!r} timed out after {found.timeout:g} s", "timeout")
        succeeded, value = outcome
        if not succeeded:
            return result(_describe_exception(value), "error")
        try:
            return result(render_content(value), "ok")
        except Exception as exc:  # e.g. a self-referencing result that JSON cannot encode
            return result(f"Tool {call.name!r} returned a value that cannot be shown: "
                          f"{_describe_exception(exc)}", "error")

    @staticmethod
    async def _invoke(found: Tool, validated: BaseModel) -> tuple[bool, Any]:
        """``(True, return value)`` or ``(False, exception raised)``: returned, not raised, so that a
        tool raising ``TimeoutError`` itself is not mistaken for our timeout."""
        try:
            return True, await found.invoke(validated)
        except Exception as exc:
            return False, exc
