"""The batch scheduler's host-time shortcuts compute exactly what the rules they stand for compute:
the pooled gain kept incrementally, the median without ``statistics`` and the cached "can drafting
pay" answer (one row's Θ rule by ``choose_length``: test_batch_engine.py)."""

from __future__ import annotations

import statistics
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from agentspark.drafting_rates import DraftingRates, _median
from agentspark.scheduler import SpsTable

rounds_st = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 64), st.booleans()), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(rounds_st)
def test_incremental_pool_is_the_walk(rounds):
    rates = DraftingRates()
    for tokens, rows, drafted in rounds:
        rates.observe(rows, drafted, tokens, 0.001)
        assert rates._per_row == rates.tokens_per_row()  # exact: integer sums, one division


def test_incremental_pool_control():
    """The walk stops at GAIN_ROWS rows: a pool that kept every round would differ, and is caught."""
    rates = DraftingRates()
    for k in range(10):
        rates.observe(32, True, 32 * (1 + k), 0.001)
    everything = sum(32 * (1 + k) for k in range(10)) / (32 * 10)
    assert rates._per_row == rates.tokens_per_row() != everything


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=16))
def test_median_is_statistics_median(xs):
    assert _median(deque(xs)) == statistics.median(xs)


def test_cached_can_pay_follows_the_table(monkeypatch):
    """_drafts_can_pay's cache is keyed by the table's version: a refit that changes the answer is seen."""
    from agentspark.batch import BatchEngine
    from agentspark.drafters.ngram import NgramDrafter
    from conftest import ours_from_hf, tiny_hf_model

    target = ours_from_hf(tiny_hf_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1))
    flat = [1000.0] * 16  # a second token costs nothing: drafting can pay
    engine = BatchEngine(target, NgramDrafter(), slots=2, max_draft=7, max_seq_len=64, schedule="adaptive",
                         sps_table=flat, graphs=False)
    engine._table = SpsTable(flat, spikes=False)
    assert engine._drafts_can_pay(2)
    table = engine._table
    for _ in range(64):  # on the CPU a row of 2 at 2 rows computes 4 tokens: now 3x the cost of 2
        table.observe(2, 0.001)
        table.observe(4, 0.003)
    assert table.version > 0
    assert not engine._drafts_can_pay(2)
