"""Row-invariant mode's "blocks" route (agentspark/model/linear.py): every row of a oneDNN call of
4 to 16 rows has the bits it has in any other such call, whatever the other rows hold and wherever
it sits, so a verify forward reads each weight once for all its rows and still equals plain
decoding bit for bit. The bitwise properties are checked on every matmul shape of the tiny test
models and of Qwen2.5-0.5B and 1.5B (random weights: the kernel oneDNN picks depends on the
shape, not on the values); the thread policy by reading the counts back."""

from __future__ import annotations

import pytest
import torch

from agentspark.model import linear
from agentspark.model.config import DecoderConfig
from agentspark.model.decoder import DecoderModel
from agentspark.model.linear import LinearT, blas_owns_the_cores, block_matmul, openblas_threads, pack_weight

pytestmark = pytest.mark.skipif(linear.ROW_KERNEL != "blocks", reason="torch without oneDNN: the rows route")

# (in, out) of qkv, o, gate_up, down and the LM head
TINY = [(64, 128), (64, 64), (64, 256), (128, 64), (64, 96), (64, 192), (48, 64)]
QWEN_05B = [(896, 1152), (896, 896), (896, 9728), (4864, 896)]
QWEN_15B = [(1536, 2048), (1536, 1536), (1536, 17920), (8960, 1536)]
HEADS = [(896, 151936), (1536, 151936)]


