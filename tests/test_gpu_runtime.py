"""The GPU runtime on a CUDA device (marked gpu: run through the device tool, never in CI; the
output of the last device run is committed under examples/results/).

- The graph runner reproduces the eager reference path token for token (float32, greedy).
- A round has no hidden host sync: under torch's sync debug mode "error" (which raises on every
  implicit synchronisation) graph rounds run; the one explicit wait is the round's result.
- Sampling through the graphs and the fused verifier keeps the target's distribution, and the
  same test catches the Appendix-A scheduler (test_scheduler_equivalence's design, on the GPU).
"""

from __future__ import annotations

import pytest
import torch

from agentspark import DraftModelDrafter, Engine, NgramDrafter, SamplingParams
from agentspark.model.config import DecoderConfig
from agentspark.model.graph_runner import DeviceRunner
from agentspark.model.loading import LoadedModel
from agentspark.model.runner import HostRunner, RowWork

from conftest import FAMILIES, ours_from_hf, tiny_hf_model

pytestmark = pytest.mark.gpu
PROMPT = [1, 5, 7, 9, 5, 7, 9, 5, 7, 11, 13]


def on_cuda(loaded):
    loaded.model.to("cuda")
    return loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_reproduce_the_eager_path_float32(family):
    target = on_cuda(ours_from_hf(tiny_hf_model(family)))
    for drafter in (None, NgramDrafter()):
        graph = Engine(target, drafter, max_draft=4, schedule="full", max_seq_len=128)
        eager = Engine(target, drafter, max_draft=4, schedule="full", max_seq_len=128, graphs=False)
        assert isinstance(graph.runner, DeviceRunner) and isinstance(eager.runner, HostRunner)
        params = SamplingParams(max_new_tokens=48)
        a, b = graph.generate(PROMPT, params), eager.generate(PROMPT, params)
        assert a.token_ids == b.token_ids


def test_a_round_has_no_hidden_host_sync():
    target = on_cuda(ours_from_hf(tiny_hf_model("qwen3")))
    runner = DeviceRunner(target.model, capacity=64, max_tokens=5)
    runner.prefill(0, PROMPT, 0)
    rows = [RowWork(0, len(PROMPT), [13, 5, 7, 9], SamplingParams(), None)]
    sampled = [RowWork(0, len(PROMPT), [13, 5, 7], SamplingParams(temperature=0.7, top_p=0.9),
                       torch.Generator("cuda").manual_seed(1))]
    runner.round(rows), runner.round(sampled)  # capture first: capturing may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            runner.round(rows)
            runner.round(sampled)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_graphs_equal_the_eager_prefill(family):
    """Chunked prefill under graphs (padded 128- and 32-token chunks, logits at a device index)
    against one eager prefill: the last logits, the features and the prompt's K/V (float32);
    then replays of the captured chunks at new positions and slots run without a host sync."""
    target = on_cuda(ours_from_hf(tiny_hf_model(family)))
    ids = torch.randint(0, 96, (150,), generator=torch.Generator().manual_seed(7)).tolist()
    graph = DeviceRunner(target.model, capacity=320, slots=2, capture_layers=(0, 1))
    eager = HostRunner(target.model, capacity=320, slots=2, capture_layers=(0, 1))
    with torch.inference_mode():
        for slot, (lo, hi) in ((0, (0, 20)), (0, (20, 150)), (1, (0, 150))):
            a = graph.prefill(slot, ids[lo:hi], lo, capture=True)
            b = eager.prefill(slot, ids[lo:hi], lo, capture=True)
            assert torch.allclose(a.logits, b.logits, atol=1e-4, rtol=1e-4)
            assert torch.allclose(a.hidden, b.hidden, atol=1e-4, rtol=1e-4)
        assert torch.allclose(graph.cache.k[:, :2, :, :150], eager.cache.k[:, :2, :, :150], atol=1e-4)
        torch.cuda.set_sync_debug_mode("error")
        try:
            graph.prefill(1, ids[:100], 30, capture=True)
            graph.prefill(0, ids[:10], 140, capture=True)  # buckets captured above: capture may sync
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_graph_sampling_keeps_the_distribution_and_catches_no_early_stop():
    """test_scheduler_equivalence.py's experiment with every model on the GPU: the spec runs go
    through the graph runner's sampled rounds and the fused verifier."""
    import test_scheduler_equivalence as design

    vocab = dict(vocab_size=6, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    target = on_cuda(ours_from_hf(tiny_hf_model("llama", seed=21, init_std=0.1, **vocab)))
    draft = on_cuda(ours_from_hf(tiny_hf_model("llama", seed=22, init_std=0.1, **vocab)))
    plain, _ = design.run(Engine(target), range(10_000, 10_000 + design.N), speculative=False)

    def spec(schedule, c1, seed_base):
        drafter = design.KeyedConfidenceDrafter(DraftModelDrafter(draft, 6), c1)
        engine = Engine(target, drafter, max_draft=2, schedule=schedule, sps_table=design.SPS)
        assert isinstance(engine.runner, DeviceRunner)
        return design.run(engine, range(seed_base, seed_base + design.N), speculative=True)

    outs, first_round = spec("adaptive", 0.9, 0)
    assert set(first_round) == {1, 2}
    ps = design.p_values(outs, plain)
    assert min(ps.values()) >= design.ALPHA / len(ps), ps
    outs, first_round = spec("no-early-stop", 0.3, 40_000)
    assert set(first_round) == {0, 2}
    ps = design.p_values(outs, plain)
    assert min(ps.values()) < design.ALPHA / len(ps), ps


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=40),
                                    SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_new_tokens=40)],
                         ids=["greedy", "sampled"])
