"""The batch engine (agentspark/batch.py) on the CPU: requests that run together, join and leave
between rounds each get exactly what they get served alone (float32, row-invariant: greedy token
for token; with the full schedule even sampled, seed for seed), and the Θ rule across requests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.batch import BatchEngine
from agentspark.errors import InvalidRequestError
from agentspark.model.graph_runner import DeviceRunner
from agentspark.scheduler import choose_length, choose_lengths, choose_lengths_no_early_stop

from conftest import ours_from_hf, tiny_hf_model
from test_learned_drafters import family  # noqa: F401 (a fixture: tiny targets of each family)


@pytest.fixture(scope="module")
def tiny():
    return ours_from_hf(tiny_hf_model("qwen3", seed=3), eos=frozenset({7}))


def prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        motif = torch.randint(8, 96, (3 + i % 3,), generator=g).tolist()
        out.append((motif * 4)[: 8 + 2 * i])  # repeats: the n-gram drafter finds matches
    return out


PARAMS = [SamplingParams(max_new_tokens=12 + 5 * (i % 3)) for i in range(7)]
SAMPLED = [SamplingParams(temperature=0.9, top_k=30, seed=10 + i, max_new_tokens=14) for i in range(7)]


@pytest.mark.parametrize("defer", [False, True], ids=["first-token-at-admission", "first-token-in-round"])
@pytest.mark.parametrize("params", [PARAMS, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("drafted", [False, True], ids=["plain", "ngram"])
def test_each_request_gets_what_it_gets_alone(tiny, params, drafted, defer):
    """7 requests through 3 slots: they join as others leave (budgets differ, EOS may end one
    early); each output, finish reason and committed stream equals the request served alone.
    Also with the first token from the round after admission (the CUDA graph runner's way): the
    same tokens, seed for seed, and the same prefill and round counts."""
    ps = prompts(7, seed=1)
    alone = Engine(tiny, NgramDrafter() if drafted else None, max_draft=4, schedule="full", max_seq_len=96)
    refs = [alone.generate(p, q, speculative=drafted) for p, q in zip(ps, params)]
    batch = BatchEngine(tiny, NgramDrafter if drafted else None, slots=3, max_draft=4, max_seq_len=96,
                        reuse_prefix=False, first_token_in_round=defer)  # each prefilled whole, as alone
    handles = [batch.submit(p, q) for p, q in zip(ps, params)]
    peak = 0
    while not batch.idle:
        batch.step()
        peak = max(peak, len(batch.running))
    assert peak == 3
    for h, ref in zip(handles, refs):
        assert h.result.token_ids == ref.token_ids
        assert h.result.finish_reason == ref.finish_reason
        assert [t for c in h.chunks for t in c.token_ids] == ref.token_ids
        assert h.result.stats.prefill_tokens == ref.stats.prefill_tokens
        assert len(h.result.stats.rounds) == len(ref.stats.rounds)
    if drafted:
        assert sum(r.accepted for h in handles for r in h.result.stats.rounds) > 0


def test_requests_joining_mid_flight_and_the_device_round(tiny):
    """A request submitted while others run joins at the next round; the same batch through the
    device runner's body (several rows in one forward_rows, padded to a row bucket) gives the same
    greedy tokens as the host runner's row by row."""
    ps = prompts(5, seed=2)
    params = SamplingParams(max_new_tokens=16)
    refs = [Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=96).generate(p, params).token_ids
            for p in ps]
    for device in (False, True):
        batch = BatchEngine(tiny, NgramDrafter, slots=4, max_draft=4, max_seq_len=96, reuse_prefix=False,
                            first_token_in_round=device)
        if device:
            batch.runner = DeviceRunner(tiny.model, graphs=False, capacity=96, slots=4, max_tokens=5)
        first = [batch.submit(p, params) for p in ps[:3]]
        batch.step()
        batch.step()
        late = [batch.submit(p, params) for p in ps[3:]]
        batch.run()
        assert [h.result.token_ids for h in first + late] == refs


