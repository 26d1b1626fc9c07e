"""Sampling with a learned drafter is lossless: DSpark's q (Markov-corrected, sampled left to
right) and its confidences feed the same verifier, so speculative and plain sampling must draw
from one distribution. Same test as test_sampling_equivalence.py (chi-square homogeneity on the
first three tokens' marginals and joint, N = 2000 seeded runs per side, alpha 1e-3 / 4), for
full blocks, for the confidence-threshold schedule and for the n-gram + DSpark hybrid; the accept-always verifier is the
negative control the same test must reject with this drafter too."""

from __future__ import annotations

import pytest

from agentspark import Engine, SamplingParams
from agentspark.drafters.dspark import DSparkDrafter
from agentspark.drafters.hybrid import HybridDrafter
from agentspark.verify import verify_chain
from conftest import ours_from_hf, tiny_hf_model
from test_learned_drafters import random_drafter_model
from test_sampling_equivalence import ALPHA, NEW, accept_always, min_p_value, outcomes


def mixed_seed(i: int) -> int:
    """Well-separated seeds (splitmix64 of i): runs of consecutive seeds gave a 4-sigma outlier in
    one reference sample of this model (155 vs 111 expected), so neither side uses them."""
    z = (i * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**62


@pytest.fixture(scope="module")
def setup():
    target = ours_from_hf(tiny_hf_model("llama", seed=21, init_std=0.1, vocab_size=6, hidden_size=32,
                                        intermediate_size=64, num_hidden_layers=2))
    model = random_drafter_model(target, "dspark", seed=23, markov_rank=4, block_size=3)
    plain = Engine(target)
    reference = outcomes(plain, lambda s: SamplingParams(temperature=1.0, seed=mixed_seed(2 * s + 1), max_new_tokens=NEW),
                         speculative=False)
    return target, model, reference


@pytest.mark.parametrize("schedule", ["full", "threshold"])
def test_dspark_sampling_matches_plain(setup, schedule):
    target, model, reference = setup
    engine = Engine(target, DSparkDrafter(model), max_draft=3, schedule=schedule, confidence_threshold=0.5,
                    verifier=verify_chain)
    spec = outcomes(engine, lambda s: SamplingParams(temperature=1.0, seed=mixed_seed(2 * s), max_new_tokens=NEW), speculative=True)
    assert min_p_value(spec, reference) >= ALPHA / 4


def test_hybrid_sampling_matches_plain(setup):
    """n-gram lookups and DSpark drafting turn about (the choice depends only on the past)."""
    target, model, reference = setup
    hybrid = HybridDrafter(DSparkDrafter(model), min_gain=0.0)
    engine = Engine(target, hybrid, max_draft=3, schedule="full", verifier=verify_chain)
    spec = outcomes(engine, lambda s: SamplingParams(temperature=1.0, seed=mixed_seed(2 * s), max_new_tokens=NEW), speculative=True)
    assert hybrid.counts["ngram"] and hybrid.counts["learned"]
    assert min_p_value(spec, reference) >= ALPHA / 4


def test_the_same_test_catches_a_wrong_verifier_with_this_drafter(setup):
    target, model, reference = setup
    engine = Engine(target, DSparkDrafter(model), max_draft=3, schedule="full", verifier=accept_always)
    biased = outcomes(engine, lambda s: SamplingParams(temperature=1.0, seed=mixed_seed(2 * s), max_new_tokens=NEW), speculative=True)
    assert min_p_value(biased, reference) < ALPHA / 4


@pytest.mark.parametrize("method", ["dspark", "eagle3"])
def test_device_drafting_sampling_matches_plain(setup, method):
    """The device path (the drafter's graph body, the runner's bucket body with the fused
    verifier's reference on the CPU): q drawn with noise enqueued before the block, the length
    chosen on the device."""
    from agentspark.drafters.eagle3 import Eagle3Drafter
    from agentspark.model.graph_runner import DeviceRunner

    target, model, reference = setup
    if method == "eagle3":
        drafter = Eagle3Drafter(random_drafter_model(target, "eagle3", seed=24, block_size=3))
    else:
        drafter = DSparkDrafter(model)
    engine = Engine(target, drafter, max_draft=3, schedule="full", verifier=verify_chain)
    engine._attach_runner(DeviceRunner(target.model, graphs=False, capacity=64, max_tokens=4,
                                       capture_layers=drafter.capture_layers))
    assert engine._device_drafting
    spec = outcomes(engine, lambda s: SamplingParams(temperature=1.0, seed=mixed_seed(2 * s), max_new_tokens=NEW), speculative=True)
    assert min_p_value(spec, reference) >= ALPHA / 4
