"""Tool definitions, registry and built-in tools. Installed as ``agentspark.tools``.

Define a tool from a typed function (``@tool`` / ``Tool.from_function``) or a pydantic model
(``Tool.from_model``), put tools in a ``ToolRegistry``, show the model ``openai_schemas()``, and
run the ``ToolCall``s it answers with: ``await registry.run(calls)`` (or ``run_sync``) gives one
``ToolResult`` per call, in order, and never raises for a model's mistake.
"""

from .builtin import calculator, make_file_tools, make_http_get_tool
from .calls import ToolCall, ToolResult, ToolStatus
from .definition import Tool, tool
from .errors import (
    CalculatorError,
    EventLoopRunningError,
    HTTPFetchError,
    ToolDefinitionError,
    ToolError,
    UnknownToolError,
    URLNotAllowedError,
    WorkspaceEscapeError,
)
from .registry import ToolRegistry

__all__ = [
    "CalculatorError",
    "EventLoopRunningError",
    "HTTPFetchError",
    "Tool",
    "ToolCall",
    "ToolDefinitionError",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolStatus",
    "URLNotAllowedError",
    "UnknownToolError",
    "WorkspaceEscapeError",
    "calculator",
    "make_file_tools",
    "make_http_get_tool",
    "tool",
]