@pytest.mark.parametrize("defer", [False, True], ids=["first-token-at-admission", "first-token-in-round"])
def test_conversations_reuse_their_prefix_across_rounds(tiny, defer):
    """Two conversations, three rounds each, every round resending the whole conversation (an
    agent through the OpenAI API): each round lands in the slot that served its conversation and
    prefills only what was appended; its tokens are those of one engine per conversation with
    reuse_cache=True (the same kept K/V). A third conversation arriving with both slots holding
    others evicts the least recently used one."""
    params = SamplingParams(max_new_tokens=10)
    users = prompts(6, seed=5)
    convs = {"a": list(users[0]), "b": list(users[1])}
    solo = {k: Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=160) for k in convs}
    batch = BatchEngine(tiny, NgramDrafter, slots=2, max_draft=4, max_seq_len=160, first_token_in_round=defer)
    for turn in range(3):
        handles = {k: batch.submit(c, params) for k, c in convs.items()}
        batch.run()
        for k, c in convs.items():
            ref = solo[k].generate(c, params, reuse_cache=True)
            got = handles[k].result
            assert got.token_ids == ref.token_ids and got.stats.prefill_tokens == ref.stats.prefill_tokens
            if turn:
                assert got.stats.prefill_tokens <= len(users[2 + turn]) + 1  # only the appended turn
            convs[k] = c + got.token_ids + users[2 + turn]
    third = batch.submit(users[5], params)
    batch.run()
    assert third.result.stats.prefill_tokens == len(users[5])
    assert batch.slot_ids.count([]) == 0 and sum(ids[: len(users[5])] == users[5] for ids in batch.slot_ids) == 1


@pytest.mark.parametrize("defer", [False, True], ids=["first-token-at-admission", "first-token-in-round"])
def test_a_request_that_ends_at_its_first_token_leaves_at_once(tiny, defer):
    """A budget of one token ends a request at its first token (at admission, or in the round of
    the same step): it leaves the batch there, its slot is free for the next, and the requests
    beside it are untouched."""
    ps = prompts(4, seed=6)
    params = [SamplingParams(max_new_tokens=1), SamplingParams(max_new_tokens=9)] * 2
    refs = [Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=96).generate(p, q).token_ids
            for p, q in zip(ps, params)]
    batch = BatchEngine(tiny, NgramDrafter, slots=2, max_draft=4, max_seq_len=96, reuse_prefix=False,
                        first_token_in_round=defer)
    handles = [batch.submit(p, q) for p, q in zip(ps, params)]
    batch.step()
    assert handles[0].done and handles[0] not in batch.running and len(batch.running) <= 2
    batch.run()
    assert [h.result.token_ids for h in handles] == refs and len(refs[0]) == 1
    assert sorted(batch.free) == [0, 1]


def test_bad_requests_are_refused_at_submit(tiny):
    batch = BatchEngine(tiny, slots=2, max_seq_len=32)
    ok = batch.submit([1, 2, 3], SamplingParams(max_new_tokens=4))
    with pytest.raises(InvalidRequestError):
        batch.submit([1, 999], SamplingParams())
    with pytest.raises(Exception, match="context holds"):
        batch.submit(list(range(8, 48)), SamplingParams())
    batch.run()
    assert ok.result is not None and len(ok.result.token_ids) == 4
    with pytest.raises(InvalidRequestError, match="slots"):
        BatchEngine(tiny, slots=0)
    with pytest.raises(InvalidRequestError, match="max_draft"):
        BatchEngine(tiny, slots=2, max_draft=-1)


def test_adaptive_measures_sps_at_total_tokens(tiny):
    """Without a table, ``adaptive`` measures SPS(B) for B = 1 .. slots x (max_draft + 1) at
    construction: positive, non-increasing; the probed slots hold no conversation afterwards."""
    batch = BatchEngine(tiny, NgramDrafter(), slots=3, max_draft=3, max_seq_len=96, schedule="adaptive")
    assert len(batch.sps) == 12 and all(v > 0 for v in batch.sps)
    assert all(a >= b for a, b in zip(batch.sps, batch.sps[1:]))
    assert batch.slot_ids == [[], [], []]
    ps = prompts(4, seed=9)
    refs = [Engine(tiny).generate(p, PARAMS[0], speculative=False).token_ids for p in ps]
    assert [r.token_ids for r in batch.generate_many(ps, PARAMS[0])] == refs
    # its rounds gave DraftingRates their host time before the forward, for both modes
    seen = batch._rates.summary()
    assert any(v["draft_host_ms"] is not None for v in seen.values())
    assert any(v["plain_host_ms"] is not None for v in seen.values())


