"""Greedy n-gram speculative output equals plain output token for token on the real default model
(SmolLM2-135M-Instruct, float32, CPU): 10 eval prompts, 128 new tokens each."""

from __future__ import annotations

import pytest

from agentspark import Engine, NgramDrafter
from conftest import assert_reproduces

pytestmark = pytest.mark.slow


def test_ngram_adaptive_schedule(default_model, default_references):
    # how much gets verified depends on timings; identity must hold whatever is chosen
    assert assert_reproduces(Engine(default_model, NgramDrafter(), max_draft=8), default_references) >= 0


def test_ngram_full_blocks_of_eight(default_model, default_references):
    engine = Engine(default_model, NgramDrafter(), max_draft=8, schedule="full")
    assert assert_reproduces(engine, default_references[:4]) > 10