def random_packed(k: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return pack_weight(0.02 * torch.randn(k, m, generator=g))  # from weight_t [in, out]


def assert_rows_invariant(k: int, m: int, row_counts: list[int], seed: int = 0) -> None:
    """Row r of an N-row call equals row r of the largest call, for every N; and a row moved to
    another place among other rows keeps its bits."""
    packed = random_packed(k, m, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(max(row_counts), k, generator=g)  # [N, in]
    full = block_matmul(x, packed)  # [N, out]
    for n in row_counts:
        assert torch.equal(block_matmul(x[:n], packed), full[:n]), f"{n} rows of ({k}, {m})"
    others = torch.randn(9, k, generator=g)
    for r in range(9):  # x[0] at row r of a 9-row call whose other rows are different
        moved = others.clone()
        moved[r] = x[0]
        assert torch.equal(block_matmul(moved, packed)[r], full[0]), f"row 0 moved to {r} of ({k}, {m})"


@pytest.mark.parametrize("k,m", TINY)
def test_tiny_shapes_rows_do_not_depend_on_the_call(k, m):
    assert_rows_invariant(k, m, list(range(1, 21)))  # 17..20: a second call after 16 rows


@pytest.mark.parametrize("k,m", QWEN_05B + QWEN_15B)
def test_qwen_shapes_rows_do_not_depend_on_the_call(k, m):
    with torch.inference_mode():
        assert_rows_invariant(k, m, list(range(1, 17)))


@pytest.mark.parametrize("k,m", HEADS)
def test_lm_heads_rows_do_not_depend_on_the_call(k, m):
    with torch.inference_mode():
        assert_rows_invariant(k, m, [1, 2, 3, 4, 5, 9, 16])


def test_blocks_match_the_float32_product():
    packed_from = 0.02 * torch.randn(96, 160)
    x = torch.randn(7, 96)
    got = block_matmul(x, pack_weight(packed_from))
    assert torch.allclose(got, x.double().matmul(packed_from.double()).float(), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def qwen_05b_2_layers() -> DecoderModel:
    """Qwen2.5-0.5B's shapes (every matmul of it, the 151,936-token head included) in 2 layers."""
    cfg = DecoderConfig(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                        num_layers=2, num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6,
                        rope_theta=1e6, max_position_embeddings=4096, qkv_bias=True, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = DecoderModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.02 * torch.randn_like(p))
    return model.eval()


def test_qwen_05b_shape_verify_rows_are_plain_steps(qwen_05b_2_layers):
    """The property greedy equality rests on, on the 0.5B shape: one 9-token verify forward gives
    the logits of 9 one-token steps bit for bit."""
    model = qwen_05b_2_layers
    ids = torch.randint(0, 151936, (1, 41), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        cache = model.new_cache(64)
        model(ids[:, :32], cache, 0)
        steps = [model(ids[:, t : t + 1], cache, t, row_invariant=True).logits for t in range(32, 41)]
        verify = model(ids[:, 32:41], cache, 32, row_invariant=True).logits  # [1, 9, V]
    assert torch.equal(verify, torch.cat(steps, dim=1))


def test_a_verify_reads_each_weight_once(qwen_05b_2_layers, monkeypatch):
    """A 9-token verify forward makes one oneDNN call per linear, all rows in it (not one
    vector-matrix product per row, which cost about a plain step per row)."""
    calls: list[int] = []
    real = linear.block_matmul

    def counting(x, packed):
        calls.append(x.shape[0])
        return real(x, packed)

    monkeypatch.setattr(linear, "block_matmul", counting)
    model = qwen_05b_2_layers
    linears = sum(isinstance(m, LinearT) for m in model.modules())
    ids = torch.randint(0, 151936, (1, 25))
    with torch.inference_mode():
        cache = model.new_cache(32)
        model(ids[:, :16], cache, 0)
        calls.clear()
        model(ids[:, 16:25], cache, 16, row_invariant=True)
    assert calls == [9] * linears


def test_packed_weight_follows_the_weight():
    lin = LinearT(32, 48)
    with torch.no_grad():
        lin.weight_t.normal_()
    x = torch.randn(2, 32)
    with torch.inference_mode():
        before = lin(x, row_invariant=True)
        with torch.no_grad():
            lin.weight_t.mul_(2.0)  # an in-place update: a new version, the same storage
        after = lin(x, row_invariant=True)
    assert torch.equal(after, 2.0 * before)


def test_forward_threads_follow_the_policy(monkeypatch):
    """Inside a CPU float32 forward the matmuls run on CPU_THREADS threads (OpenBLAS and torch's
    pool, which oneDNN uses); the caller's counts come back on exit."""
    monkeypatch.setattr(linear, "CPU_THREADS", 1)
    torch_before, blas_before = torch.get_num_threads(), openblas_threads()
    torch.set_num_threads(2)
    if blas_before is not None:
        openblas_threads(2)
    try:
        with torch.inference_mode(), blas_owns_the_cores(torch.zeros(1)):
            assert torch.get_num_threads() == 1
            assert openblas_threads() in (None, 1)
        assert torch.get_num_threads() == 2
        assert openblas_threads() in (None, 2)
    finally:
        torch.set_num_threads(torch_before)
        if blas_before is not None:
            openblas_threads(blas_before)


@pytest.mark.parametrize("route", ["blocks", "rows"])
def test_rows_of_different_requests_share_a_forward_bitwise(qwen_05b_2_layers, route, monkeypatch):
    """forward_host_rows (the CPU's batched rounds): rows of different requests, each in its own
    slot at its own position, in one forward get the logits and K/V of their own forwards, bit for
    bit: 5 plain steps, and 3 verifies of 4 tokens (the 0.5B shape, both matmul routes)."""
    monkeypatch.setattr(linear, "ROW_KERNEL", route)
    model = qwen_05b_2_layers
    g = torch.Generator().manual_seed(11)
    lengths = [30, 17, 41, 8, 25]
    seqs = [torch.randint(0, 151936, (1, n + 4), generator=g) for n in lengths]
    with torch.inference_mode():
        for T in (1, 4):
            shared, alone = model.new_cache(64, batch_size=5), model.new_cache(64, batch_size=5)
            for slot, (n, ids) in enumerate(zip(lengths, seqs)):
                model(ids[:, :n], shared, 0, slot=slot)
                model(ids[:, :n], alone, 0, slot=slot)
            rows = list(range(5)) if T == 1 else [0, 2, 4]
            x = torch.cat([seqs[r][:, lengths[r] : lengths[r] + T] for r in rows])  # [R, T]
            out = model.forward_host_rows(x, shared, rows, [lengths[r] for r in rows]).logits
            for k, r in enumerate(rows):
                ref = model(x[k : k + 1], alone, lengths[r], slot=r, row_invariant=True).logits[0]
                assert torch.equal(out[k], ref), f"row {r}, T = {T}"
            assert torch.equal(shared.k, alone.k) and torch.equal(shared.v, alone.v)