def test_cancel_frees_the_slot_and_leaves_the_others_alone(tiny):
    ps = prompts(4, seed=11)
    params = SamplingParams(max_new_tokens=16)
    refs = [Engine(tiny).generate(p, params, speculative=False).token_ids for p in ps]
    batch = BatchEngine(tiny, NgramDrafter, slots=2, max_draft=4, max_seq_len=96)
    handles = [batch.submit(p, params) for p in ps]
    batch.step()
    batch.cancel(handles[0])  # running
    batch.cancel(handles[3])  # still waiting
    assert handles[0].cancelled and handles[3].cancelled and handles[0].result is None
    assert handles[0]._slot in batch.free and handles[3] not in batch.waiting
    batch.run()
    assert [h.result.token_ids for h in handles[1:3]] == refs[1:3]
    batch.cancel(handles[1])  # finished: nothing changes
    assert not handles[1].cancelled


def test_a_failed_round_ends_every_request_with_its_error(tiny):
    batch = BatchEngine(tiny, slots=2, max_seq_len=96)
    handles = [batch.submit(p, PARAMS[0]) for p in prompts(3, seed=12)]
    boom = RuntimeError("the forward failed")
    ended = batch.fail_all(boom)
    assert set(map(id, ended)) == set(map(id, handles)) and all(h.error is boom and h.done for h in handles)
    assert batch.idle and sorted(batch.free) == [0, 1]


def test_adaptive_batch_schedule_is_greedy_lossless(tiny):
    """With the Θ rule across requests (a table where verifying gets costly fast, so lengths are
    cut and differ from the requests' solo choices), greedy outputs stay those of plain decoding."""
    ps = prompts(6, seed=4)
    params = SamplingParams(max_new_tokens=18)
    refs = [Engine(tiny).generate(p, params, speculative=False).token_ids for p in ps]
    sps = [100.0 / (1 + 0.05 * b) for b in range(40)]
    for skip in (False, True):  # the Θ rule on every round's drafts; and with rounds that skip drafting
        batch = BatchEngine(tiny, NgramDrafter, slots=4, max_draft=4, max_seq_len=96, schedule="adaptive",
                            sps_table=sps, reuse_prefix=False, skip_drafting=skip)
        results = batch.generate_many(ps, params)
        assert [r.token_ids for r in results] == refs
    batch = BatchEngine(tiny, NgramDrafter, slots=4, max_draft=4, max_seq_len=96, schedule="adaptive", sps_table=sps,
                        reuse_prefix=False, skip_drafting=False)
    results = batch.generate_many(ps, params)
    rounds = [x for r in results for x in r.stats.rounds]
    assert any(x.verified < x.drafted for x in rounds) and any(x.verified for x in rounds)  # cut some, kept some


# ---- the Θ rule across requests ----------------------------------------------------------------

confidence_lists = st.lists(st.lists(st.floats(0.0, 1.0), max_size=6), min_size=1, max_size=5)
tables = st.lists(st.floats(1.0, 100.0), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), max_size=8), tables)
def test_one_request_is_the_single_request_rule(confidences, sps):
    assert choose_lengths([confidences], sps) == [choose_length(confidences, sps)]


@settings(max_examples=200, deadline=None)
@given(confidence_lists, tables)
def test_batch_lengths_respect_the_table_and_the_drafts(confidences, sps):
    lengths = choose_lengths(confidences, sps)
    assert all(0 <= l <= len(c) for l, c in zip(lengths, confidences))
    assert sum(1 + l for l in lengths) <= max(len(sps), len(confidences))


