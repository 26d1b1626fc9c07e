"""Issue 15, route a: a row-invariant decode-phase forward gives every token of every row the bits
its own one-row plain step gives, however many rows (of how many requests) and tokens share the
launch. That is what makes greedy speculation exact under batching on the GPU (graph_runner.py).

The check: prefill a context into each of R slots (each its own length), run one-row, one-token
plain steps over the next tokens (the reference: what plain decoding computes), then launches of
R rows x T tokens over the same tokens; each token's logits must equal its plain step's, bit for
bit. On the CPU the kernels run under Triton's interpreter, in bfloat16 so that the products take
the gemv kernel (float32 on the CPU has its own row-invariant route, linear.py): that checks the
wiring (every product of a row-invariant forward goes through the invariant kernel). On the GPU
the same check runs on a tiny shape, on the default model's shape and on Qwen2.5-1.5B's attention
(6 query heads a KV head: 54 query rows a verify of 9, where a tile sized by them once broke the
identity) with launches of 1..64 rows, beside a negative control: the same launches through
cuBLAS (fast mode) must differ somewhere, or the check could not fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agentspark.model.config import DecoderConfig

from test_kernels import DEVICE, kernels, pytestmark  # noqa: F401  (where the kernels run, and when they can)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from gpu_shapes import random_model  # noqa: E402

TINY = DecoderConfig(family="qwen3", vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4,
                     max_position_embeddings=256, qk_norm=True)
# SmolLM2-135M's shape (the default target): 30 layers, 9 query heads over 3 KV heads
DEFAULT_SHAPE = DecoderConfig(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                              num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
                              rope_theta=1e5, max_position_embeddings=2048)
# Qwen2.5-1.5B's layer shape (12 query heads over 2 KV heads, head_dim 128), 4 layers, a smaller vocabulary
GQA6_SHAPE = DecoderConfig(family="qwen2", vocab_size=32000, hidden_size=1536, intermediate_size=8960, num_layers=4,
                           num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                           max_position_embeddings=2048, qkv_bias=True)


class Setup:
    """R slots, slot s holding a context of contexts[s] tokens, and the plain steps' logits at the
    next ``tokens`` positions of each: ref[s][t] [V]."""

    def __init__(self, cfg: DecoderConfig, slots: int, tokens: int, seed: int = 0, scratch: bool = False) -> None:
        self.model = random_model(cfg, device=DEVICE, dtype=torch.bfloat16, seed=seed)
        self.tokens = tokens
        g = torch.Generator().manual_seed(seed + 1)
        self.contexts = [int(x) for x in torch.randint(5, 40, (slots,), generator=g)]
        self.seq = torch.randint(0, cfg.vocab_size, (slots, 40 + tokens), generator=g).to(DEVICE)
        # ``scratch``: one more slot, as a runner's cache has (its graphs' warm-up and padding rows write there)
        self.cache = self.model.new_cache(64 + tokens, batch_size=slots + scratch)
        self.ref: list[list[torch.Tensor]] = []
        with torch.inference_mode(), kernels():
            for s, n in enumerate(self.contexts):
                self.model(self.seq[s : s + 1, :n], self.cache, 0, slot=s)  # the prefix: a prefill
                self.ref.append([self.step(s, n + t, 1, row_invariant=True)[0, 0] for t in range(tokens)])

    def step(self, s: int, start: int, T: int, row_invariant: bool) -> torch.Tensor:
        return self.launch([s], T, row_invariant, [start])[0:1]

    def launch(self, slots: list[int], T: int, row_invariant: bool, starts: list[int] | None = None) -> torch.Tensor:
        """Logits [R, T, V] of one forward_rows over ``slots``, each at its context's end (or ``starts``)."""
        starts = starts if starts is not None else [self.contexts[s] for s in slots]
        ids = torch.stack([self.seq[s, p : p + T] for s, p in zip(slots, starts)])  # [R, T]
        with torch.inference_mode(), kernels():
            return self.model.forward_rows(
                ids, self.cache, torch.tensor(slots, device=DEVICE), torch.tensor(starts, device=DEVICE),
                row_invariant=row_invariant,
            ).logits

    def mismatches(self, slots: list[int], T: int, row_invariant: bool = True) -> int:
        logits = self.launch(slots, T, row_invariant)
        return sum(not torch.equal(logits[r, t], self.ref[s][t]) for r, s in enumerate(slots) for t in range(T))


