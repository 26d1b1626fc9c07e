"""HybridDrafter (n-gram lookups first, a learned drafter where they find nothing): lossless in
greedy on tiny models of every family with both sources drafting, a session reuses both caches,
and the gain gate skips a learned drafter that stops paying except for its probe rounds. Its
sampling test sits with the other learned-drafter sampling tests (test_learned_sampling.py)."""

from __future__ import annotations

import pytest
import torch
from test_learned_drafters import family, make_drafter, random_drafter_model  # noqa: F401 (fixture)

from agentspark import Draft, Drafter, Engine, NgramDrafter
from agentspark.drafters.hybrid import HybridDrafter


@pytest.mark.parametrize("schedule", ["full", "adaptive"])
def test_greedy_lossless_with_both_sources(family, schedule):  # noqa: F811
    target, prompts, reference, params = family
    hybrid = HybridDrafter(make_drafter(random_drafter_model(target, "dspark", seed=61), target), min_gain=0.0)
    engine = Engine(target, hybrid, max_draft=7, schedule=schedule)
    for prompt, ref in zip(prompts, reference):
        assert engine.generate(prompt, params).token_ids == ref
    assert hybrid.counts["ngram"] and hybrid.counts["learned"]  # both drafted in this run


def test_session_reuses_target_and_drafter_caches(family):  # noqa: F811
    target, prompts, _, params = family
    hybrid = HybridDrafter(make_drafter(random_drafter_model(target, "dspark", seed=62), target))
    engine = Engine(target, hybrid, max_draft=7, schedule="full")
    first = engine.generate(prompts[0], params, reuse_cache=True)
    follow = prompts[0] + first.token_ids + prompts[1]
    second = engine.generate(follow, params, reuse_cache=True)
    assert second.stats.prefill_tokens < len(follow)
    # The learned drafter kept its record of the tokens also through rounds the lookup drafted
    # (track), so only the appended part and about the last round are prefilled again; without
    # track its record ended at its own last draft (27, 25, 27 tokens here instead of 22, 22, 23).
    assert second.stats.prefill_tokens <= len(prompts[1]) + 2 + first.stats.rounds[-1].committed
    assert second.token_ids == Engine(target).generate(follow, params, speculative=False).token_ids


class AlwaysWrong(Drafter):
    """A learned drafter stand-in: one confident token a round; the test scripts every one as rejected."""

    name = "wrong"

    def __init__(self) -> None:
        self.calls = 0

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        self.calls += 1
        return Draft(tokens=torch.tensor([tokens[-1]]), confidences=torch.tensor([0.99]))


def test_gain_gate_skips_a_drafter_that_stops_paying_but_probes_it():
    wrong = AlwaysWrong()
    lookup = NgramDrafter()
    hybrid = HybridDrafter(wrong, lookup, min_gain=0.5, probe_every=8, decay=0.5)
    tokens = list(range(100))  # no repeated n-gram: the lookup never matches
    for _ in range(80):
        draft = hybrid.propose(tokens, 4)
        hybrid.feedback(len(draft), 0)  # every learned draft is rejected
    # optimistic start: a few rounds until the gain falls under 0.5, then one probe every 8 rounds
    assert wrong.calls <= 2 + 80 // 8 + 1
    assert hybrid.counts["learned"] == wrong.calls and hybrid.counts["none"] == 80 - wrong.calls
    assert hybrid.gain < 0.5


def test_lookup_drafts_repeated_text_first():
    wrong = AlwaysWrong()
    hybrid = HybridDrafter(wrong)
    draft = hybrid.propose([5, 6, 7, 8, 5, 6, 7], 3)  # "5 6 7" was followed by 8
    assert draft.tokens.tolist() == [8, 5, 6] and hybrid.source is hybrid.lookup and wrong.calls == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        HybridDrafter(AlwaysWrong(), min_gain=-1)
    with pytest.raises(ValueError):
        HybridDrafter(AlwaysWrong(), probe_every=0)