@settings(max_examples=200, deadline=None)
@given(confidence_lists, tables, st.data())
def test_a_decision_does_not_depend_on_later_drafts_of_its_request(confidences, sps, data):
    """The early stop: changing what a request drafted after position j (its later confidences)
    cannot change whether its tokens up to j are verified. The Appendix-A variant breaks this."""
    r = data.draw(st.integers(0, len(confidences) - 1))
    cut = data.draw(st.integers(0, len(confidences[r])))
    tail = data.draw(st.lists(st.floats(0.0, 1.0), max_size=6))
    changed = [list(c) for c in confidences]
    changed[r] = changed[r][:cut] + tail
    a, b = choose_lengths(confidences, sps)[r], choose_lengths(changed, sps)[r]
    assert min(a, cut) == min(b, cut)


def test_the_appendix_a_variant_lets_a_later_draft_decide():
    """The negative control of the property above: a confident second token pulls a doubtful first
    one into verification only when there is no early stop."""
    sps = [10.0, 7.5, 7.0, 6.5]  # one more token costs more than a doubtful one wins; two win it back
    doubtful, confident_after = [[0.3]], [[0.3, 1.0]]
    assert choose_lengths(doubtful, sps) == choose_lengths(confident_after, sps) == [0]
    assert choose_lengths_no_early_stop(doubtful, sps) == [0]
    assert choose_lengths_no_early_stop(confident_after, sps) == [2]


@pytest.mark.parametrize("method,batch_drafts,defer", [("dspark", False, False), ("dspark", True, True),
                                                       ("eagle3", False, True), ("auto", True, False)])
def test_learned_drafters_in_the_batch_are_lossless(family, method, batch_drafts, defer):  # noqa: F811 (the fixture)
    """A learned drafter per slot (``sibling``), fed its own rows' target features from the
    batched forward, drafting one request at a time or all rows in one block forward (DSpark, and
    the learned half of the hybrid): every request greedy equals plain decoding of it alone,
    conversations that reuse a slot's prefix included."""
    from agentspark.drafters.hybrid import HybridDrafter
    from test_learned_drafters import make_drafter, random_drafter_model

    target, ps, reference, params = family
    drafter = make_drafter(random_drafter_model(target, "dspark" if method == "auto" else method, seed=71), target)
    if method == "auto":
        drafter = HybridDrafter(drafter)
    batch = BatchEngine(target, drafter, slots=3, max_draft=4, max_seq_len=128, batch_drafts=batch_drafts,
                        first_token_in_round=defer)  # defer: the first token from the round after admission
    results = batch.generate_many(ps, params)
    assert [r.token_ids for r in results] == reference
    assert sum(sum(r.accepted for r in res.stats.rounds) for res in results) > 0  # the drafts did land
    # the next round of the three conversations the three slots still hold
    held = [i for i, (p, r) in enumerate(zip(ps, results)) if (p + r.token_ids)[:-1] in batch.slot_ids]
    assert len(held) == 3
    follow = [ps[i] + results[i].token_ids + ps[i][:3] for i in held]
    refs = [Engine(target).generate(f, params, speculative=False).token_ids for f in follow]
    again = batch.generate_many(follow, params)
    assert [r.token_ids for r in again] == refs
    assert all(r.stats.prefill_tokens < len(f) for r, f in zip(again, follow))  # their prefixes were reused


