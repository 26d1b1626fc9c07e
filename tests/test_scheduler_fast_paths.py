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


# ---- SpsTable's incremental refit against the pass over every size it replaced ------------------

def _reference_values(table: SpsTable, log: list[tuple[int, int, float]], recent: bool = True) -> list[float] | None:
    """The rule over every size from scratch: per size the last _WINDOW timings, of those the ones
    among the last _RECENT observations (``recent=False``: the control that ignores that), their
    low quantile where >= _MIN_ROUNDS, the load factor elsewhere, the monotone rule. None: no
    size has enough (the table keeps what it had)."""
    from agentspark.scheduler import _MIN_ROUNDS, _RECENT, _WINDOW, _low, _monotone_costs

    count = log[-1][0]
    per_size: dict[int, list[tuple[int, float]]] = {}
    for i, t, s in log:
        per_size.setdefault(t, []).append((i, s))
    measured = table._measured
    observed = [None] * len(measured)
    for t, entries in per_size.items():
        own = [s for i, s in entries[-_WINDOW:] if not recent or i > count - _RECENT]
        observed[t - 1] = _low(own) if len(own) >= _MIN_ROUNDS else None
    ratios = [o / m for o, m in zip(observed, measured) if o is not None]
    if not ratios:
        return None
    load = statistics.median(ratios)
    return [1.0 / c for c in _monotone_costs([m * load if o is None else o for o, m in zip(observed, measured)],
                                             table.spikes)]


def _observe_all(table: SpsTable, plan: list[tuple[int, float]]) -> tuple[list[float] | None, list[tuple[int, int, float]]]:
    log, reference = [], None
    for tokens, seconds in plan:
        before = table.version
        table.observe(tokens, seconds)
        log.append((len(log) + 1, tokens, seconds))
        if table.version != before:
            reference = _reference_values(table, log)
            assert table.values() == reference  # exactly: the same floats through the same rule
    return reference, log


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([8, 32, 128]), st.booleans())
def test_incremental_refit_is_the_pass_over_every_size(seed, sizes, spikes):
    """Random rounds (a few sizes most of the time, as a batch engine sees them, and phases that
    move to others so earlier sizes' timings fall out of the last 512) refit exactly as before."""
    import random

    rng = random.Random(seed)
    table = SpsTable([1000.0 / (1 + 0.01 * i) for i in range(sizes)], spikes=spikes)
    plan = []
    for phase in range(3):  # each phase favours other sizes: the first phase's expire in the third
        hot = rng.sample(range(1, sizes + 1), 3)
        for _ in range(rng.randint(200, 500)):
            t = rng.choice(hot) if rng.random() < 0.9 else rng.randint(1, sizes)
            plan.append((t, 1e-3 * (1 + 0.01 * t) * rng.uniform(1.0, 1.3)))
    _observe_all(table, plan)


def test_incremental_refit_control_expiry_matters():
    """The control: a size timed only early (slow then) must leave the table once its timings are
    older than the last 512; a refit that forgot expiry would keep it, and this plan tells them apart."""
    table = SpsTable([1000.0] * 8, spikes=False)
    plan = [(2, 0.01)] * 8 + [(1, 0.001)] * 600  # size 2 slow early, then only size 1
    values, log = _observe_all(table, plan)
    assert values is not None and values != _reference_values(table, log, recent=False)


# ---- choose_lengths' heap merge against the sort of every candidate it replaced ----------------

# confidences with ties (a few values, exact 0 and 1) or anything in [0, 1]; rows of 0..9 drafts
conf_st = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))
rows_st = st.lists(st.lists(conf_st, max_size=9), min_size=1, max_size=20)


def _padded(rows: int, longest: int, total: int) -> int:  # the CPU runner: every row as long as the longest
    return rows * longest


def _bucketed(rows: int, longest: int, total: int) -> int:  # the graph runner: a row bucket x the longest
    return (1 << max(0, rows - 1).bit_length()) * longest


def _table(draw_values: list[float], size: int) -> list[float]:
    return [draw_values[i % len(draw_values)] for i in range(size)]


@settings(max_examples=300, deadline=None)
@given(rows_st, st.lists(st.floats(1.0, 1e4), min_size=1, max_size=8), st.integers(1, 200),
       st.sampled_from(["total", "padded", "bucketed"]), st.booleans())
def test_choose_lengths_is_the_sorted_reference(confidences, values, size, kind, by_longest):
    """Random rows, tables (rising or not) and sizes (B past the table stops it) and each B rule,
    with the rule's list (by_longest) or its calls: the same lengths as the sort."""
    from agentspark.scheduler import _total_tokens, choose_lengths, choose_lengths_reference

    sps = _table(values, size)
    round_tokens = {"total": _total_tokens, "padded": _padded, "bucketed": _bucketed}[kind]
    rows, longest = len(confidences), 1 + max(len(c) for c in confidences)
    by = [round_tokens(rows, t, 0) for t in range(longest + 1)] if by_longest and kind != "total" else None
    assert choose_lengths(confidences, sps, round_tokens, by) == choose_lengths_reference(confidences, sps, round_tokens)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), conf_st), max_size=7),
                min_size=1, max_size=8), st.lists(st.floats(1.0, 1e4), min_size=1, max_size=8), st.integers(1, 64))
