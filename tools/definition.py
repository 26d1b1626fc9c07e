"""A tool: a Python callable plus the name, description and parameter schema a model is shown.

Two ways in. ``Tool.from_function`` (or the ``@tool`` decorator) reads everything off a typed
function: the signature and type hints become a pydantic model, the docstring's first paragraph
the description and its ``Args:`` section the parameter descriptions. ``Tool.from_model`` takes
a pydantic model you wrote yourself (validators, nested models, field constraints) and a function
that receives the **validated model instance** as its single argument.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, overload

from pydantic import BaseModel

from .docstrings import parse_docstring
from .errors import ToolDefinitionError
from .schema import ArgsModel, args_model_from_function, parameters_schema
from .threads import run_in_daemon_thread

# The name rule of the OpenAI tools API, which most other chat formats also accept.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TIMEOUT = 30.0


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _check_options(name: str, timeout: float) -> None:
    if not _NAME.match(name):
        raise ToolDefinitionError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ToolDefinitionError(f"tool timeout must be a positive number of seconds, got {timeout!r}")


@dataclass(frozen=True, eq=False)
class Tool:
    """A callable the model may use. Build it with ``from_function``, ``from_model`` or ``@tool``.

    ``args_model`` validates the model's arguments; ``fn`` is called with them (as the function's
    own parameters, or as one model instance when ``takes_model``). ``timeout`` is in seconds and
    is enforced by ``ToolRegistry``. Calling the ``Tool`` object itself calls ``fn`` directly,
    unvalidated, so a decorated function stays usable as a plain function.
    """

    name: str
    description: str
    args_model: type[BaseModel]
    fn: Callable[..., Any]
    timeout: float = DEFAULT_TIMEOUT
    takes_model: bool = False
    is_async: bool = False
    _args: ArgsModel | None = field(default=None, repr=False)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> Tool:
        """A tool from a typed (sync or async) function; its parameters become the tool's arguments."""
        if not callable(fn):
            raise ToolDefinitionError(f"a tool needs a callable, got {fn!r}")
        name = name or getattr(fn, "__name__", "")
        _check_options(name, timeout)
        doc = parse_docstring(inspect.getdoc(fn))
        args = args_model_from_function(fn, f"{name}_arguments", doc.args)
        tool = cls(name, doc.description if description is None else description, args.model, fn,
                   float(timeout), takes_model=False, is_async=_is_async(fn), _args=args)
        tool.parameters_schema()  # fail now, not when the first model asks for the schemas
        return tool

    @classmethod
    def from_model(cls, model: type[BaseModel], fn: Callable[[Any], Any], name: str | None = None,
                   description: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Tool:
        """A tool whose arguments are ``model``; ``fn(instance)`` receives the validated instance.

        The description defaults to ``fn``'s docstring, then ``model``'s; field descriptions come
        from the model's own ``Field(description=...)``.
        """
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ToolDefinitionError(f"Tool.from_model needs a pydantic BaseModel subclass, got {model!r}")
        if not callable(fn):
            raise ToolDefinitionError(f"a tool needs a callable, got {fn!r}")
        name = name or getattr(fn, "__name__", "")
        _check_options(name, timeout)
        if description is None:
            description = (parse_docstring(inspect.getdoc(fn)).description
                           or parse_docstring(model.__doc__).description)
        tool = cls(name, description, model, fn, float(timeout), takes_model=True, is_async=_is_async(fn))
        tool.parameters_schema()
        return tool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def parameters_schema(self) -> dict[str, Any]:
        """JSON schema of the arguments: ``{"type": "object", "properties", "required", ...}``."""
        return parameters_schema(self.args_model)

    def openai_schema(self) -> dict[str, Any]:
        """This tool in the OpenAI ``tools=[...]`` format."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters_schema()}}

    def validate(self, args: dict[str, Any]) -> BaseModel:
        """Validate raw arguments; raises ``pydantic.ValidationError`` describing every problem."""
        return self.args_model.model_validate(args)

    def invoke(self, validated: BaseModel) -> Awaitable[Any]:
        """Awaitable of ``fn`` applied to validated arguments; a sync ``fn`` runs in its own thread."""
        if self.takes_model:
            call_args: list[Any] = [validated]
            call_kwargs: dict[str, Any] = {}
        else:
            assert self._args is not None  # from_function always sets it
            call_args, call_kwargs = self._args.call_arguments(validated)
        if self.is_async:
            return self.fn(*call_args, **call_kwargs)
        return run_in_daemon_thread(self.fn, *call_args, **call_kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(*, name: str | None = None, description: str | None = None,
         timeout: float = DEFAULT_TIMEOUT) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
         timeout: float = DEFAULT_TIMEOUT) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=..., timeout=...)`` makes a ``Tool``."""
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout=timeout)

    return wrap if fn is None else wrap(fn)