def test_dspark_rows_draft_in_one_forward_what_each_drafts_alone(family):  # noqa: F811 (the fixture)
    """``DSparkDrafter.propose_rows``: the rows of one block forward (contexts of different lengths,
    padded and masked, written from features deferred with ``observe_later``) give each drafter the
    draft, q and confidences its own ``propose`` gives (after ``observe``), greedy and sampled (the
    same generator state) and mixed; rows that cannot draft get nothing."""
    from agentspark.drafters.dspark import DSparkDrafter
    from test_learned_drafters import make_drafter, random_drafter_model

    target, ps, _, _ = family
    proto = make_drafter(random_drafter_model(target, "dspark", seed=72), target)
    width = len(proto.capture_layers) * target.config.hidden_size
    g = torch.Generator().manual_seed(73)
    greedy, sampled = SamplingParams(), SamplingParams(temperature=0.9, seed=5)
    # all greedy (drafted together), all sampled (row by row), and mixed: greedy rows together, the others alone
    for row_params in ([greedy] * 4, [sampled] * 4, [greedy, sampled, greedy, greedy]):
        contexts = [ps[i][: 4 + 3 * i] for i in range(4)]
        pairs = []
        for r, (ctx, params) in enumerate(zip(contexts, row_params)):
            feats = torch.randn(len(ctx) - 1, width, generator=g)
            pair = []
            for batched in (False, True):
                d = proto.sibling()
                d.start(ctx, params, torch.Generator().manual_seed(9) if not params.greedy else None)
                if r == 2:
                    pass  # features missing: this row drafts nothing
                elif batched:  # deferred in two pieces: propose_rows writes every row's in one projection
                    d.observe_later(feats[:2], 0)
                    d.observe_later(feats[2:], 2)
                else:
                    d.observe(feats, 0)
                pair.append(d)
            pairs.append(pair)
        alone = [a.propose(ctx, 4) for (a, _), ctx in zip(pairs, contexts)]
        rows = DSparkDrafter.propose_rows([b for _, b in pairs], contexts, [4] * 4)
        for r, (x, y) in enumerate(zip(alone, rows)):
            assert x.tokens.tolist() == y.tokens.tolist(), r
            assert (x.probs is None) == (y.probs is None)
            if x.probs is not None:
                assert torch.allclose(x.probs, y.probs, atol=1e-5)
            if x.confidences is not None:
                assert torch.allclose(x.confidences, y.confidences, atol=1e-5)
        assert len(rows[2]) == 0 and all(len(rows[r]) for r in (0, 1, 3))


def test_padded_rounds_are_priced_at_their_padded_size(tiny):
    """On CUDA every row of a graph bucket runs the longest row's tokens (exact mode: all of
    max_tokens): the Θ rule prices an admission at that size, and the SPS(B) probes run rounds
    whose padded size is B."""
    fast = DeviceRunner(tiny.model, graphs=False, capacity=96, slots=3, max_tokens=5)
    exact = DeviceRunner(tiny.model, graphs=False, exact=True, capacity=96, slots=3, max_tokens=5)
    assert fast.round_tokens(3, 2, 4) == 4 * 2 and exact.round_tokens(3, 2, 4) == 4 * 5
    # the Θ rule's list (tokens_by_longest) is round_tokens at every longest row, whatever the total
    for runner in (fast, exact):
        for rows in (1, 2, 3):
            by = runner.tokens_by_longest(rows)
            assert all(by[t] == runner.round_tokens(rows, t, total) for t in range(1, 6) for total in (rows, 7, 15))
    for runner in (fast, exact):
        shapes = runner.probe_shapes(3)
        assert 1 in shapes and max(shapes) == 4 * 5
        assert all(runner.round_tokens(r, t, r * t) == b for b, (r, t) in shapes.items() if b > 1)
    # every length is timed at the full batch, which wins a B it shares with fewer rows (2 rows x 4
    # tokens is not what a round of 3 rows x 2 costs: the H200 put B = 16 10% dearer that way)
    assert all(fast.probe_shapes(3)[4 * t] == (3, t) for t in range(1, 6))
    confidences = [[0.9, 0.2, 0.1], [0.3], [0.05, 0.05]]
    sps = [100.0 / (1 + 0.1 * b) for b in range(20)]  # every token costs: lengths get cut...
    assert choose_lengths(confidences, sps, fast.round_tokens) != [3, 1, 2]
    # ...but where a round costs the same whatever the lengths, every draft token is worth verifying
    assert choose_lengths(confidences, sps, exact.round_tokens) == [3, 1, 2]