def test_choose_lengths_outside_unit_interval_is_the_reference(confidences, values, size):
    """A confidence above 1, below 0 or NaN (a row's survival may rise): the sort decides, as before."""
    import math

    from agentspark.scheduler import choose_lengths, choose_lengths_reference

    sps = _table(values, size)
    if any(math.isnan(c) for cs in confidences for c in cs):  # NaN never equals itself: compare as strings
        assert repr(choose_lengths(confidences, sps)) == repr(choose_lengths_reference(confidences, sps))
    else:
        assert choose_lengths(confidences, sps) == choose_lengths_reference(confidences, sps)


def test_choose_lengths_control_order_matters():
    """The control: admitting in row order (not by survival) gives other lengths on this input, so
    the property test above would see a merge that broke the order."""
    from agentspark.scheduler import choose_lengths

    confidences = [[0.3, 0.3], [0.9, 0.9]]
    sps = [100.0, 100.0, 90.0, 60.0, 50.0]
    # by survival: 0.9 raises Θ (2.9 x 90 > 2 x 100), 0.81 does not (3.71 x 60); in row order 0.3
    # would come first (2.3 x 90 > 200) and 0.09 stop it: [1, 0]
    assert choose_lengths(confidences, sps) == [0, 1]


def test_tokens_by_longest_is_round_tokens():
    """The CPU runner's list is its round_tokens at every longest row, in inference mode (padded
    rows) and out of it (None: B is the total there)."""
    import torch

    from agentspark.model.runner import make_runner
    from conftest import ours_from_hf, tiny_hf_model

    model = ours_from_hf(tiny_hf_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1)).model
    runner = make_runner(model, capacity=64, slots=4, max_tokens=8, graphs=False)
    with torch.inference_mode():
        for rows in (1, 2, 4):
            by = runner.tokens_by_longest(rows)
            if by is None:
                assert all(runner.round_tokens(rows, t, total) == total for t in range(1, 9) for total in (rows, 9))
            else:
                assert all(by[t] == runner.round_tokens(rows, t, total) for t in range(1, 9) for total in (rows, 9, 30))
    assert runner.tokens_by_longest(4) is None and runner.round_tokens(4, 3, 7) == 7


# ---- DraftingRates' medians from sorted copies against sorting each window ----------------------

@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 4, 16]), st.booleans(),
                          st.one_of(st.sampled_from([1e-3, 2e-3, 3e-3]), st.floats(1e-6, 1.0)),
                          st.one_of(st.none(), st.sampled_from([1e-5, 2e-5]), st.floats(1e-6, 1e-2))),
                min_size=1, max_size=120))
def test_sorted_windows_give_the_windows_medians(rounds):
    """Rounds of a few keys and both modes (ties among the times included): after each, every
    mode's median (and host median) is ``_median`` of its window."""
    rates = DraftingRates()
    for key, drafted, seconds, host in rounds:
        rates.observe(key, drafted, key + 1, seconds, key=key, host_seconds=host)
        for table, windows in ((rates._median, rates.seconds), (rates._host_median, rates.host)):
            assert table == {m: _median(w) for m, w in windows.items() if len(w) >= rates.MIN_ROUNDS}
        for mode, w in rates.seconds.items():
            assert rates._sorted[mode] == sorted(w)


# ---- NgramDrafter.feedback's slice updates against the loop over positions ----------------------

def _feedback_reference(self, verified: int, accepted: int) -> None:
    """NgramDrafter.feedback as first written: each position's counts updated in a loop."""
    from agentspark.drafters.ngram import _conditionals

    n = self._last_n
    if not n:
        return
    decay = self.DECAY
    rate = self._rate[n]
    hits, misses = self._grown(n, self._drafted)
    if not verified:
        rate[0], rate[1] = 1.0 + decay * (rate[0] - 1.0), 1.0 + decay * (rate[1] - 1.0)
        for j in range(self._drafted):
            hits[j], misses[j] = 1.0 + decay * (hits[j] - 1.0), 1.0 + decay * (misses[j] - 1.0)
    else:
        rate[0], rate[1] = decay * rate[0] + accepted, decay * rate[1] + (1 if accepted < verified else 0)
        for j in range(accepted):
            hits[j], misses[j] = decay * hits[j] + 1.0, decay * misses[j]
        if accepted < verified:
            hits[accepted], misses[accepted] = decay * hits[accepted], decay * misses[accepted] + 1.0
    conf = self._conf[n]
    upto = min(self._drafted if not verified else min(accepted + 1, verified), len(conf))
    if upto:
        conf[:upto] = _conditionals(hits[:upto], misses[:upto])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=80),
       st.integers(0, 2**31))
def test_ngram_feedback_is_the_loop(rounds, seed):
    """Two drafters on one repetitive text, one learning through the loop: after every round of
    random room, verified and accepted lengths their counts, rates and confidences are equal."""
    import random

    from agentspark.drafters.ngram import NgramDrafter

    rng = random.Random(seed)
    text = [rng.randint(0, 5) for _ in range(40)]
    fast, ref = NgramDrafter(), NgramDrafter()
    for i, (room, verified, accepted) in enumerate(rounds):
        context = text[: 8 + i % 32]
        a, b = fast.propose(context, room), ref.propose(context, room)
        assert a.token_list(room) == b.token_list(room) and a.confidence_list() == b.confidence_list()
        verified = min(verified, len(a))
        accepted = min(accepted, verified)
        fast.feedback(verified, accepted)
        _feedback_reference(ref, verified, accepted)
        assert (fast._hits, fast._misses, fast._rate, fast._conf) == (ref._hits, ref._misses, ref._rate, ref._conf)
