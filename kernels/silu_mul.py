"""silu_mul: the gated MLP's activation, silu(gate) * up, read from the fused gate_up projection.

gate_up [N, 2I] holds gate in its first I columns and up in the last I (model/decoder.py's MLP).
Rounding follows the eager decoder: silu in float32 rounded to the activation dtype, then the
product rounded again. One launch instead of three (split views, silu, multiply).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .support import check, check_contiguous, kernels_run_on

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None


def silu_mul_reference(gate_up: Tensor) -> Tensor:
    """gate_up [..., 2I] -> silu(gate) * up [..., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, I, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < I
        g = tl.load(gu_ptr + row * 2 * I + cols, mask=mask, other=0.0)
        u = tl.load(gu_ptr + row * 2 * I + I + cols, mask=mask, other=0.0)
        gf = g.to(tl.float32)
        act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
        tl.store(out_ptr + row * I + cols, (act * u.to(tl.float32)).to(g.dtype), mask=mask)


def silu_mul(gate_up: Tensor) -> Tensor:
    if not kernels_run_on(gate_up):
        return silu_mul_reference(gate_up)
    check(gate_up.shape[-1] % 2 == 0, f"gate_up's last dimension must be even, got {gate_up.shape[-1]}")
    check_contiguous("gate_up", gate_up)
    I = gate_up.shape[-1] // 2
    rows = gate_up.numel() // (2 * I)
    out = torch.empty((*gate_up.shape[:-1], I), dtype=gate_up.dtype, device=gate_up.device)
    BLOCK = 1024
    _silu_mul_kernel[(rows, triton.cdiv(I, BLOCK))](gate_up, out, I, BLOCK=BLOCK, num_warps=4)
    return out