def test_drafting_rates_pick_the_faster_mode_and_probe_the_other():
    """Each mode gets its rounds, the faster one wins; the loser is probed one round in 16 until
    its window is full, then (while the probes confirm the choice) in 32, 64, ... up to 256; when
    the probes beat the winner the choice flips and the probing interval starts again at 16."""
    from agentspark.batch import DraftingRates

    rates = DraftingRates()

    def rounds(n: int, spec_tokens: int, plain_tokens: int) -> list[bool]:
        picks = []
        for _ in range(n):
            drafted = rates.choose(4)
            picks.append(drafted)
            rates.observe(4, drafted, spec_tokens if drafted else plain_tokens, 0.01)
        return picks

    first = rounds(2 * DraftingRates.MIN_ROUNDS, 2, 3)  # plain commits more per second here
    assert first == [True] * DraftingRates.MIN_ROUNDS + [False] * DraftingRates.MIN_ROUNDS
    full = DraftingRates.WINDOW - DraftingRates.MIN_ROUNDS + 1  # probes until one finds the loser's window full
    picks = rounds(16 * full + 32 + 64 + 128 + 256 + 256, 2, 3)
    probes = [i + 1 for i, p in enumerate(picks) if p]
    steady = [16 * full + x for x in (32, 96, 224, 480, 736)]
    assert probes == [16 * (i + 1) for i in range(full)] + steady  # only the probes draft, then ever rarer
    rates.observe(4, True, 1, 0.01)  # one bad drafting round among good ones changes nothing
    assert not rates.choose(4)
    for _ in range(DraftingRates.WINDOW):  # the probes now beat plain clearly: the choice flips
        rates.observe(4, True, 8, 0.01)
    assert rates.choose(4)
    picks = rounds(40, 8, 3)
    assert [i + 1 for i, p in enumerate(picks) if not p] == [15]  # plain probed 16 rounds after the flip
    assert rates.choose(1)  # another row count knows nothing yet


def test_drafting_rates_share_a_key_across_the_row_counts_of_one_bucket(tiny):
    """On the device runner every row count of a bucket runs one forward size (3 rows pad to 4):
    the engine keys DraftingRates by it, so rounds seen at 4 rows decide for 3 rows at once. The
    control: keyed by the row count itself (the CPU runner's key), 3 rows know nothing yet."""
    from agentspark.drafting_rates import DraftingRates

    engine = BatchEngine(tiny, NgramDrafter, slots=4, max_draft=4, max_seq_len=96, schedule="adaptive",
                         sps_table=[1000.0] * 32, graphs=False)
    engine.runner = DeviceRunner(tiny.model, graphs=False, capacity=96, slots=4, max_tokens=5)
    assert [engine._rates_key(r) for r in (1, 2, 3, 4)] == [1, 2, 4, 4]
    rates = DraftingRates()
    for drafted in [True] * DraftingRates.MIN_ROUNDS + [False] * DraftingRates.MIN_ROUNDS:
        rates.observe(4, drafted, 4, 0.03 if drafted else 0.01, key=engine._rates_key(4))  # plain 3x faster
    assert not rates.choose(engine._rates_key(3))  # 3 rows: plain, from the 4-row rounds
    assert rates.choose(3)  # control: under its own row count it has seen nothing and drafts
    assert rates.summary()["4"]["drafts"] is False


@pytest.mark.parametrize("spec_rate, keeps_drafting", [(0.99, True), (0.97, False)])
def test_drafting_rates_keep_the_standing_choice_within_the_margin(spec_rate, keeps_drafting):
    """Hysteresis: once drafting won, it stays while plain is faster by less than MARGIN (2%), and
    gives way past it (a drafting round that verifies nothing costs its lookups: the old 5% margin
    in drafting's favour kept such rounds where plain was 4-9% faster)."""
    from agentspark.drafting_rates import DraftingRates

    rates = DraftingRates()
    plain_rate = 8 / 0.01  # 8 rows, one token each, 10 ms a round
    for drafted in [True] * DraftingRates.MIN_ROUNDS + [False] * DraftingRates.MIN_ROUNDS:
        rates.observe(8, drafted, 16 if drafted else 8, 16 / (1.1 * plain_rate) if drafted else 0.01)
    assert rates.choose(8)  # drafting 10% faster at first
    for _ in range(DraftingRates.WINDOW):  # then drafting slows to spec_rate of plain
        rates.observe(8, True, 16, 16 / (spec_rate * plain_rate))
    assert rates.choose(8) is keeps_drafting


