"""rope_cache: q/k norm (Qwen3), rotary embedding and the KV-cache write of one layer, one launch.

Input is the fused projection qkv [N, (Hq + 2 Hkv) * D] of N tokens (rows of a batched step,
flattened), with each token's absolute position and cache slot as *device* tensors: nothing here
depends on a host value that changes from step to step, so one captured CUDA graph serves every
position. Keys are normed (if the model has q/k norm) and rotated, values copied, both written to
cache[slot, head, position]; the rotated queries are returned.

Rounding follows the eager decoder (model/layers.py): norm statistics in float32, the normed head
cast back before its weight, cos/sin cast to the activation dtype, and x*cos, swap(x)*sin and their
sum each rounded to it. The rotation is x*cos + swap(x)*signed_sin, swap(x) = [x2, x1] and
signed_sin = [-sin, sin] (layers.rope_tables).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .support import check, check_contiguous, check_same_device, interpreting, kernels_run_on, next_power_of_2

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None


def _norm_heads(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The decoder's RMSNorm over the last dimension (layers.RMSNorm)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


def rope_cache_reference(
    qkv: Tensor, positions: Tensor, slots: Tensor, cos: Tensor, sin: Tensor,
    k_cache: Tensor, v_cache: Tensor, num_heads: int,
    q_norm: Tensor | None = None, k_norm: Tensor | None = None, eps: float = 1e-6,
) -> Tensor:
    """qkv [N, (Hq+2Hkv)*D]; positions, slots [N] long; cos, sin [P, D] float32;
    k_cache, v_cache [slots, Hkv, S, D] (written) -> rotated q [N, Hq, D]."""
    N = qkv.shape[0]
    Hkv, D = k_cache.shape[1], k_cache.shape[3]
    Hq = num_heads
    x = qkv.view(N, Hq + 2 * Hkv, D)
    q, k, v = x[:, :Hq], x[:, Hq : Hq + Hkv], x[:, Hq + Hkv :]
    if q_norm is not None:
        q, k = _norm_heads(q, q_norm, eps), _norm_heads(k, k_norm, eps)
    c = cos[positions].to(qkv.dtype)[:, None]  # [N, 1, D]
    s = sin[positions].to(qkv.dtype)[:, None]  # [N, 1, D]

    def rotate(h: Tensor) -> Tensor:  # [N, H, D]
        swapped = h.view(N, h.shape[1], 2, D // 2).flip(2).view(N, h.shape[1], D)  # [x2, x1]
        return h * c + swapped * s

    k_cache[slots, :, positions] = rotate(k)  # [N, Hkv, D] at (slot, :, position)
    v_cache[slots, :, positions] = v
    return rotate(q).contiguous()


if triton is not None:

    @triton.jit
    def _rope_cache_kernel(
        qkv_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, qn_ptr, kn_ptr, k_ptr, v_ptr, q_out_ptr,
        eps, cache_slot_stride, cache_head_stride, cache_pos_stride,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, QK_NORM: tl.constexpr,
    ):
        n = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        offs = tl.arange(0, BLOCK_D)
        inside = offs < D
        swap = (offs + D // 2) % D  # swap(x) = [x2, x1]
        base = qkv_ptr + n * ((HQ + 2 * HKV) * D) + h * D
        x = tl.load(base + offs, mask=inside, other=0.0)
        xs = tl.load(base + swap, mask=inside, other=0.0)
        dt = x.dtype
        if QK_NORM:
            w_ptr = qn_ptr if h < HQ else kn_ptr
            xf = x.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
            w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)
            ws = tl.load(w_ptr + swap, mask=inside, other=0.0).to(tl.float32)
            x = ((xf * rstd).to(dt).to(tl.float32) * w).to(dt)
            xs = ((xs.to(tl.float32) * rstd).to(dt).to(tl.float32) * ws).to(dt)
        pos = tl.load(pos_ptr + n)
        c = tl.load(cos_ptr + pos * D + offs, mask=inside, other=0.0).to(dt).to(tl.float32)
        s = tl.load(sin_ptr + pos * D + offs, mask=inside, other=0.0).to(dt).to(tl.float32)
        rotated = ((x.to(tl.float32) * c).to(dt).to(tl.float32) + (xs.to(tl.float32) * s).to(dt).to(tl.float32)).to(dt)
        if h < HQ:
            tl.store(q_out_ptr + n * (HQ * D) + h * D + offs, rotated, mask=inside)
        else:
            kvh = h - HQ
            slot = tl.load(slot_ptr + n)
            where = slot * cache_slot_stride + kvh * cache_head_stride + pos * cache_pos_stride + offs
            tl.store(k_ptr + where, rotated, mask=inside)
            v = tl.load(qkv_ptr + n * ((HQ + 2 * HKV) * D) + (HQ + HKV + kvh) * D + offs, mask=inside, other=0.0)
            tl.store(v_ptr + where, v, mask=inside)


def rope_cache(
    qkv: Tensor, positions: Tensor, slots: Tensor, cos: Tensor, sin: Tensor,
    k_cache: Tensor, v_cache: Tensor, num_heads: int,
    q_norm: Tensor | None = None, k_norm: Tensor | None = None, eps: float = 1e-6,
) -> Tensor:
    if not kernels_run_on(qkv, k_cache):
        return rope_cache_reference(qkv, positions, slots, cos, sin, k_cache, v_cache, num_heads, q_norm, k_norm, eps)
    N = qkv.shape[0]
    n_slots, Hkv, S, D = k_cache.shape
    Hq = num_heads
    check(qkv.dim() == 2 and qkv.shape[1] == (Hq + 2 * Hkv) * D,
          f"qkv must be [N, {(Hq + 2 * Hkv) * D}], got {tuple(qkv.shape)}")
    check(positions.shape == (N,) and slots.shape == (N,), f"positions and slots must be [{N}]")
    check(positions.dtype == torch.long and slots.dtype == torch.long, "positions and slots must be int64")
    check(D % 2 == 0, f"head_dim must be even, got {D}")
    check(cos.shape == sin.shape and cos.shape[1] == D and cos.dtype == torch.float32, "cos/sin must be [P, D] float32")
    check(v_cache.shape == k_cache.shape and v_cache.stride() == k_cache.stride(), "k_cache and v_cache must match")
    check(k_cache.stride(3) == 1 and k_cache.dtype == qkv.dtype, "cache rows must be contiguous, in qkv's dtype")
    check((q_norm is None) == (k_norm is None), "q_norm and k_norm come together")
    for name, t in (("qkv", qkv), ("positions", positions), ("slots", slots), ("cos", cos), ("sin", sin)):
        check_contiguous(name, t)
    check_same_device(qkv=qkv, positions=positions, slots=slots, cos=cos, k_cache=k_cache)
    q = torch.empty((N, Hq, D), dtype=qkv.dtype, device=qkv.device)
    norms = (q_norm, k_norm) if q_norm is not None else (qkv, qkv)  # unused pointers without norm
    _rope_cache_kernel[(N, Hq + Hkv)](
        qkv, positions, slots, cos, sin, *norms, k_cache, v_cache, q,
        eps, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HQ=Hq, HKV=Hkv, D=D, BLOCK_D=next_power_of_2(D), QK_NORM=q_norm is not None, num_warps=1 if D <= 64 or interpreting() else 2,
    )
    return q
