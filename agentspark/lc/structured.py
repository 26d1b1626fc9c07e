"""Structured output for ChatAgentSpark: OpenAI's ``response_format`` as the request's grammar, and
``with_structured_output``'s json_schema / json_mode methods built on it (constrained decoding:
the reply is JSON of the schema because the model could write nothing else)."""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from ..constraints import Grammar
from ..errors import InvalidRequestError


def grammar_of(response_format: Any) -> Grammar | None:
    """``{"type": "json_object"}`` / ``{"type": "json_schema", "json_schema": {"schema": ...}}`` (or
    "text", or None) as a Grammar; anything else is an error, never ignored."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError(f"response_format must be OpenAI's: a dict with type text, json_object or "
                                  f"json_schema, got {response_format!r}")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar("json")
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError("response_format json_schema needs json_schema.schema, a JSON schema object")
    return Grammar.json_schema(schema)


def _is_pydantic(schema: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(schema, type) and issubclass(schema, BaseModel)


def json_schema_of(schema: Any) -> dict[str, Any]:
    """A pydantic class, a TypedDict or a JSON schema dict -> the JSON schema."""
    if isinstance(schema, dict):
        return schema
    if _is_pydantic(schema):
        return schema.model_json_schema()
    from langchain_core.utils.function_calling import convert_to_json_schema

    return convert_to_json_schema(schema)


def structured_output(llm: Any, schema: Any, *, include_raw: bool, json_mode: bool) -> Any:
    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.runnables import RunnableMap, RunnablePassthrough

    if json_mode:
        fmt: dict[str, Any] = {"type": "json_object"}
    else:
        body = json_schema_of(schema)
        fmt = {"type": "json_schema", "json_schema": {"name": body.get("title", "response"), "schema": body}}
    bound = llm.bind(response_format=fmt)
    parser = PydanticOutputParser(pydantic_object=schema) if _is_pydantic(schema) else JsonOutputParser()
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([fallback], exception_key="parsing_error")
