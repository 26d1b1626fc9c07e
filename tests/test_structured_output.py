"""Structured output through the frameworks' doors: ChatAgentSpark.with_structured_output (json_schema
and json_mode constrain decoding; function_calling stays LangChain's), response_format over the
remote backend, token counts from our own tokenizer, and ``agentspark --version``."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from agentspark import ChatAgentSpark, Engine, NgramDrafter, SamplingParams, __version__
from agentspark.backends.local import LocalBackend
from agentspark.backends.remote import response_format
from agentspark.constraints import Grammar
from agentspark.errors import InvalidRequestError
from agentspark.lc.structured import grammar_of


class Place(BaseModel):
    city: str
    country: str


@pytest.mark.slow
@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_with_structured_output_constrains_decoding(default_model, method):
    llm = ChatAgentSpark(backend=LocalBackend(Engine(default_model, NgramDrafter())), max_tokens=40)
    ask = "Where is the Eiffel Tower? Answer as JSON with its city and country."
    got = llm.with_structured_output(Place, method=method).invoke(ask)
    assert isinstance(got, Place) and got.city and got.country
    raw = llm.with_structured_output(Place, method=method, include_raw=True).invoke("Where is the Colosseum?")
    assert isinstance(json.loads(raw["raw"].content), dict)  # constrained: a JSON object, whatever it holds
    if method == "json_schema":  # ...and with the schema's keys and types: it parses
        assert raw["parsing_error"] is None and isinstance(raw["parsed"], Place)
    else:  # json_mode constrains to JSON only: a parse failure is reported, not raised
        assert isinstance(raw["parsed"], Place) or raw["parsing_error"] is not None
    with pytest.raises(ValueError, match="method"):
        llm.with_structured_output(Place, method="xml")


def test_token_counts_come_from_our_tokenizer(default_model):
    llm = ChatAgentSpark(backend=LocalBackend(Engine(default_model)), model_name="smollm2")
    text = "Hello world, this is a test."
    assert llm.get_num_tokens(text) == len(default_model.tokenizer.encode(text, add_special_tokens=False))
    assert llm._get_ls_params()["ls_model_name"] == "smollm2"


def test_response_format_maps_to_grammars_and_back():
    assert grammar_of({"type": "json_object"}) == Grammar("json") and grammar_of({"type": "text"}) is None
    g = grammar_of({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}})
    assert g == Grammar.json_schema({"type": "object"})
    assert response_format(g) == {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}}
    assert response_format(Grammar("json")) == {"type": "json_object"}
    with pytest.raises(InvalidRequestError, match="local backend"):
        response_format(Grammar("regex", "a+"))
    for bad in ({"type": "yaml"}, "json", {"type": "json_schema"}):
        with pytest.raises(InvalidRequestError):
            grammar_of(bad)
    assert SamplingParams(grammar=g).grammar is g


def test_version(capsys):
    from agentspark.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"agentspark {__version__}"
