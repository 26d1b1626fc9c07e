"""The model runner's logic on the CPU: buckets, positions as device tensors, and the device path
without graphs (the body the CUDA graphs capture) against the host path that is the reference."""

from __future__ import annotations

import pytest
import torch

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.kernels.support import cpu_interpreter, interpreting, triton_available
from agentspark.model.graph_runner import (PREFILL_TOKENS, ROW_BUCKETS, DeviceRunner, key_window, prefill_chunks,
                                          row_bucket)
from agentspark.model.runner import HostRunner, RowWork, make_runner

from conftest import FAMILIES, ours_from_hf, tiny_hf_model

PROMPT = [1, 5, 7, 9, 5, 7, 9, 5, 7, 11, 13]  # repeats: the n-gram drafter finds matches


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return ours_from_hf(tiny_hf_model(request.param))


def test_row_buckets():
    assert [row_bucket(n) for n in (1, 2, 3, 5, 9, 33, 64)] == [1, 2, 4, 8, 16, 64, 64]
    assert ROW_BUCKETS == (1, 2, 4, 8, 16, 32, 64)
    with pytest.raises(ValueError, match="exceed"):
        row_bucket(65)


def test_cpu_gets_the_host_runner_and_graphs_need_cuda(tiny):
    assert isinstance(make_runner(tiny.model, capacity=32), HostRunner)
    assert Engine(tiny).runner.kind == "host"
    with pytest.raises(ValueError, match="CUDA"):
        DeviceRunner(tiny.model, capacity=32)


def test_rows_at_device_positions_equal_one_row_at_a_time(tiny):
    """forward_rows over R rows at different device positions and slots gives each row what a
    host-position forward of that row alone gives, and writes only its own slot."""
    model = tiny.model
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache(64, batch_size=3)
    ref_cache = model.new_cache(64, batch_size=3)
    prompts = {0: torch.randint(0, 96, (1, 20), generator=g), 2: torch.randint(0, 96, (1, 7), generator=g)}
    for slot, ids in prompts.items():
        model(ids, cache, 0, slot=slot)
        model(ids, ref_cache, 0, slot=slot)
    before_slot1 = cache.k[:, 1].clone()
    step = torch.randint(0, 96, (2, 3), generator=g)  # [R, T]
    slots, starts = torch.tensor([2, 0]), torch.tensor([7, 20])
    out = model.forward_rows(step, cache, slots, starts, capture_layers=(0,))
    for r, (slot, start) in enumerate(zip(slots.tolist(), starts.tolist())):
        ref = model(step[r : r + 1], ref_cache, start, slot=slot, capture_layers=(0,))
        assert torch.allclose(out.logits[r], ref.logits[0], atol=1e-5, rtol=1e-5)
        assert torch.allclose(out.hidden[r], ref.hidden[0], atol=1e-5, rtol=1e-5)
        end = start + step.shape[1]
        assert torch.allclose(cache.k[:, slot, :, :end], ref_cache.k[:, slot, :, :end], atol=1e-5)
    assert torch.equal(cache.k[:, 1], before_slot1)  # a slot no row names is untouched


def test_padding_rows_write_only_the_scratch_slot(tiny):
    runner = DeviceRunner(tiny.model, graphs=False, capacity=48, slots=3, max_tokens=3)
    runner.prefill(1, PROMPT, 0)
    k_before = runner.cache.k.clone()
    rows = [RowWork(1, len(PROMPT), [13, 5, 7], SamplingParams(), None) for _ in range(3)]  # 3 rows -> bucket 4
    runner.round(rows)
    changed = (runner.cache.k != k_before).flatten(2).any(-1).any(0)  # [slots + 1]
    assert changed.tolist() == [False, True, False, True]  # slot 1, and the scratch slot (padding)