@pytest.mark.parametrize("extra, drafts_mostly", [(0.27, True), (0.02, False)])
def test_drafting_rates_choose_well_at_one_row_despite_bursty_acceptance(extra, drafts_mostly):
    """One row (C = 1), times as measured on the H200 (run 22: a plain round 1.118 ms, an n-gram
    round 1.165 ms) and acceptance that comes in bursts (most rounds accept nothing, some 2-4):
    with 0.27 extra tokens a round on average (k3's) drafting is 22% faster and must be chosen
    nearly always; with 0.02 it is 2% slower and plain must win (the control). Rates from sums over
    16 one-row rounds chose plain for the whole run in the first case (run 22: adaptive 0.81 of k3)."""
    import random

    from agentspark.drafting_rates import DraftingRates

    rng, rates, picks = random.Random(5), DraftingRates(), []
    for _ in range(600):
        drafted = rates.choose(1)
        picks.append(drafted)
        if drafted:  # a burst: 3 extra tokens with probability extra / 3
            tokens, seconds = 1 + (3 if rng.random() < extra / 3 else 0), 1.165e-3 * rng.uniform(0.98, 1.1)
        else:
            tokens, seconds = 1, 1.118e-3 * rng.uniform(0.98, 1.1)
        rates.observe(1, drafted, tokens, seconds)
    share = sum(picks[100:]) / len(picks[100:])
    assert share > 0.9 if drafts_mostly else share < 0.1, share


@pytest.mark.parametrize("host_extra, always_drafts", [(0.01, True), (0.10, False)])
def test_drafting_rates_leave_cheap_drafting_to_the_theta_rule(host_extra, always_drafts):
    """Drafting's host work 1% of a plain round: every round drafts, even where the realized gains
    say plain commits faster (verification is the Θ rule's to price, and the gain estimate is noisy:
    run 35's 1.5B shape at C=1). The control, 10% of a round: the comparison decides as before and
    plain wins."""
    from agentspark.drafting_rates import DraftingRates

    rates, picks = DraftingRates(), []
    plain_s, plain_host = 1.0e-3, 0.02e-3
    for _ in range(200):
        drafted = rates.choose(1)
        picks.append(drafted)
        host = plain_host + (host_extra * plain_s if drafted else 0.0)
        # drafting rounds commit 1 token a row in 10% more time: by the comparison, plain is faster
        rates.observe(1, drafted, 1, (1.1 if drafted else 1.0) * plain_s, host_seconds=host)
    later = picks[2 * DraftingRates.MIN_ROUNDS :]
    assert rates.cheap(1) is always_drafts
    assert all(later) if always_drafts else sum(later) < 0.2 * len(later), sum(later)
    assert rates.summary()["1"]["cheap"] is always_drafts


def test_slots_past_the_largest_row_bucket_are_refused_on_the_device_runner(tiny):
    from agentspark.batch import MAX_DEVICE_SLOTS
    from agentspark.model.graph_runner import ROW_BUCKETS

    assert MAX_DEVICE_SLOTS == ROW_BUCKETS[-1]
    with pytest.raises(InvalidRequestError, match="at most 64"):
        BatchEngine(tiny, slots=65, graphs=True)


def test_dspark_observe_later_drafts_what_observe_drafts(family):  # noqa: F811 (the fixture)
    """``observe_later`` (a batch round without a draft) keeps the features and writes their K/V
    at the next draft: the same cache (within float rounding: one projection of many rows instead
    of one per round) and the same draft as observing at once, whether the kept positions are
    contiguous or a later observe goes back over them (a new request reusing a shorter prefix)."""
    from test_learned_drafters import make_drafter, random_drafter_model

    target, ps, _, _ = family
    proto = make_drafter(random_drafter_model(target, "dspark", seed=74), target)
    width = len(proto.capture_layers) * target.config.hidden_size
    g = torch.Generator().manual_seed(75)
    ctx = ps[0][:6] + ps[1][:6]
    feats = torch.randn(len(ctx) - 1, width, generator=g)
    now, later = proto.sibling(), proto.sibling()
    for d in (now, later):
        d.start(ctx, SamplingParams(), None)
        d.observe(feats[:4], 0)  # the prefill
    for pos in range(4, len(ctx) - 1):  # then rounds of one committed token each
        now.observe(feats[pos : pos + 1], pos)
        later.observe_later(feats[pos : pos + 1], pos)
    assert later.length == now.length == len(ctx) - 1 and later._pending  # nothing written yet
    x, y = now.propose(ctx, 4), later.propose(ctx, 4)
    assert not later._pending and x.tokens.tolist() == y.tokens.tolist()
    assert torch.allclose(now.keys, later.keys, atol=1e-5) and torch.allclose(now.values, later.values, atol=1e-5)
    # control: a drafter whose kept features were never written drafts from a stale cache
    stale = proto.sibling()
    stale.start(ctx, SamplingParams(), None)
    stale.observe(feats[:4], 0)
    for pos in range(4, len(ctx) - 1):
        stale.observe_later(feats[pos : pos + 1], pos)
    stale._pending = []
    assert not torch.allclose(now.keys, stale.keys, atol=1e-5)
    # a new request keeps a shorter prefix: its prefill goes back over kept positions
    for d in (now, later):
        d.observe_later(torch.randn(2, width, generator=torch.Generator().manual_seed(76)), d.length)
        d.start(ctx[:5], SamplingParams(), None)
        d.observe(feats[2:4], 2)
    assert now.length == later.length == 4 and not later._pending
    assert torch.allclose(now.keys[..., :4, :], later.keys[..., :4, :], atol=1e-5)


