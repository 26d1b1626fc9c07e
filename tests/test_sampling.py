"""SamplingParams validation and the logits -> distribution transform (against transformers')."""

from __future__ import annotations

import pytest
import torch

from agentspark import SamplingParams
from agentspark.errors import InvalidSamplingError
from agentspark.sampling import MAX_SEED, make_generator, probs_from_logits, sample


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": -3}, "seed"),
        ({"stop": ("",)}, "stop"),
        # values that used to pass: a crash further down (seed, top_k) or a meaningless distribution
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": True}, "seed"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": 1e308}, "temperature"),
        ({"temperature": 1e-300}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_k": 10**30}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": float("nan")}, "top_p"),
        ({"top_p": True}, "top_p"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"stop": 5}, "stop"),
    ],
)
def test_bad_sampling_params_say_what_to_change(kwargs, match):
    with pytest.raises(InvalidSamplingError, match=match):
        SamplingParams(**kwargs)


def test_seeds_cover_zero_to_2_63_minus_1_and_none_stays_random():
    first = [torch.rand(4, generator=make_generator(SamplingParams(seed=s), torch.device("cpu"))) for s in (0, MAX_SEED)]
    again = torch.rand(4, generator=make_generator(SamplingParams(seed=MAX_SEED), torch.device("cpu")))
    assert MAX_SEED == 2**63 - 1 and torch.equal(first[1], again) and not torch.equal(first[0], first[1])
    unseeded = [torch.rand(4, generator=make_generator(SamplingParams(), torch.device("cpu"))) for _ in range(2)]
    assert not torch.equal(*unseeded)  # seed None: a fresh random seed each time


def test_edge_temperatures_are_accepted():
    for t in (0, 1e-8, 1e-30, 2, 100):
        assert SamplingParams(temperature=t).temperature == t


def test_a_lone_stop_string_is_one_stop():
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)


def test_greedy_is_one_hot_at_first_argmax():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0]])
    probs = probs_from_logits(logits, SamplingParams())
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 20, 0.5), (1.0, 1, 1.0)])
def test_probs_equal_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    ref = ref.softmax(-1)
    ours = probs_from_logits(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p))
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(ours > 0, ref > 0)  # the same support


def test_sample_follows_probs():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(probs, gen) for _ in range(20000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[1] == 0  # a zero-probability token is never drawn
    assert torch.allclose(freq, probs[0], atol=0.015)
