"""add_rms_norm: the residual add and the RMSNorm after it, in one pass over each row.

    residual' = residual + delta          (in the activation dtype, as the decoder adds)
    out       = weight * norm(residual')  (statistics in float32, cast back, then the weight)

This is the decoder's order (Hugging Face's Llama/Qwen numerics, model/layers.py): the normed row
is rounded to the activation dtype before the weight multiply. ``delta`` None is the plain norm.
One launch instead of three or four (add, cast, norm, cast, multiply): at batch 1 every layer runs
two of these, so on a 36-layer model this saves ~200 launches a step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .support import check, check_contiguous, check_dtype, check_same_device, kernels_run_on, next_power_of_2

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - the reference serves where Triton is missing
    triton = None


def add_rms_norm_reference(
    delta: Tensor | None, residual: Tensor, weight: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """residual [..., H] (+ delta [..., H]) -> (normed [..., H], the new residual [..., H])."""
    x = residual if delta is None else residual + delta
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps), x
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype), x


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(
        delta_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, H, eps,
        HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < H
        x = tl.load(res_ptr + row * H + offs, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(delta_ptr + row * H + offs, mask=mask, other=0.0)
            x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # rounded like the decoder's add
            tl.store(res_out_ptr + row * H + offs, x, mask=mask)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
        normed = (xf * rstd).to(x.dtype).to(tl.float32)  # cast back before the weight (HF order)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * H + offs, (normed * w).to(x.dtype), mask=mask)


def add_rms_norm(delta: Tensor | None, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The fused op where the kernel runs (CUDA, or the interpreter), else the reference."""
    if not kernels_run_on(residual, weight):
        return add_rms_norm_reference(delta, residual, weight, eps)
    H = residual.shape[-1]
    check(weight.shape == (H,), f"weight must be [{H}], got {tuple(weight.shape)}")
    check_contiguous("residual", residual)
    check_dtype("residual", residual, torch.bfloat16, torch.float16, torch.float32)
    check(weight.dtype == residual.dtype, f"weight dtype {weight.dtype} must equal the activations' {residual.dtype}")
    if delta is not None:
        check(delta.shape == residual.shape, f"delta {tuple(delta.shape)} must match residual {tuple(residual.shape)}")
        check(delta.dtype == residual.dtype, f"delta dtype {delta.dtype} must equal residual's {residual.dtype}")
        check_contiguous("delta", delta)
        check_same_device(delta=delta, residual=residual, weight=weight)
    rows = residual.numel() // H
    out = torch.empty_like(residual)
    res_out = torch.empty_like(residual) if delta is not None else residual
    _add_rms_norm_kernel[(rows,)](
        delta if delta is not None else residual, residual, weight, out, res_out, H, eps,
        HAS_DELTA=delta is not None, BLOCK=next_power_of_2(H), num_warps=4 if H <= 2048 else 8,
    )
    return out, res_out