PARAMS = [
    SamplingParams(max_new_tokens=40),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=3, max_new_tokens=40),
    SamplingParams(temperature=1.0, seed=5, max_new_tokens=40),
]


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "filtered", "sampled"])
def test_device_path_reproduces_the_host_path(tiny, params):
    """Token for token, plain and speculative, greedy and sampled: the device body draws each row's
    random numbers in verify_chain's order from the request's own generator."""
    outputs = {}
    for kind in ("host", "device"):
        for drafter in (None, NgramDrafter()):
            engine = Engine(tiny, drafter, max_draft=4, schedule="full", max_seq_len=128)
            if kind == "device":
                engine.runner = DeviceRunner(tiny.model, graphs=False, capacity=128, max_tokens=5)
            outputs[kind, drafter is None] = engine.generate(PROMPT, params)
    for plain in (True, False):
        assert outputs["device", plain].token_ids == outputs["host", plain].token_ids
    assert sum(r.verified for r in outputs["device", False].stats.rounds) > 0  # drafts went through the verifier


@pytest.mark.skipif(not (triton_available() and interpreting()), reason="needs triton under TRITON_INTERPRET=1")
def test_device_path_with_the_kernels_reproduces_the_host_path():
    """The same, with every kernel (rope_cache, decode_attention, norms, silu_mul, the fused
    verifier) running under Triton's interpreter: the CPU check of the GPU round's logic."""
    tiny = ours_from_hf(tiny_hf_model("qwen3"))
    for params in PARAMS[:2]:
        params = SamplingParams(**{**params.__dict__, "max_new_tokens": 16})
        host = Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=64).generate(PROMPT, params)
        engine = Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=64)
        engine.runner = DeviceRunner(tiny.model, graphs=False, capacity=64, max_tokens=5)
        with cpu_interpreter():
            device = engine.generate(PROMPT, params)
        assert device.token_ids == host.token_ids


def test_probe_leaves_the_session_cache_alone(tiny):
    engine = Engine(tiny, NgramDrafter(), max_draft=3, max_seq_len=64)
    first = engine.generate(PROMPT, SamplingParams(max_new_tokens=8))
    k = engine.cache.k[:, 0].clone()
    engine.runner.probe(4)  # timing writes go to the scratch slot
    assert torch.equal(engine.cache.k[:, 0], k)
    again = engine.generate(PROMPT + first.token_ids, SamplingParams(max_new_tokens=4), reuse_cache=True)
    assert again.stats.prefill_tokens == 1  # the session's prefix was reused


