"""Errors of the tools layer, all under ``agentspark.errors.AgentSparkError``.

Two audiences raise here. The *programmer* who defines tools gets ``ToolDefinitionError`` (or
``UnknownToolError`` / ``EventLoopRunningError`` from the registry) at once, because a bad tool
must fail before any model sees it. The *model* that calls tools never sees an exception: the
registry turns whatever a tool raises, these classes included, into a ``ToolResult`` whose content
is ``"ExceptionType: message"``, so every message below is written for the model to act on.

    AgentSparkError
    └── ToolError
        ├── ToolDefinitionError        a function or model that cannot become a tool
        ├── UnknownToolError           ToolRegistry.get() with a name it does not hold
        ├── EventLoopRunningError      run_sync() called inside a running event loop
        ├── CalculatorError            an expression the calculator refuses
        ├── WorkspaceEscapeError       a path that leaves the file tools' workspace
        ├── URLNotAllowedError         a URL outside http_get's scheme/domain allowlist
        └── HTTPFetchError             a fetch that failed after its retries, or a 4xx
"""

from __future__ import annotations

from ..errors import AgentSparkError


class ToolError(AgentSparkError):
    """Root of every error the tools layer raises on purpose."""


class ToolDefinitionError(ToolError, ValueError):
    """A function, model, name or option that cannot define a tool (raised at definition time)."""


class UnknownToolError(ToolError, LookupError):
    """A registry lookup by a name no registered tool has."""


class EventLoopRunningError(ToolError, RuntimeError):
    """``run_sync`` was called from inside a running event loop; ``await run(...)`` instead."""


class CalculatorError(ToolError, ValueError):
    """An expression outside the calculator's grammar, or one whose result would be absurdly large."""


class WorkspaceEscapeError(ToolError, PermissionError):
    """A path that is absolute or resolves (through ``..`` or symlinks) outside the workspace."""


class URLNotAllowedError(ToolError, ValueError):
    """A URL whose scheme is not http(s) or whose host is not an allowed domain."""


class HTTPFetchError(ToolError):
    """An HTTP fetch that failed: a 4xx answer, or a transient failure that outlived the retries."""
