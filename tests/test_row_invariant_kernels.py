"""Issue 15, route a: the decode-phase kernels give a row the same bits however many rows share the
launch (and wherever in it the row sits). That is what exact mode needs under batching, where a
request's rows run beside other requests' in launches of varying size.

Checked here for add_rms_norm, silu_mul and decode_attention (its key chunks are fixed positions,
not a split chosen from the batch), bitwise, launches of 1..12 rows against each row alone; on
the CPU under Triton's interpreter (the kernels' logic: one program per row, no reduction across
rows), on the GPU as the kernels run there; and for decode_attention, a verify token's bits against the
plain step at its position. The products' kernel (kernels/gemv.py) has its own invariance tests
(test_gemv_kernel.py); the whole row-invariant forward, all kernels wired, is test_route_a.py.
"""

from __future__ import annotations

import pytest
import torch

from agentspark.kernels.decode_attention import SPLIT, decode_attention
from agentspark.kernels.rms_norm import add_rms_norm
from agentspark.kernels.silu_mul import silu_mul

from test_kernels import DEVICE, kernels, pytestmark  # noqa: F401  (where the kernels run, and when they can)

ROWS = [1, 3, 12]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_rows_are_launch_invariant(dtype):
    g = torch.Generator().manual_seed(5)
    H = 96
    residual = torch.randn(max(ROWS), H, generator=g).to(DEVICE, dtype)
    delta = torch.randn(max(ROWS), H, generator=g).to(DEVICE, dtype)
    weight = (1 + 0.1 * torch.randn(H, generator=g)).to(DEVICE, dtype)
    with kernels():
        alone = [add_rms_norm(delta[i:i + 1], residual[i:i + 1], weight, 1e-6) for i in range(max(ROWS))]
        for R in ROWS:
            out, res = add_rms_norm(delta[:R], residual[:R], weight, 1e-6)
            for i in range(R):
                assert torch.equal(out[i], alone[i][0][0]) and torch.equal(res[i], alone[i][1][0]), (R, i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_rows_are_launch_invariant(dtype):
    g = torch.Generator().manual_seed(6)
    gate_up = torch.randn(max(ROWS), 2 * 80, generator=g).to(DEVICE, dtype)
    with kernels():
        alone = [silu_mul(gate_up[i:i + 1]) for i in range(max(ROWS))]
        for R in ROWS:
            out = silu_mul(gate_up[:R])
            assert all(torch.equal(out[i], alone[i][0]) for i in range(R)), R


@pytest.mark.parametrize("T", [1, 4])
def test_decode_attention_rows_are_launch_invariant(T):
    """A row's attention over its own slot is the same alone, among 3 rows, or among 6 whose
    lengths differ from it by chunks (the other rows reduce over other chunk counts)."""
    g = torch.Generator().manual_seed(7 + T)
    Hq, Hkv, D, S, n_slots = 6, 2, 32, 3 * SPLIT + 40, 6
    k = torch.randn(n_slots, Hkv, S, D, generator=g).to(DEVICE)
    v = torch.randn(n_slots, Hkv, S, D, generator=g).to(DEVICE)
    q = torch.randn(6, T, Hq, D, generator=g).to(DEVICE)
    slots = torch.tensor([4, 0, 2, 1, 5, 3], device=DEVICE)
    starts = torch.tensor([2 * SPLIT + 3, 5, SPLIT - 2, 3 * SPLIT, 17, SPLIT + 1], device=DEVICE)
    with kernels():
        alone = [decode_attention(q[i:i + 1], k, v, slots[i:i + 1], starts[i:i + 1]) for i in range(6)]
        for R in (3, 6):
            out = decode_attention(q[:R], k, v, slots[:R], starts[:R])
            assert all(torch.equal(out[i], alone[i][0]) for i in range(R)), R
        # the same row placed last in the launch instead of first
        order = torch.tensor([1, 2, 0], device=DEVICE)
        moved = decode_attention(q[order], k, v, slots[order], starts[order])
        assert torch.equal(moved[2], alone[0][0])


@pytest.mark.parametrize("G", [1, 3, 6])
def test_decode_attention_tokens_are_verify_length_invariant(G):
    """Token t of a verify of 9 gets the bits of the plain step at its position (T = 1, start + t):
    the query tiles have one shape whatever T is (9 x 6 = 54 query rows go in four tiles of 16)."""
    g = torch.Generator().manual_seed(11 + G)
    Hkv, D, S, T = 2, 32, SPLIT + 40, 9
    k = torch.randn(2, Hkv, S, D, generator=g).to(DEVICE, torch.bfloat16)
    v = torch.randn(2, Hkv, S, D, generator=g).to(DEVICE, torch.bfloat16)
    q = torch.randn(1, T, G * Hkv, D, generator=g).to(DEVICE, torch.bfloat16)
    slot = torch.tensor([1], device=DEVICE)
    start = SPLIT - 4  # the verify's tokens straddle a key chunk's end
    with kernels():
        verify = decode_attention(q, k, v, slot, torch.tensor([start], device=DEVICE))  # [1, T, Hq, D]
        for t in range(T):
            plain = decode_attention(q[:, t : t + 1].contiguous(), k, v, slot, torch.tensor([start + t], device=DEVICE))
            assert torch.equal(verify[0, t], plain[0, 0]), t