@pytest.mark.parametrize("method", ["dspark", "auto"])
def test_a_slot_whose_drafter_never_drafted_still_reuses_its_prefix(family, method):  # noqa: F811 (the fixture)
    """Rounds that do not draft (here the SPS table makes any verified token a loss, so the
    adaptive schedule never drafts) tell a learned drafter its features but not their tokens; the
    engine tells it at the request's end, so the slot's next request (the conversation resent
    with a turn appended) prefills only that turn. Control: without that, it prefilled it all."""
    from agentspark.drafters.hybrid import HybridDrafter
    from test_learned_drafters import make_drafter, random_drafter_model

    target, ps, reference, params = family
    model = random_drafter_model(target, "dspark", seed=77)
    flat = [1000.0 / b**3 for b in range(1, 41)]  # steps/s at B = 1, 2, ... tokens: one more token never pays

    def served(track: bool) -> list[int]:
        drafter = make_drafter(model, target)  # its own: a slot's drafter keeps what it was told
        if method == "auto":
            drafter = HybridDrafter(drafter)
        batch = BatchEngine(target, drafter, slots=2, max_draft=4, max_seq_len=128, schedule="adaptive",
                            sps_table=flat)
        if not track:  # the control: the drafter is never told
            batch._release = lambda h, release=batch._release: _without_track(h, release)
        first = batch.generate_many(ps[:2], params)
        assert all(not any(r.drafted for r in res.stats.rounds) for res in first), [
            [r.drafted for r in res.stats.rounds] for res in first]  # nothing was drafted
        follow = [p + r.token_ids + p[:3] for p, r in zip(ps[:2], first)]
        return [r.stats.prefill_tokens for r in batch.generate_many(follow, params)]

    told, control = served(track=True), served(track=False)
    assert all(n <= 4 for n in told), told  # the appended 3 tokens and the last one fed
    assert all(n > 4 for n in control), control


def _without_track(h, release):  # noqa: ANN001, ANN202 (the control above: release without telling the drafter)
    drafter, h._drafter = h._drafter, None
    try:
        release(h)
    finally:
        h._drafter = drafter


@pytest.mark.parametrize("defer", [False, True], ids=["first-token-at-admission", "first-token-in-round"])
def test_rounds_that_feed_an_admission_teach_neither_the_table_nor_the_drafting_rates(tiny, defer):
    """A round holding a just-admitted row waits, in its sync, for that row's prefill (queued just
    before it): its time is the admission's, not the mode's or the lengths', so DraftingRates and
    the SPS table learn only from the other rounds; with the first token read at admission every
    round counts."""
    batch = BatchEngine(tiny, NgramDrafter, slots=2, max_draft=3, max_seq_len=96, schedule="adaptive",
                        sps_table=[100.0] * 8, first_token_in_round=defer)
    observed = []
    batch._rates.observe = lambda *a, **k: observed.append(batch.clock.rounds)  # the round about to be counted
    batch.generate_many(prompts(2, seed=5), SamplingParams(max_new_tokens=6))
    rounds = batch.clock.rounds
    assert rounds >= 3
    assert observed == (list(range(1, rounds)) if defer else list(range(rounds)))  # round 0 admitted both