def order(n: int, seed: int) -> list[int]:
    """n slots in a shuffled order: a slot's row sits elsewhere in the launch than in another."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU runs the larger test below")
def test_route_a_rows_equal_plain_steps_under_the_interpreter():
    setup = Setup(TINY, slots=5, tokens=3)
    for R, T in ((1, 3), (3, 1), (3, 2), (5, 3)):
        assert setup.mismatches(order(5, R * T)[:R], T) == 0, (R, T)
    # the control: the same launches through torch's bfloat16 matmul give other bits
    assert setup.mismatches(order(5, 15), 3, row_invariant=False) > 0


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU suite runs the engines on real weights (test_gpu_runtime.py)")
def test_batched_route_a_equals_each_request_alone_under_the_interpreter(monkeypatch):
    """Three greedy requests speculating side by side through the device runner's body in route a
    (bfloat16, the kernels under the interpreter) get the tokens each gets from plain decoding
    alone: the rows' bits depend neither on the verify length nor on the rows beside them. Then
    again with the first request reporting logprobs, so every round it is in runs in a bucket that
    also keeps the raw logits (``BucketKey.logits``), the others' rows with it. One set of plain
    references serves both batches (the interpreter makes each generation cost seconds)."""
    from agentspark import Engine, NgramDrafter, SamplingParams
    from agentspark.batch import BatchEngine
    from agentspark.model.graph_runner import DeviceRunner
    from agentspark.model.loading import LoadedModel

    # prefill chunks of 8 and 16 tokens: route a's chunks attend through the kernel, slow under the interpreter
    monkeypatch.setattr("agentspark.model.graph_runner.PREFILL_TOKENS", (8, 16))
    target = LoadedModel(random_model(TINY, device=DEVICE, dtype=torch.bfloat16, seed=3), tokenizer=None, source="tiny")
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 96, (int(n),), generator=g).tolist() * 2 for n in (5, 8, 11)]
    params = SamplingParams(max_new_tokens=8)

    def runner(slots: int) -> DeviceRunner:
        return DeviceRunner(target.model, graphs=False, exact=True, exact_route="a", capacity=64, slots=slots,
                            max_tokens=4)

    with kernels():
        refs = []
        for p in prompts:
            engine = Engine(target, max_draft=3, schedule="full", max_seq_len=64)
            engine.runner = runner(1)
            refs.append(engine.generate(p, params, speculative=False).token_ids)
        for reporting in (False, True):
            batch = BatchEngine(target, NgramDrafter, slots=3, max_draft=3, max_seq_len=64, reuse_prefix=False)
            batch.runner = runner(3)
            assert batch.runner.kind == "device-eager-exact-a"
            per = [SamplingParams(max_new_tokens=8, logprobs=2 if reporting and i == 0 else None) for i in range(3)]
            results = batch.generate_many(prompts, per)
            assert [r.token_ids for r in results] == refs, reporting
            assert (results[0].logprobs is not None) is reporting
            assert sum(x.accepted for r in results for x in r.stats.rounds) > 0  # drafts were verified and kept


def test_forward_rows_refuses_what_route_a_cannot_promise():
    model = random_model(TINY, device=DEVICE, dtype=torch.bfloat16)
    cache = model.new_cache(32)
    ids = torch.zeros(1, 4, dtype=torch.long, device=DEVICE)
    where = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="prefill chunk"):
        model.forward_rows(ids, cache, where, where, logit_index=where, key_window=32, row_invariant=True)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="bitwise bfloat16 on the GPU")
@pytest.mark.parametrize("cfg", [TINY, DEFAULT_SHAPE, GQA6_SHAPE], ids=["tiny", "default-shape", "gqa6-shape"])
def test_route_a_rows_equal_plain_steps_in_launches_of_1_to_64_rows(cfg):
    setup = Setup(cfg, slots=64, tokens=9)
    cases = [(R, T) for R in (1, 2, 3, 8, 16, 33, 64) for T in (1, 2, 5, 9)]
    bad = {(R, T): setup.mismatches(order(64, R * 10 + T)[:R], T) for R, T in cases}
    control = {(R, T): setup.mismatches(order(64, R * 10 + T)[:R], T, row_invariant=False) for R, T in cases}
    print(f"route a mismatches {sum(bad.values())} of {sum(R * T for R, T in cases)} tokens; "
          f"cuBLAS (the control) {sum(control.values())}")
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}
    if cfg is DEFAULT_SHAPE:  # the check can fail: there cuBLAS's shapes change a row's bits (2,143 of
        assert any(control.values())  # 2,159 tokens on the H200; on the tiny shape none)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="bitwise bfloat16 on the GPU")
def test_route_a_reference_rounds_keep_every_rows_bits():
    """A round in which one row needs its logits on the host (logprobs; a grammar's mask takes the
    same graphs, test_graph_round_masks.py) runs in the round graphs, so that every row of it, the
    others too, gets the bits of its own one-row plain step (a request's tokens must not depend on
    whether such a request runs beside it). Control: the old path for such rounds (``eager_round``,
    one ``model`` forward per row) differs from them somewhere at the default model's shape."""
    from agentspark.model.graph_runner import DeviceRunner
    from agentspark.model.runner import RowWork, eager_round
    from agentspark.sampling import SamplingParams
    from agentspark.verify import verify_chain

    setup = Setup(DEFAULT_SHAPE, slots=8, tokens=5, scratch=True)
    runner = DeviceRunner(setup.model, graphs=True, exact=True, exact_route="a", capacity=64 + 5, slots=8, max_tokens=5)
    # the slots' prefixes are in it, and its last slot is the runner's scratch: without it a capture's
    # warm-up wrote past slot 7, into the next layer's slot 0 (9 mismatches of 72, all of slot 0, run 26)
    runner.cache = setup.cache
    assert runner.scratch == 8
    greedy = SamplingParams(temperature=0.0)

    def rows(T: int) -> list[RowWork]:
        return [RowWork(s, n, setup.seq[s, n : n + T].tolist(), greedy, None, logits=True)
                for s, n in enumerate(setup.contexts)]

    bad = control = 0
    with torch.inference_mode(), kernels():
        for T in (1, 3, 5):
            new = runner.round(rows(T))
            old = eager_round(runner, rows(T), verify_chain)
            for s, (a, b) in enumerate(zip(new, old)):
                bad += sum(not torch.equal(a.logits[t], setup.ref[s][t]) for t in range(T))
                control += sum(not torch.equal(b.logits[t], setup.ref[s][t]) for t in range(T))
    print(f"reference rounds: route a's path {bad} mismatches of {8 * 9}; the old path {control}")
    assert bad == 0
    assert control > 0