@pytest.mark.parametrize("method", ["dspark", "dflash", "eagle3"])
@pytest.mark.parametrize("schedule", ["full", "adaptive", "threshold"])
def test_device_drafting_is_greedy_lossless(method, schedule):
    """A learned drafter bound to the device runner drafts, schedules and observes through its
    graph bodies (dspark_graph.py, eagle3_graph.py; eager here); greedy output equals plain
    decoding, alone and in the n-gram hybrid."""
    from agentspark import HybridDrafter
    from test_greedy_equivalence import tiny_prompts
    from test_learned_drafters import VOCAB, make_drafter, random_drafter_model

    target = ours_from_hf(tiny_hf_model("qwen3", seed=31, vocab_size=VOCAB, num_hidden_layers=3))
    prompts = tiny_prompts(VOCAB, 3, seed=32)
    params = SamplingParams(max_new_tokens=20)
    plain = Engine(target)
    refs = [plain.generate(p, params, speculative=False).token_ids for p in prompts]
    model = random_drafter_model(target, method, seed=33)
    accepted = 0
    for hybrid in (False, True):
        drafter = make_drafter(model, target)
        drafter = HybridDrafter(drafter) if hybrid else drafter
        engine = Engine(target, drafter, max_draft=6, schedule=schedule, sps_table=[1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
        engine._attach_runner(DeviceRunner(target.model, graphs=False, capacity=256, max_tokens=7,
                                           capture_layers=drafter.capture_layers))
        assert engine._device_drafting
        for prompt, ref in zip(prompts, refs):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref
            accepted += sum(r.accepted for r in result.stats.rounds)
    assert accepted > 0


def test_prefill_chunk_sizes():
    assert prefill_chunks(1) == [32] and prefill_chunks(32) == [32] and prefill_chunks(33) == [128]
    assert prefill_chunks(150) == [128, 32] and prefill_chunks(300) == [128, 128, 128]
    assert PREFILL_TOKENS == (32, 128)
    assert [key_window(e, 4096) for e in (1, 256, 257, 1000, 5000)] == [256, 256, 512, 1024, 4096]
    assert key_window(300, 320) == 320


@pytest.mark.parametrize("capacity", [320, 170], ids=["chunks", "tail-eager"])
def test_chunked_prefill_equals_the_eager_prefill(tiny, capacity):
    """The device runner prefills in padded chunks (the body its prefill graphs capture): the last
    token's logits, the captured features and the prompt's K/V are those of one eager prefill; with
    the padding past the capacity (170: 128 + a 32-chunk would end at 180), the tail goes eagerly."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 96, (150,), generator=g).tolist()
    host = HostRunner(tiny.model, capacity=capacity, capture_layers=(0, 1))
    device = DeviceRunner(tiny.model, graphs=False, capacity=capacity, capture_layers=(0, 1))
    with torch.inference_mode():
        ref = host.prefill(0, ids[:20], 0, capture=True)
        out = device.prefill(0, ids[:20], 0, capture=True)  # one 32-chunk
        assert torch.allclose(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
        ref = host.prefill(0, ids[20:], 20, capture=True)  # the rest, after a kept prefix
        out = device.prefill(0, ids[20:], 20, capture=True)
    assert out.logits.shape == ref.logits.shape and out.hidden.shape == ref.hidden.shape == (130, ref.hidden.shape[1])
    assert torch.allclose(out.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.hidden, ref.hidden, atol=1e-4, rtol=1e-4)
    assert torch.allclose(device.cache.k[:, 0, :, :150], host.cache.k[:, 0, :, :150], atol=1e-4)
    assert device.cache.length == 150
    assert not device.cache.k[:, 1].any()  # the scratch slot: nothing prefilled there


@pytest.mark.parametrize("params", PARAMS[:2], ids=["greedy", "filtered"])
def test_exact_mode_runs_every_step_at_one_shape_and_keeps_the_output(tiny, params):
    """Exact mode's route b (what exact mode takes where the kernels cannot run, as on the CPU
    outside the interpreter): plain steps and verifies all run with T = max_draft + 1 tokens per row
    (padding after a row's own tokens), and the output is still the host path's, plain and speculative."""
    host = {plain: Engine(tiny, None if plain else NgramDrafter(), max_draft=4, schedule="full", max_seq_len=128)
            .generate(PROMPT, params, speculative=not plain).token_ids for plain in (True, False)}
    for plain in (True, False):
        engine = Engine(tiny, None if plain else NgramDrafter(), max_draft=4, schedule="full", max_seq_len=128)
        engine.runner = DeviceRunner(tiny.model, graphs=False, exact=True, capacity=128, max_tokens=5)
        assert engine.generate(PROMPT, params, speculative=not plain).token_ids == host[plain]
        assert {k.tokens for k in engine.runner.buckets} == {5}
        assert engine.runner.kind == "device-eager-exact-b" and engine.runner.route == "b"


def test_exact_mode_keeps_headroom_for_its_padding(tiny):
    """The padding of a step at the last usable position stays inside the cache: the runner offers
    the capacity asked for and holds max_tokens - 1 positions more; a request runs up to the end."""
    runner = DeviceRunner(tiny.model, graphs=False, exact=True, capacity=40, max_tokens=5)
    assert runner.capacity == 40 and runner.cache.capacity == 44
    engine = Engine(tiny, NgramDrafter(), max_draft=4, schedule="full", max_seq_len=40)
    engine.runner = runner
    out = engine.generate(PROMPT * 3, SamplingParams(max_new_tokens=40))
    assert len(PROMPT * 3) + len(out.token_ids) <= 40
