"""Scheduling keeps sampling lossless: the causal schedules pass, the Appendix-A variant is caught.

Same test as test_sampling_equivalence.py: two-sample chi-square homogeneity
(agentspark.equivalence) on the marginal of each of the NEW generated tokens and on their joint
(tiny vocabulary of 6), N = 2000 seeded runs per sampler, "differ" when any view has
p < 1e-3 / (NEW + 1) (Bonferroni over the views). Every sampler draws its own seed range (plain
10_000.., each spec case another), so all samples are independent: two schedules that choose the
same lengths would otherwise reproduce each other's outcomes exactly.

The drafter is a DraftModelDrafter (q far from p) whose confidences depend on its own tokens:
c_1 = C1 (a constant), c_k = 0.99 if d_{k-1} == KEY else 0.01 for k >= 2. With SPS = [1.0, 0.7, 0.65]
(steps/s at 1, 2, 3 tokens per forward) and Theta(l) = (1 + sum_{j<=l} a_j) * SPS(1+l):

  C1 = 0.3 (the negative-control design)
    Theta(0) = 1.0;  Theta(1) = 1.3 * 0.7 = 0.91 <= 1.0, so the causal scheduler stops: l = 0 always.
    Theta(2) = (1.3 + 0.3 * 0.99) * 0.65 = 1.597 * 0.65 = 1.038 > 1.0  if d_1 == KEY
             = (1.3 + 0.3 * 0.01) * 0.65 = 1.303 * 0.65 = 0.847        otherwise
    so the argmax variant (no early stop) verifies 2 tokens exactly when d_1 == KEY, else 0: whether
    d_1 is verified depends on d_1 itself. P(token 2 == KEY) then becomes
    (1 - q(KEY)) p(KEY) + min(p(KEY), q(KEY)) instead of p(KEY): for these tiny models, KEY = 3,
    averaged over the first token, a shift of +0.115 on a base of about 0.27 (z of about 8 at N = 2000).
    threshold 0.5 verifies nothing either (c_1 = 0.3 < 0.5).
  C1 = 0.9 (the causal schedules really verify, and how much depends on d_1)
    Theta(1) = 1.9 * 0.7 = 1.33 > 1.0;  Theta(2) = (1.9 + 0.891) * 0.65 = 1.814 > 1.33 if d_1 == KEY,
    (1.9 + 0.009) * 0.65 = 1.241 < 1.33 otherwise: adaptive verifies 2 tokens when d_1 == KEY, else 1.
    threshold 0.5: c_1 = 0.9 passes, c_2 = 0.99 passes iff d_1 == KEY: the same lengths.
NEW = 4 and max_draft = 2, so the first round drafts 2 tokens (room = NEW - 1 - 1).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from agentspark import DraftModelDrafter, Engine, SamplingParams
from agentspark.drafters.base import Draft, Drafter
from agentspark.equivalence import homogeneity_test
from agentspark.scheduler import choose_length, choose_length_no_early_stop, threshold_length
from conftest import ours_from_hf, tiny_hf_model

N = 2000
ALPHA = 1e-3
PROMPT = [1, 4, 2]
NEW = 4
KEY, HIGH, LOW = 3, 0.99, 0.01
SPS = [1.0, 0.7, 0.65]
THRESHOLD = 0.5


class KeyedConfidenceDrafter(Drafter):
    """A draft model whose confidence in slot k is HIGH when d_{k-1} == KEY, else LOW (c_1 = c1)."""

    name = "keyed-confidence"

    def __init__(self, inner: Drafter, c1: float) -> None:
        self.inner, self.c1 = inner, c1

    def start(self, prompt_ids, params, generator) -> None:
        self.inner.start(prompt_ids, params, generator)

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        draft = self.inner.propose(tokens, max_tokens)
        prev = draft.tokens[:-1].tolist()
        conf = [self.c1] + [HIGH if d == KEY else LOW for d in prev]
        return Draft(draft.tokens, draft.probs, torch.tensor(conf[: len(draft)]))

    def feedback(self, verified: int, accepted: int) -> None:
        self.inner.feedback(verified, accepted)


def test_the_design_numbers():
    """The schedules decide what the module docstring says, before any sampling."""
    for d1, want_argmax in ((KEY, 2), (KEY + 1, 0)):
        conf = [0.3, HIGH if d1 == KEY else LOW]
        assert choose_length(conf, SPS) == 0 and threshold_length(conf, THRESHOLD) == 0
        assert choose_length_no_early_stop(conf, SPS) == want_argmax
    for d1, want in ((KEY, 2), (KEY + 1, 1)):
        conf = [0.9, HIGH if d1 == KEY else LOW]
        assert choose_length(conf, SPS) == threshold_length(conf, THRESHOLD) == want
        assert choose_length_no_early_stop(conf, SPS) == want


def tiny_target_and_draft():
    vocab = dict(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    target = ours_from_hf(tiny_hf_model("llama", seed=21, init_std=0.1, **vocab))
    draft = ours_from_hf(tiny_hf_model("llama", seed=22, init_std=0.1, **vocab))  # q far from p
    return target, draft


@pytest.fixture(scope="module")
def models():
    return tiny_target_and_draft()


def params(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_new_tokens=NEW)


def run(engine: Engine, seeds, speculative: bool) -> tuple[list[tuple[int, ...]], Counter]:
    """Outcomes, and how often the first round (the one that drafts 2 tokens) verified each length."""
    outs, first_round = [], Counter()
    for s in seeds:
        r = engine.generate(PROMPT, params(s), speculative=speculative)
        outs.append(tuple(r.token_ids))
        if speculative:
            assert r.stats.rounds[0].drafted == 2
            first_round[r.stats.rounds[0].verified] += 1
    assert all(len(o) == NEW for o in outs)
    return outs, first_round


def p_values(a: list[tuple[int, ...]], b: list[tuple[int, ...]]) -> dict[str, float]:
    """p-value of each view: the marginal of every position and the joint outcome."""
    out = {f"pos{i + 1}": homogeneity_test([o[i] for o in a], [o[i] for o in b]).p_value for i in range(NEW)}
    out["joint"] = homogeneity_test(a, b).p_value
    return out


def plain_outcomes(target) -> list[tuple[int, ...]]:
    """N plain runs, seeds 10_000.. (no spec sampler draws from that range)."""
    outs, _ = run(Engine(target), range(10_000, 10_000 + N), speculative=False)
    return outs


@pytest.fixture(scope="module")
def plain(models):
    return plain_outcomes(models[0])


def spec(models, schedule: str, c1: float, seed_base: int):
    target, draft = models
    drafter = KeyedConfidenceDrafter(DraftModelDrafter(draft, 6), c1)
    engine = Engine(target, drafter, max_draft=2, schedule=schedule, confidence_threshold=THRESHOLD, sps_table=SPS)
    return run(engine, range(seed_base, seed_base + N), speculative=True)


@pytest.mark.parametrize(
    "schedule, c1, lengths, seed_base",
    [("adaptive", 0.9, {1, 2}, 0), ("threshold", 0.9, {1, 2}, 20_000), ("adaptive", 0.3, {0}, 30_000)],
    ids=["adaptive-verifies-1-or-2", "threshold-verifies-1-or-2", "adaptive-verifies-0"],
)
def test_causal_schedules_are_lossless(models, plain, schedule, c1, lengths, seed_base):
    outs, first_round = spec(models, schedule, c1, seed_base)
    # The schedule really verified what the design says, each length often (not plain decoding).
    assert set(first_round) == lengths and min(first_round.values()) >= 100, first_round
    ps = p_values(outs, plain)
    print(f"{schedule} c1={c1}: p-values {ps}, first-round lengths {dict(first_round)}")
    assert min(ps.values()) >= ALPHA / len(ps), f"{schedule} c1={c1}: p-values {ps}, first-round lengths {first_round}"


def test_no_early_stop_is_caught(models, plain):
    outs, first_round = spec(models, "no-early-stop", 0.3, 40_000)
    assert set(first_round) == {0, 2} and min(first_round.values()) >= 100, first_round
    ps = p_values(outs, plain)
    print(f"no-early-stop c1=0.3: p-values {ps}, first-round lengths {dict(first_round)}")
    assert min(ps.values()) < ALPHA / len(ps), f"no-early-stop not caught: p-values {ps}, first-round lengths {first_round}"
