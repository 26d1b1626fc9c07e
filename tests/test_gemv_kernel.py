"""The skinny-GEMM kernel (kernels/gemv.py) against its reference, and its row invariance.

On a machine without a GPU it runs under Triton's interpreter (conftest sets TRITON_INTERPRET=1
before triton is imported), which checks the logic: the masks at ragged K and N, the split-K
slices and their fixed-order reduction, the bias, the launcher's checks. The interpreter truncates
float32 -> bfloat16 and the kernel upcasts dot operands there, so 16-bit outputs are held to a
couple of units in the last place and float32 tight. Row invariance is bitwise everywhere: a row's
result may not depend on M, on its neighbours, or on its position in the tile. Shapes are small:
the interpreter runs each program in Python.
"""

from __future__ import annotations

import pytest
import torch

from agentspark.kernels.gemv import (
    MAX_ROWS, GemvConfig, gemv, gemv_reference, pick_config, split_layout, sweep_configs,
)

from test_kernels import DEVICE, kernels, pytestmark  # noqa: F401  (where the kernels run, and when they can)


def case(M: int, K: int, N: int, dtype: torch.dtype, seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(DEVICE, dtype)
    w = torch.randn(K, N, generator=g).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if bias else None
    return x, w, b


def assert_close(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """float32: within 1e-6 of the scale sum|x||w| (orders below a bfloat16 unit); 16-bit: two
    units in the last place of each output, plus the float32 slack of a different summation order."""
    ref = gemv_reference(x, w, b)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    scale = (x.float().abs() @ w.float().abs()).max().item()
    err = (out.float() - ref.float()).abs()
    if x.dtype == torch.float32:
        assert err.max().item() <= 1e-6 * scale
    else:
        bound = 2 * torch.finfo(x.dtype).eps * ref.float().abs() + 1e-6 * scale
        assert bool((err <= bound).all()), f"max error {err.max().item()}"


SPLIT3 = GemvConfig(block_n=64, block_k=64, split_k=3, num_warps=4, num_stages=2)  # K 300: slices 128+128+44
NARROW = GemvConfig(block_n=16, block_k=64, split_k=1, num_warps=2, num_stages=3)
CONFIGS = [None, SPLIT3, NARROW]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "default" if c is None else c.name)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_reference(dtype, config, with_bias):
    x, w, b = case(9, 300, 150, dtype, seed=1, bias=with_bias)  # K and N not multiples of any block
    with kernels():
        out = gemv(x, w, b, config=config)
    assert_close(out, x, w, b)


@pytest.mark.parametrize("M,K,N", [(1, 5, 1), (16, 37, 19), (3, 130, 70), (16, 64, 64)])
def test_gemv_ragged_and_tiny_shapes(M, K, N):
    for config in (None, GemvConfig(32, 16, 4, 4, 2)):
        x, w, b = case(M, K, N, torch.float32, seed=K, bias=True)
        with kernels():
            out = gemv(x, w, b, config=config)
        assert_close(out, x, w, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "default" if c is None else c.name)
def test_gemv_rows_are_bitwise_invariant(dtype, config):
    """Row i of an M-row call is row i of the 16-row call, bit for bit, for every M; a row keeps
    its bits among other rows and at another position (row 0 of a 1-row call). float32 is the
    sharp case: a 16-bit output's rounding hides most changes of the float32 summation order."""
    x, w, b = case(MAX_ROWS, 300, 150, dtype, seed=2, bias=True)
    with kernels():
        full = gemv(x, w, b, config=config)  # [16, N]
        for M in range(1, MAX_ROWS + 1):
            assert torch.equal(gemv(x[:M], w, b, config=config), full[:M]), f"M = {M}"
        for i in range(MAX_ROWS):
            assert torch.equal(gemv(x[i : i + 1], w, b, config=config)[0], full[i]), f"row {i} alone"
        others = case(MAX_ROWS, 300, 150, dtype, seed=3)[0] * 100  # different neighbours, other magnitudes
        keep = torch.arange(MAX_ROWS, device=DEVICE) % 3 == 0
        mixed = torch.where(keep[:, None], x, others)
        got = gemv(mixed, w, b, config=config)
    assert torch.equal(got[keep], full[keep])


@pytest.mark.parametrize("config", [None, SPLIT3], ids=lambda c: "default" if c is None else c.name)
def test_gemv_rows_past_one_tile_are_bitwise_invariant(config):
    """Calls of more than one 16-row tile (the batched engine's verify: requests x tokens rows): a
    row has the bits it has alone wherever it sits, in the first tile, a middle one or a ragged last
    one, and the call matches the reference."""
    x, w, b = case(45, 300, 150, torch.float32, seed=4, bias=True)
    with kernels():
        alone = torch.cat([gemv(x[i : i + 1], w, b, config=config) for i in range(45)])
        for M in (17, 33, 45):
            assert torch.equal(gemv(x[:M], w, b, config=config), alone[:M]), f"M = {M}"
        order = torch.randperm(45, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        assert torch.equal(gemv(x[order].contiguous(), w, b, config=config), alone[order])
        assert_close(gemv(x, w, b, config=config), x, w, b)


def test_split_layout_covers_k_without_empty_slices():
    for K in (1, 5, 64, 300, 4096, 12288, 8960):
        for cfg in (GemvConfig(64, 64, 3), GemvConfig(64, 128, 16), GemvConfig(32, 256, 1)):
            splits, per = split_layout(K, cfg)
            assert 1 <= splits <= cfg.split_k and per % cfg.block_k == 0
            assert (splits - 1) * per < K <= splits * per  # every slice holds some of K


def test_pick_config_ignores_m_and_sweep_configs_are_valid():
    for K, N in ((4096, 4096), (4096, 6144), (12288, 4096), (4096, 151936), (1536, 2048), (300, 150)):
        picks = {pick_config(M, K, N) for M in range(1, MAX_ROWS + 1)}
        assert len(picks) == 1  # one tiling for every M: the row invariance
        cands = sweep_configs(K, N)
        assert cands[0] == picks.pop() and len(set(cands)) == len(cands) <= 10
    assert pick_config(1, 4096, 4096).split_k > 1 and pick_config(1, 4096, 151936).split_k == 1


def test_gemv_config_validates():
    for bad in (dict(block_n=48), dict(block_k=8), dict(split_k=0), dict(num_warps=3), dict(num_stages=0)):
        with pytest.raises(ValueError):
            GemvConfig(**bad)


def test_gemv_launcher_checks_its_inputs():
    x, w, b = case(4, 64, 32, torch.bfloat16, bias=True)
    with kernels():
        with pytest.raises(ValueError, match="weight_t dtype"):
            gemv(x, w.float())
        with pytest.raises(ValueError, match="x must be one of"):
            gemv(x.to(torch.float64), w.to(torch.float64))
        with pytest.raises(ValueError, match="x must be contiguous"):
            gemv(x.t().contiguous().t(), w)
        with pytest.raises(ValueError, match="weight_t must be contiguous"):
            gemv(x, w.t().contiguous().t())
        with pytest.raises(ValueError, match="rows, got 0"):
            gemv(torch.zeros(0, 64, dtype=x.dtype, device=DEVICE), w)
        with pytest.raises(ValueError, match="does not fit"):
            gemv(x[:, :32].contiguous(), w)
        with pytest.raises(ValueError, match="bias must be"):
            gemv(x, w, b[:16])
        with pytest.raises(ValueError, match="bias dtype"):
            gemv(x, w, b.float())


@pytest.mark.skipif(DEVICE != "cpu", reason="the fallback is what CPU tensors get outside the interpreter")
def test_gemv_falls_back_to_the_reference_outside_the_interpreter():
    x, w, b = case(5, 70, 40, torch.float32, bias=True)
    assert torch.equal(gemv(x, w, b), gemv_reference(x, w, b))
