"""The three length rules of scheduler.py, and the engine's schedule options around them.

choose_length and threshold_length are causal: the decision to verify d_j reads only c_1..c_j,
so changing confidences after slot j never changes whether d_j is verified. The Appendix-A
variant (choose_length_no_early_stop) is not, and a concrete case shows it.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentspark import Engine
from agentspark.errors import AgentSparkError, InvalidRequestError
from agentspark.scheduler import choose_length, choose_length_no_early_stop, threshold_length
from conftest import ours_from_hf, tiny_hf_model

# ---- hand-computed cases -----------------------------------------------------------------------


def test_choose_length_hand_cases():
    sps = [1.0, 0.7, 0.65, 0.6]
    # Theta(0) = 1; Theta(1) = 1.9 * 0.7 = 1.33; Theta(2) = (1.9 + 0.81) * 0.65 = 1.7615;
    # Theta(3) = (2.71 + 0.729) * 0.6 = 2.0634: every step raises it.
    assert choose_length([0.9, 0.9, 0.9], sps) == 3
    # Theta(1) = 1.3 * 0.7 = 0.91 <= 1: stop at once, whatever follows.
    assert choose_length([0.3, 0.99, 0.99], sps) == 0
    # Theta(1) = 1.33; Theta(2) = (1.9 + 0.009) * 0.65 = 1.24 <= 1.33: stop at 1.
    assert choose_length([0.9, 0.01, 0.99], sps) == 1
    # Equal throughput does not raise it: Theta(1) = 2 * 0.5 = 1.0 == Theta(0), so l = 0.
    assert choose_length([1.0], [1.0, 0.5]) == 0
    # Flat SPS: every admission with a_j > 0 raises the expected tokens, so verify the whole draft...
    assert choose_length([0.1, 0.1], [1.0, 1.0, 1.0]) == 2
    # ...but never beyond the table (entry t is SPS at t + 1 tokens).
    assert choose_length([0.9] * 5, [1.0, 1.0]) == 1
    assert choose_length([], sps) == 0


def test_threshold_length_hand_cases():
    assert threshold_length([0.9, 0.6, 0.4, 0.9], 0.5) == 2  # c_3 = 0.4 < 0.5: verify d_1, d_2
    assert threshold_length([0.4, 0.9, 0.9], 0.5) == 0
    assert threshold_length([0.9, 0.9], 0.5) == 2
    # Per slot, not cumulative: a_3 = 0.6^3 = 0.216 < 0.5, yet every c_k >= 0.5.
    assert threshold_length([0.6, 0.6, 0.6], 0.5) == 3
    assert threshold_length([0.5, 0.5], 0.5) == 2  # c_k == threshold passes (the cut is c_k < threshold)
    assert threshold_length([0.0, 0.0, 0.0], 0.0) == 3  # threshold 0 verifies everything
    assert threshold_length([0.99, 1.0], 1.0) == 0
    assert threshold_length([], 0.5) == 0


def test_no_early_stop_hand_cases():
    sps = [1.0, 0.7, 0.65]
    # Theta(1) = 0.91 < Theta(0) = 1, but Theta(2) = (1.3 + 0.297) * 0.65 = 1.038 > 1: argmax l = 2.
    assert choose_length_no_early_stop([0.3, 0.99], sps) == 2
    # Theta(2) = (1.3 + 0.003) * 0.65 = 0.847: argmax l = 0.
    assert choose_length_no_early_stop([0.3, 0.01], sps) == 0
    # Where Theta rises monotonically it agrees with choose_length.
    assert choose_length_no_early_stop([0.9, 0.9], sps) == choose_length([0.9, 0.9], sps) == 2
    # Ties go to the shorter length.
    assert choose_length_no_early_stop([1.0], [1.0, 0.5]) == 0  # Theta(1) = 2 * 0.5 = Theta(0)
    assert choose_length_no_early_stop([0.9] * 5, [1.0, 1.0]) == 1
    assert choose_length_no_early_stop([], sps) == 0


# ---- causality -------------------------------------------------------------------------------

conf = st.floats(0.0, 1.0, allow_nan=False)
confs = st.lists(conf, min_size=1, max_size=8)
# A plausible SPS table: positive and non-increasing in the tokens per forward (measure_sps enforces
# that), built from per-token slowdowns r_t in [0.4, 1]. Such tables often make Theta dip then rise,
# the shape on which the argmax variant breaks causality (the same property fails for it).
sps_tables = st.lists(st.floats(0.4, 1.0, allow_nan=False), max_size=8).map(
    lambda rs: list(itertools.accumulate([100.0, *rs], lambda s, r: s * r))
)


def verified(length: int, j: int) -> bool:
    """Is d_j (1-based) verified when the schedule picks ``length``?"""
    return length >= j


@settings(max_examples=300, deadline=None)
@given(confs, confs, sps_tables, st.data())
def test_choose_length_is_causal(a, b, sps, data):
    """The decision for d_j does not change when c_{j+1}, c_{j+2}, ... change."""
    j = data.draw(st.integers(1, len(a)))
    other = a[:j] + b  # same c_1..c_j, anything after
    assert verified(choose_length(a, sps), j) == verified(choose_length(other, sps), j)


@settings(max_examples=300, deadline=None)
@given(confs, confs, conf, st.data())
def test_threshold_length_is_causal(a, b, threshold, data):
    j = data.draw(st.integers(1, len(a)))
    other = a[:j] + b
    assert verified(threshold_length(a, threshold), j) == verified(threshold_length(other, threshold), j)


@settings(max_examples=300, deadline=None)
@given(confs, sps_tables)
def test_schedules_stay_within_the_draft_and_the_table(a, sps):
    for length in (choose_length(a, sps), choose_length_no_early_stop(a, sps)):
        assert 0 <= length <= min(len(a), len(sps) - 1)
    assert 0 <= threshold_length(a, 0.5) <= len(a)
    assert threshold_length(a, 0.0) == len(a)


def test_no_early_stop_is_not_causal():
    """Same c_1 = 0.3: whether d_1 is verified flips with c_2 (which a drafter computes from d_1)."""
    sps = [1.0, 0.7, 0.65]
    assert verified(choose_length_no_early_stop([0.3, 0.99], sps), 1)
    assert not verified(choose_length_no_early_stop([0.3, 0.01], sps), 1)
    # The causal rules decide d_1 the same way in both cases.
    assert choose_length([0.3, 0.99], sps) == choose_length([0.3, 0.01], sps) == 0
    assert threshold_length([0.3, 0.99], 0.5) == threshold_length([0.3, 0.01], 0.5) == 0


# ---- the engine's options --------------------------------------------------------------------


@pytest.fixture(scope="module")
def target():
    return ours_from_hf(tiny_hf_model("llama", seed=3, vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=1))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(schedule="sometimes"), "schedule must be one of"),
        (dict(confidence_threshold=1.5), "confidence_threshold must be a number in [0, 1]"),
        (dict(confidence_threshold=-0.1), "confidence_threshold must be a number in [0, 1]"),
        (dict(confidence_threshold=float("nan")), "confidence_threshold must be a number in [0, 1]"),
        (dict(confidence_threshold="0.5"), "confidence_threshold must be a number in [0, 1]"),
        (dict(sps_table=[]), "sps_table must be a non-empty list"),
        (dict(sps_table=[1.0, 0.0]), "sps_table must be a non-empty list"),
        (dict(sps_table=[1.0, -2.0]), "sps_table must be a non-empty list"),
        (dict(sps_table=[float("inf")]), "sps_table must be a non-empty list"),
    ],
)
def test_engine_rejects_bad_schedule_options(target, kwargs, words):
    with pytest.raises(InvalidRequestError) as info:
        Engine(target, **kwargs)
    assert isinstance(info.value, AgentSparkError)
    assert words in str(info.value)


def test_engine_schedule_options(target):
    for schedule in ("adaptive", "threshold", "full", "no-early-stop"):
        assert Engine(target, schedule=schedule).schedule == schedule
    assert Engine(target).schedule == "adaptive" and Engine(target).confidence_threshold == 0.5
    assert Engine(target, confidence_threshold=0).confidence_threshold == 0.0
    assert Engine(target, confidence_threshold=1).confidence_threshold == 1.0
    # A given table is used as is, never measured.
    assert Engine(target, sps_table=[3, 2.0, 1]).steps_per_second() == [3.0, 2.0, 1.0]


def test_cli_offers_three_schedules():
    import argparse

    from agentspark.commands.common import add_drafter_args

    p = argparse.ArgumentParser()
    add_drafter_args(p)
    args = p.parse_args([])
    assert args.schedule == "adaptive" and args.confidence_threshold == 0.5
    args = p.parse_args(["--schedule", "threshold", "--confidence-threshold", "0.7"])
    assert args.schedule == "threshold" and args.confidence_threshold == 0.7
    with pytest.raises(SystemExit):
        p.parse_args(["--schedule", "no-early-stop"])  # a negative control, not a user option
