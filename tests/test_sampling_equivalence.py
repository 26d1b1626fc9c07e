"""Sampling is lossless: speculative and plain sampling draw from the same distribution.

Test: two-sample chi-square homogeneity (agentspark.equivalence) on four views of the first three
generated tokens (tiny vocabulary of 6): each position's marginal and their joint; N = 2000 seeded
runs per sampler; the samplers differ when any view has p < 1e-3 / 4 (Bonferroni over the four).
The same test, at the same N, must reject two known-wrong verifiers (negative controls): one that
accepts every draft token, one that resamples a rejected position from p instead of
norm(max(p - q, 0)).
"""

from __future__ import annotations

import pytest
import torch

from agentspark import DraftModelDrafter, Engine, SamplingParams, Verdict
from agentspark.equivalence import homogeneity_test
from agentspark.sampling import sample
from agentspark.verify import verify_chain
from conftest import ours_from_hf, tiny_hf_model

N = 2000
ALPHA = 1e-3
PROMPT = [1, 4, 2]
NEW = 3


def accept_always(draft, q, p, generator):
    """Wrong on purpose: every draft token survives, the bonus comes from p_{l+1}."""
    l = draft.shape[0]
    return Verdict(accepted=l, token=int(sample(p[l : l + 1], generator).item()))


def residual_from_p(draft, q, p, generator):
    """Wrong on purpose: a rejected position is resampled from p instead of norm(max(p - q, 0))."""
    l = draft.shape[0]
    qd = torch.ones(l) if q is None else q[torch.arange(l), draft]
    pd = p[torch.arange(l), draft]
    u = torch.rand(l, generator=generator)
    accept = (u * qd < pd).long()
    a = int(torch.cumprod(accept, 0).sum())
    return Verdict(accepted=a, token=int(sample(p[a : a + 1], generator).item()))


@pytest.fixture(scope="module")
def models():
    vocab = dict(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    target = ours_from_hf(tiny_hf_model("llama", seed=21, init_std=0.1, **vocab))
    draft = ours_from_hf(tiny_hf_model("llama", seed=22, init_std=0.1, **vocab))  # q far from p
    return target, draft


def outcomes(engine: Engine, params_for_seed, speculative: bool) -> list[tuple[int, ...]]:
    return [tuple(engine.generate(PROMPT, params_for_seed(s), speculative=speculative).token_ids) for s in range(N)]


def min_p_value(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> float:
    """Smallest p-value over the marginals of positions 1..3 and the joint outcome."""
    views = [[o[i] for o in a] for i in range(NEW)], [[o[i] for o in b] for i in range(NEW)]
    tests = [homogeneity_test(x, y) for x, y in zip(*views)] + [homogeneity_test(a, b)]
    return min(t.p_value for t in tests)


@pytest.mark.parametrize("top_p", [1.0, 0.8], ids=["temperature-1", "top-p-0.8"])
def test_speculative_sampling_matches_plain_and_controls_are_caught(models, top_p):
    target, draft = models

    def params(seed: int) -> SamplingParams:
        return SamplingParams(temperature=1.0, top_p=top_p, seed=seed, max_new_tokens=NEW)

    def engine(verifier):
        return Engine(target, DraftModelDrafter(draft, 6), max_draft=3, schedule="full", verifier=verifier)

    plain = outcomes(engine(verify_chain), lambda s: params(10_000 + s), speculative=False)
    spec = outcomes(engine(verify_chain), params, speculative=True)
    assert all(len(o) == NEW for o in spec + plain)
    assert min_p_value(spec, plain) >= ALPHA / 4

    for wrong in (accept_always, residual_from_p):
        biased = outcomes(engine(wrong), params, speculative=True)
        assert min_p_value(biased, plain) < ALPHA / 4, wrong.__name__