def prefill_mismatches(cfg: DecoderConfig, graphs: bool, route_a: bool, cuts: tuple[int, ...] = (13,),
                       n: int = 40) -> tuple[int, int]:
    """One prompt of ``n`` tokens written three ways into three slots of a device runner: one
    prefill call, prefills cut at ``cuts`` (what prefix reuse does: the rest after a reused
    prefix), and one-token plain steps. Returns (K/V positions of any layer, over both other ways,
    whose bits differ from the one-token steps'; prefill calls whose last logits differ from the
    step's at that position)."""
    from agentspark.model.graph_runner import DeviceRunner
    from agentspark.model.runner import RowWork
    from agentspark.sampling import SamplingParams

    model = random_model(cfg, device=DEVICE, dtype=torch.bfloat16, seed=7)
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(8)).tolist()
    greedy = SamplingParams(temperature=0.0)
    with torch.inference_mode(), kernels():  # the runner too: route a needs the kernels where it is made
        runner = DeviceRunner(model, graphs=graphs, exact=route_a, exact_route="a" if route_a else None,
                              capacity=64, slots=3, max_tokens=2)
        assert runner.route == ("a" if route_a else None)
        whole = runner.prefill(0, ids, 0).logits[0]
        starts = (0, *cuts, n)
        cut = [runner.prefill(1, ids[a:b], a).logits[0] for a, b in zip(starts, starts[1:])][-1]
        steps = [runner.round([RowWork(2, p, [t], greedy, None, logits=True)])[0].logits[0] for p, t in enumerate(ids)]
    k, v = runner.cache.k, runner.cache.v  # [L, slots + 1, Hkv, S, D]

    def differ(a: int) -> int:
        same = (k[:, a, :, :n] == k[:, 2, :, :n]) & (v[:, a, :, :n] == v[:, 2, :, :n])  # [L, Hkv, n, D]
        return int((~same.flatten(0, 1).permute(1, 0, 2).flatten(1).all(-1)).sum())  # positions

    logits = sum(not torch.equal(x, steps[-1]) for x in (whole, cut))
    return differ(0) + differ(1), logits


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU runs the larger test below")
def test_route_a_prefill_writes_the_bits_of_plain_steps_however_cut_under_the_interpreter(monkeypatch):
    """Prefix reuse prefills the rest of a prompt from wherever the reused prefix ends; in route a
    a prefill chunk is a row-invariant step, so the K/V and logits it leaves are those of one-token
    steps however the prompt is cut. Control: fast mode's chunks (SDPA over a key window, torch's
    bfloat16 products) leave other bits (so did route a's before its chunks took decode attention:
    every position). Chunks of 8 and 16 tokens here: the interpreter's attention over a chunk of 32
    took 14 s."""
    monkeypatch.setattr("agentspark.model.graph_runner.PREFILL_TOKENS", (8, 16))
    assert prefill_mismatches(TINY, graphs=False, route_a=True, cuts=(5,), n=12) == (0, 0)
    assert sum(prefill_mismatches(TINY, graphs=False, route_a=False, cuts=(5,), n=12)) > 0


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="bitwise bfloat16 on the GPU")
@pytest.mark.parametrize("cfg", [DEFAULT_SHAPE, GQA6_SHAPE], ids=["default-shape", "gqa6-shape"])
def test_route_a_prefill_writes_the_bits_of_plain_steps_however_cut(cfg):
    cuts = (5, 37, 41)  # chunks of 32 with 5 and 32 real tokens, 4 real tokens, the rest in a 32
    ours = prefill_mismatches(cfg, graphs=True, route_a=True, cuts=cuts, n=60)
    control = prefill_mismatches(cfg, graphs=True, route_a=False, cuts=cuts, n=60)
    print(f"prefill vs one-token steps: route a {ours}, fast mode (the control) {control}")
    assert ours == (0, 0)
    assert sum(control) > 0
