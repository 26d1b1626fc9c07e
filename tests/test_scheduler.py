"""The three length rules of scheduler.py, the SPS table they read, and the engine's schedule options.

choose_length and threshold_length are causal: the decision to verify d_j reads only c_1..c_j,
so changing confidences after slot j never changes whether d_j is verified. The Appendix-A
variant (choose_length_no_early_stop) is not, and a concrete case shows it.

The SPS table (SpsTable) is measured on a synthetic machine with its own clock: a forward of T
tokens costs ALPHA + BETA*T seconds, and load spikes add time. The robust table stays close to
the truth where the old statistic (median per size, running minimum) switches speculation off.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentspark import Engine
from agentspark.errors import AgentSparkError, InvalidRequestError
from agentspark.scheduler import SpsTable, choose_length, choose_length_no_early_stop, measure_sps, threshold_length
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


# ---- the SPS table -------------------------------------------------------------------------------

ALPHA, BETA = 0.025, 0.005  # seconds: the default model's shape on this CPU (T=2 costs 35 ms)
MAX_T = 9  # max_draft 8 + the anchor
CONFIDENT = [0.9] * (MAX_T - 1)


def true_cost(t: int) -> float:
    return ALPHA + BETA * t


TRUTH = [1.0 / true_cost(t) for t in range(1, MAX_T + 1)]


class LoadedMachine:
    """A target on a loaded machine, with its own clock: step(t) advances it by t's true cost
    plus jitter (1% on average), plus a spike of 1-4 x ALPHA with probability ``p`` and always
    at the sizes in ``always``. Load only ever adds time."""

    def __init__(self, seed: int, p: float = 0.2, always: tuple[int, ...] = (2,)) -> None:
        self.now, self.rng, self.p, self.always = 0.0, random.Random(seed), p, always

    def clock(self) -> float:
        return self.now

    def step(self, t: int) -> None:
        self.now += true_cost(t) * (1.0 + self.rng.expovariate(100.0)) + self.spike(t)

    def spike(self, t: int) -> float:
        hit = t in self.always or self.rng.random() < self.p
        return self.rng.uniform(1.0, 4.0) * ALPHA if hit else 0.0


def old_measure_sps(step, max_tokens, clock, repeats=5):
    """The statistic measure_sps used before SpsTable (kept here as the negative control):
    median per size, then a running minimum over SPS, which hands a slow T=2 on to every T > 2."""
    for t in range(1, max_tokens + 1):
        step(t)
    times = [[] for _ in range(max_tokens)]
    for _ in range(repeats):
        for t in range(1, max_tokens + 1):
            t0 = clock()
            step(t)
            times[t - 1].append(clock() - t0)
    table = [1.0 / statistics.median(ts) for ts in times]
    for i in range(1, len(table)):
        table[i] = min(table[i], table[i - 1])
    return table


def close_to_truth(values, rel=0.04):
    return all(abs(v - w) <= rel * w for v, w in zip(values, TRUTH, strict=True))


SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_measured_table_survives_load_spikes(seed):
    """Random spikes (20% of the timings) and every timing of T=2 spiked: within 4% of the truth,
    and a confident draft is verified about as far as with the true table (7 tokens, where
    Theta is nearly flat: one more or less is within the jitter)."""
    machine = LoadedMachine(seed)
    table = SpsTable.measure(machine.step, MAX_T, clock=machine.clock)
    assert close_to_truth(table.values())
    assert abs(choose_length(CONFIDENT, table.values()) - choose_length(CONFIDENT, TRUTH)) <= 1


def test_old_statistic_switches_speculation_off_on_the_same_input():
    """Negative control: the median per size and running minimum, on the same spiky machines,
    makes T=2 (and with it every T > 2) look far slower, and verifies nothing on almost all of
    them (on the others a slow T=1 median flattens the table instead: wrong the other way)."""
    off = 0
    for seed in SEEDS:
        machine = LoadedMachine(seed)
        old = old_measure_sps(machine.step, MAX_T, machine.clock)
        assert not close_to_truth(old, rel=0.3)
        assert old[1] < 0.6 * TRUTH[1]
        off += choose_length(CONFIDENT, old) == 0
    assert off >= 0.9 * len(SEEDS)


def test_measure_sps_is_the_robust_table():
    a, b = LoadedMachine(7), LoadedMachine(7)
    assert measure_sps(a.step, MAX_T) != []  # the real clock: runs, any values
    table = SpsTable.measure(b.step, MAX_T, clock=b.clock)
    assert len(table.values()) == MAX_T and close_to_truth(table.values())


def test_one_token_step_is_kept_out_of_the_line():
    """A real step between T=1 and T=2 (another kernel at one token) survives the fit."""
    costs = [0.020] + [0.030 + 0.004 * t for t in range(2, MAX_T + 1)]
    now = [0.0]

    def step(t):
        now[0] += costs[t - 1]

    table = SpsTable.measure(step, MAX_T, clock=lambda: now[0])
    assert table.values() == pytest.approx([1.0 / c for c in costs], rel=1e-9)


def feed(table, machine, sizes, rounds):
    for i in range(rounds):
        t = sizes[i % len(sizes)]
        table.observe(t, true_cost(t) + machine.spike(t))


def test_observe_recovers_a_table_measured_in_a_slow_spell():
    """Measured under a uniform 3x slowdown; the rounds verify a mix of sizes, or only T=1
    (speculation off): either way the whole table speeds up to the truth."""
    for sizes in ([1, 3, 5, 9, 2, 9, 9], [1]):
        table = SpsTable([v / 3 for v in TRUTH])
        feed(table, LoadedMachine(1, always=()), sizes, 64)
        assert close_to_truth(table.values()), sizes


def test_observe_recovers_inflated_entries_from_the_rounds_that_ran_them():
    """T=2..9 measured 2x too slow: speculation is off. Rounds at one token leave those entries
    alone (they say nothing about them: the engine must verify longer now and then for them to
    heal); rounds at every size, spiky themselves, bring the table back to the truth."""
    table = SpsTable([TRUTH[0]] + [v / 2 for v in TRUTH[1:]])
    assert choose_length(CONFIDENT, table.values()) == 0
    feed(table, LoadedMachine(2, always=()), [1], 64)
    assert choose_length(CONFIDENT, table.values()) == 0
    feed(table, LoadedMachine(3, always=()), list(range(1, MAX_T + 1)), 16 * MAX_T)
    assert close_to_truth(table.values())
    assert choose_length(CONFIDENT, table.values()) >= choose_length(CONFIDENT, TRUTH) - 1


def test_fixed_table_ignores_observations():
    given = [3.0, 2.0, 1.0]
    table = SpsTable(given, fixed=True)
    for i in range(200):
        table.observe(1 + i % 3, 10.0)
    assert table.values() == given


def test_given_values_are_made_non_increasing_only():
    assert SpsTable([1.0, 0.5, 0.7]).values() == [1.0, 0.7, 0.7]
    assert SpsTable([1.0, 0.7, 0.65]).values() == [1.0, 0.7, 0.65]  # the equivalence tests' table
    for bad in ([], [1.0, 0.0], [float("nan")], [1.0, -1.0], [True]):
        with pytest.raises(InvalidRequestError, match="SPS table"):
            SpsTable(bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=12), st.lists(
    st.tuples(st.integers(-1, 14), st.floats(allow_nan=True, allow_infinity=True)), max_size=200))
@example([1e-4, 10.0, 10.0], [(1, 1e308)] * 16)  # overflow: a huge load factor
@example([10.0, 1e-4, 1e-4, 1e-4], [(2, 5e-324)] * 16)  # a clock reading (almost) 0
def test_table_stays_usable_whatever_is_observed(costs, observations):
    table = SpsTable([1.0 / c for c in costs])
    for tokens, seconds in observations:
        table.observe(tokens, seconds)
        values = table.values()
        assert len(values) == len(costs)
        assert all(0 < v < math.inf for v in values)
        assert all(a >= b for a, b in itertools.pairwise(values))


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


def test_a_table_that_cuts_every_draft_is_measured_again():
    """A table whose 2-token entry came out far too slow (a loaded machine's spell) cuts every
    n-gram draft; after RECHECK_AFTER such rounds the engine measures again, keeps the faster of
    the two per size, and verifies drafts from then on. Without the recheck the same bad table
    verifies only the forced probe tokens (the negative control)."""
    from agentspark import Engine, NgramDrafter, SamplingParams
    from agentspark import engine as engine_module
    from conftest import ours_from_hf, tiny_hf_model

    target = ours_from_hf(tiny_hf_model("llama", seed=5))
    prompt = [3, 4, 5, 6] * 6  # the lookup matches all the way
    bad = [100.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5]  # T=2 "100x slower" than T=1
    good = [1e6] * 7  # a second measurement faster than any round: every size's entry is replaced

    def verified(recheck_after: int) -> int:
        before = engine_module.RECHECK_AFTER
        engine_module.RECHECK_AFTER = recheck_after
        try:
            engine = Engine(target, NgramDrafter(), max_draft=6, max_seq_len=256)
            engine._sps = SpsTable(bad)
            # the measurement itself is timing (a loaded CI machine can make it as bad as the
            # table): what is tested is that the recheck happens and its faster entries are kept
            engine._measure_sps = lambda warmup=True: SpsTable(good)
            result = engine.generate(prompt, SamplingParams(max_new_tokens=60))
        finally:
            engine_module.RECHECK_AFTER = before
        return sum(r.verified for r in result.stats.rounds)

    assert verified(engine_module.RECHECK_AFTER) > 10
    assert verified(10**9) <= 2  # only PROBE_AFTER's forced single tokens
