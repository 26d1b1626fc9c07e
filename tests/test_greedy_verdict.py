"""eager_round's greedy shortcut (runner.greedy_verdict) returns verify_chain's verdict."""

from __future__ import annotations

import torch

from agentspark.model.runner import greedy_verdict
from agentspark.sampling import SamplingParams, probs_from_logits
from agentspark.verify import verify_chain


def test_greedy_verdict_is_verify_chains():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        l = trial % 9  # drafts of 0..8 tokens
        logits = torch.randn(l + 1, 50, generator=g)
        best = logits.argmax(-1)
        draft = best[:l].clone()
        cut = int(torch.randint(0, l + 1, (1,), generator=g))  # the first wrong draft token, or none
        if cut < l:
            draft[cut] = (best[cut] + 1 + int(torch.randint(0, 49, (1,), generator=g))) % 50
        draft[cut + 1 :] = torch.randint(0, 50, (max(0, l - cut - 1),), generator=g)
        expected = verify_chain(draft, None, probs_from_logits(logits, SamplingParams()), g)
        tokens = [7] + draft.tolist()
        assert greedy_verdict(logits, tokens) == (expected.accepted, expected.token)


def test_greedy_verdict_takes_the_first_maximal_index():
    logits = torch.tensor([[0.0, 2.0, 2.0], [1.0, 1.0, 0.0]])  # ties: argmax is the first maximum
    assert greedy_verdict(logits, [0, 1]) == (1, 0)
    assert greedy_verdict(logits, [0, 2]) == (0, 1)