def test_chained_plain_steps_equal_one_step_at_a_time(params):
    """Plain decoding on CUDA keeps one step in flight (DeviceRunner.plain_stream): the tokens, an
    early stop at EOS, and the session the next request reuses are those of one step at a time."""
    import dataclasses

    target = on_cuda(ours_from_hf(tiny_hf_model("llama")))
    eager_engine = Engine(target, max_seq_len=128, graphs=False)
    free = eager_engine.generate(PROMPT, params)
    stop_at = free.token_ids[len(free.token_ids) // 2]
    target = dataclasses.replace(target, eos_token_ids=frozenset({stop_at}))
    graph, eager = Engine(target, max_seq_len=128), Engine(target, max_seq_len=128, graphs=False)
    a, b = graph.generate(PROMPT, params), eager.generate(PROMPT, params)
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "stop"
    follow = PROMPT + a.token_ids + [3, 4]
    c = graph.generate(follow, params, reuse_cache=True)
    d = eager.generate(follow, params, reuse_cache=True)
    assert c.token_ids == d.token_ids and c.stats.prefill_tokens == d.stats.prefill_tokens == 3


@pytest.mark.parametrize("method", ["dspark", "dflash", "dspark-reduced-vocab", "eagle3"])
def test_device_drafting_under_graphs_is_greedy_lossless(method):
    """DSpark/DFlash/EAGLE-3 propose and observe as CUDA graphs feeding the runner's graphs (float32)."""
    from agentspark import HybridDrafter
    from test_greedy_equivalence import tiny_prompts
    from test_learned_drafters import VOCAB, make_drafter, random_drafter_model

    target = on_cuda(ours_from_hf(tiny_hf_model("qwen3", seed=31, vocab_size=VOCAB, num_hidden_layers=3)))
    prompts = tiny_prompts(VOCAB, 4, seed=32)
    params = SamplingParams(max_new_tokens=24)
    refs = [Engine(target, graphs=False).generate(p, params).token_ids for p in prompts]
    extra = {"draft_vocab": tuple(range(VOCAB - 4))} if method.endswith("reduced-vocab") else {}
    model = random_drafter_model(target, method.split("-")[0], seed=33, **extra)
    accepted = 0
    for hybrid in (False, True):
        drafter = make_drafter(model, target)
        drafter = HybridDrafter(drafter) if hybrid else drafter
        engine = Engine(target, drafter, max_draft=6, schedule="adaptive")
        assert engine._device_drafting and (drafter.learned if hybrid else drafter).device_drafting.graphs
        for prompt, ref in zip(prompts, refs):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref
            accepted += sum(r.accepted for r in result.stats.rounds)
    assert accepted > 0


@pytest.mark.parametrize("method", ["dspark", "eagle3"])
def test_device_drafting_round_has_no_hidden_host_sync(method):
    """After prefill (which reads its first token) every round of a device-drafting request runs
    under sync debug mode "error": the drafter's graph, the copies into the bucket, the round's
    graph; the one explicit wait is the round's result. (EAGLE-3's first round after a prefill
    pairs the whole prompt eagerly and is left out.)"""
    from test_learned_drafters import VOCAB, make_drafter, random_drafter_model

    target = on_cuda(ours_from_hf(tiny_hf_model("llama", seed=31, vocab_size=VOCAB, num_hidden_layers=3)))
    drafter = make_drafter(random_drafter_model(target, method, seed=33, draft_vocab=tuple(range(VOCAB - 4))), target)
    engine = Engine(target, drafter, max_draft=6, schedule="adaptive")
    for params in (SamplingParams(max_new_tokens=12), SamplingParams(temperature=0.8, seed=3, max_new_tokens=12)):
        engine.generate([1, 2, 3, 4], params)  # the same request once first: every graph captured
        chunks = engine.stream([1, 2, 3, 4], params)
        next(chunks)  # prefill
        if method == "eagle3":
            next(chunks)  # its first round pairs the whole prompt eagerly (longer than the graph's span)
        torch.cuda.set_sync_debug_mode("error")
        try:
            rest = list(chunks)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert rest[-1].result is not None and len(rest[-1].result.stats.rounds) > 1


@pytest.mark.parametrize("method", ["ngram", "dspark", "eagle3"])
def test_exact_mode_is_bitwise_lossless_in_bf16(method):
    """Exact mode in bfloat16 (the dtype where fast mode is only equal up to near-ties): greedy
    speculative output equals plain decoding in the same mode token for token, for a host drafter
    and device drafters, across prompts of a random model with a vocabulary large enough for ties
    to matter; and fast mode's count on the same prompts is reported beside it (not asserted: it
    may happen to be equal)."""
    from test_greedy_equivalence import tiny_prompts
    from test_learned_drafters import VOCAB, make_drafter, random_drafter_model

    from agentspark.model.weights import build_model

    hf = tiny_hf_model("qwen3", seed=41, vocab_size=VOCAB, num_hidden_layers=4)
    target = LoadedModel(build_model(DecoderConfig.from_hf(hf.config.to_dict()), hf.state_dict(), dtype=torch.bfloat16,
                                     device="cuda"), tokenizer=None, source="tiny")
    prompts = tiny_prompts(VOCAB, 6, seed=42)
    params = SamplingParams(max_new_tokens=48)
    counts = {}
    for exact in (True, False):
        refs = [Engine(target, exact=exact).generate(p, params).token_ids for p in prompts]
        drafter = NgramDrafter() if method == "ngram" else make_drafter(random_drafter_model(target, method, seed=43), target)
        engine = Engine(target, drafter, max_draft=6, schedule="full", exact=exact)
        assert engine.runner.exact is exact
        counts[exact] = sum(engine.generate(p, params).token_ids == ref for p, ref in zip(prompts, refs))
    print(f"{method}: identical in exact mode {counts[True]}/{len(prompts)}, fast mode {counts[False]}/{len(prompts)}")
    assert counts[True] == len(prompts)


def test_exact_mode_rows_are_bitwise_the_plain_steps_and_fast_mode_is_not():
    """The property exact mode rests on, at a mid-size bf16 shape (4 layers of hidden 2048, vocab
    32k): teacher-forced, the logits of row t of a 9-token verify forward at start s equal, bit for
    bit, those of the 9-token forward at start s + t whose row 0 is that token (exact mode's plain
    step). The control: the same 9-token step through an LM head that sums two half-width GEMMs
    (the same product, rounded differently) must differ from the verify row somewhere, else the
    check could not see a rounding difference. Forwards of other shapes (fast mode's 1-token plain
    step, and 2, 4 and 16 tokens) are counted and printed, not asserted: whether they round like
    the 9-token rows is the GPU's choice of kernels. On the run-33 H200 the 1-token forward matched
    all 54 rows, on run 36's all four shapes did, and a control built on them failed both times
    with exact mode passing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from gpu_shapes import random_model

    cfg = DecoderConfig(family="qwen3", vocab_size=32000, hidden_size=2048, intermediate_size=6144, num_layers=4,
                        num_heads=16, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                        max_position_embeddings=1024, qk_norm=True)
    model = random_model(cfg, seed=5)
    cache = model.new_cache(512, batch_size=2)
    g = torch.Generator().manual_seed(6)
    seq = torch.randint(0, 32000, (1, 300), generator=g).cuda()
    T, same_exact, rows = 9, 0, 0
    other_shapes = (1, 2, 4, 16)  # tokens per forward of the control's launches (1: fast mode's plain step)
    same_other = dict.fromkeys(other_shapes, 0)
    head, split_head, same_split = model.lm_head, SplitKHead(model.lm_head), 0
    with torch.inference_mode():
        model(seq[:, :200], cache, 0, slot=0)
        model(seq[:, :200], cache, 0, slot=1)
        slot0, slot1 = torch.tensor([0], device="cuda"), torch.tensor([1], device="cuda")
        for s in range(200, 200 + 6 * T, T):
            verify = model.forward_rows(seq[:, s : s + T], cache, slot0, torch.tensor([s], device="cuda")).logits[0]
            for t in range(T):
                p = s + t  # the plain steps run on slot 1, whose cache holds the same tokens
                at = torch.tensor([p], device="cuda")
                exact = model.forward_rows(seq[:, p : p + T], cache, slot1, at).logits[0, 0]
                for n in other_shapes:
                    other = model.forward_rows(seq[:, p : p + n], cache, slot1, at).logits[0, 0]
                    same_other[n] += torch.equal(verify[t], other)
                model.lm_head = split_head
                try:
                    split = model.forward_rows(seq[:, p : p + T], cache, slot1, at).logits[0, 0]
                finally:
                    model.lm_head = head
                same_split += torch.equal(verify[t], split)
                # re-write slot 1's K/V at p.. from the verify-shaped launch, as exact mode's plain path does
                model.forward_rows(seq[:, p : p + T], cache, slot1, at)
                same_exact += torch.equal(verify[t], exact)
                rows += 1
    print(f"verify rows equal to exact-mode plain steps {same_exact}/{rows}; to the split-K head's {same_split}/{rows}; "
          "to forwards of other shapes: " + ", ".join(f"{n} tokens {same_other[n]}/{rows}" for n in other_shapes))
    assert same_exact == rows
    assert same_split < rows, "a differently rounded LM head matched every row: the check could not fail"


class SplitKHead(torch.nn.Module):
    """The negative control's LM head: x @ W as the sum of its two halves over the hidden size,
    each GEMM rounded to the model's dtype before the add (what a split-K kernel may do)."""

    def __init__(self, head) -> None:
        super().__init__()
        self.weight_t = head.weight_t  # [H, V]

    def forward(self, x, row_invariant: bool = False):
        half = x.shape[-1] // 2
        return x[..., :half] @ self.weight_t[:half] + x[..., half:] @ self.weight_t[half:]
