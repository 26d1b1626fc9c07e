"""Build a pydantic model of a function's parameters, and the clean JSON schema a model is shown.

The pydantic model is both the schema source and the validator, so what the model is told and
what the registry accepts can never drift apart.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .errors import ToolDefinitionError

# Extra arguments are a model mistake worth reporting, not something to drop silently;
# protected_namespaces=() lets a tool take a parameter such as "model_name".
_ARGS_CONFIG = ConfigDict(extra="forbid", protected_namespaces=())
# JSON-schema keys whose value maps *names* (which may well be "title") to sub-schemas.
_NAME_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


@dataclass(frozen=True)
class ArgsModel:
    """The parameters model of a function, and how to call the function with a validated instance.

    ``fields`` maps each parameter name to its field name on the model; they differ only for a
    parameter whose name would shadow a ``BaseModel`` attribute (``json``, ``copy``, ...), which is
    stored under ``name_`` with the original name as its alias.
    """

    model: type[BaseModel]
    fields: dict[str, str]
    positional_only: tuple[str, ...]

    def call_arguments(self, instance: BaseModel) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments for the function, read off a validated instance."""
        values = {param: getattr(instance, fld) for param, fld in self.fields.items()}
        args = [values.pop(name) for name in self.positional_only]
        return args, values


def args_model_from_function(fn: Callable[..., Any], model_name: str,
                             arg_docs: dict[str, str]) -> ArgsModel:
    """Model the parameters of ``fn`` from its signature and type hints; defaults are kept."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolDefinitionError(f"cannot read the signature and type hints of {fn!r}: {exc}") from exc

    definitions: dict[str, Any] = {}
    fields: dict[str, str] = {}
    positional_only: list[str] = []
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool parameter {name!r} of {fn.__name__!r} is *args/**kwargs; a tool needs named, "
                "typed parameters (or use Tool.from_model)")
        if name not in hints:
            raise ToolDefinitionError(
                f"tool parameter {name!r} of {fn.__name__!r} has no type hint; annotate it so the "
                "model can be told its type")
        if name.startswith("_"):
            raise ToolDefinitionError(f"tool parameter {name!r} of {fn.__name__!r} starts with '_'; "
                                      "pydantic cannot model it, rename it")
        info: dict[str, Any] = {}
        if name in arg_docs and arg_docs[name]:
            info["description"] = arg_docs[name]
        field_name = name
        if hasattr(BaseModel, name):
            field_name, info["alias"] = f"{name}_", name
        default = ... if param.default is param.empty else param.default
        definitions[field_name] = (hints[name], Field(default, **info))
        fields[name] = field_name
        if param.kind is param.POSITIONAL_ONLY:
            positional_only.append(name)

    try:
        model = create_model(model_name, __config__=_ARGS_CONFIG, **definitions)
    except Exception as exc:  # pydantic reports unsupported types with several exception types
        raise ToolDefinitionError(f"cannot build a parameters model for {fn.__name__!r}: {exc}") from exc
    return ArgsModel(model, fields, tuple(positional_only))


def _strip_titles(node: Any, names: bool = False) -> Any:
    """Drop pydantic's auto-generated "title" keys; a *property* called "title" survives."""
    if isinstance(node, dict):
        return {key: _strip_titles(value, names=not names and key in _NAME_MAPS)
                for key, value in node.items()
                if names or not (key == "title" and isinstance(value, str))}
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    return node


def parameters_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` as tool parameters: an object with "properties" and "required"."""
    try:
        schema = model.model_json_schema(by_alias=True)
    except Exception as exc:  # a field type pydantic can validate but not describe
        raise ToolDefinitionError(f"cannot build a JSON schema for {model.__name__}: {exc}") from exc
    schema = _strip_titles(schema)
    if schema.get("type") != "object":
        raise ToolDefinitionError(f"the parameters of a tool must be a JSON object, {model.__name__} is not")
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    return schema
