"""Greedy speculative output equals plain output token for token (float32, CPU), for every drafter
and draft lengths 1..8, on tiny random models of each family (the real default model:
test_default_greedy.py)."""

from __future__ import annotations

import pytest
import torch

from agentspark import DraftModelDrafter, Engine, NgramDrafter, SamplingParams
from conftest import FAMILIES, ours_from_hf, perturbed, tiny_hf_model

N_PROMPTS = 50
NEW_TOKENS = 16


def tiny_prompts(vocab: int, n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # few distinct tokens per prompt: repeats give the n-gram drafter something to find
    out = []
    for _ in range(n):
        alphabet = torch.randint(0, vocab, (6,), generator=g)
        out.append(alphabet[torch.randint(0, 6, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g)].tolist())
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request):
    hf = tiny_hf_model(request.param, seed=11)
    target = ours_from_hf(hf)
    draft = ours_from_hf(perturbed(hf, seed=12, scale=0.3))
    prompts = tiny_prompts(hf.config.vocab_size, N_PROMPTS, seed=13)
    plain = Engine(target)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    reference = [plain.generate(p, params, speculative=False).token_ids for p in prompts]
    return target, draft, prompts, reference, params


@pytest.mark.parametrize("drafter_kind", ["ngram", "draft-model"])
def test_tiny_models_all_draft_lengths(family_setup, drafter_kind):
    target, draft, prompts, reference, params = family_setup
    accepted_total = 0
    for k in range(1, 9):
        drafter = NgramDrafter() if drafter_kind == "ngram" else DraftModelDrafter(draft, target.config.vocab_size)
        engine = Engine(target, drafter, max_draft=k, schedule="full")
        for prompt, ref in zip(prompts, reference):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref, f"{drafter_kind} k={k} prompt={prompt}"
            assert all(r.verified <= k for r in result.stats.rounds)
            accepted_total += sum(r.accepted for r in result.stats.rounds)
    assert accepted_total > 0  # the fast path was exercised, not only the correction tokens


def test_adaptive_schedule_is_lossless_too(family_setup):
    target, _, prompts, reference, params = family_setup
    engine = Engine(target, NgramDrafter(), max_draft=8, schedule="adaptive")
    assert [engine.generate(p, params).token_ids for p in prompts] == reference
