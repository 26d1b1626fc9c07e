"""decode_attention: attention of a few query tokens per row over that row's cached keys.

The decode and verify steps (T = 1..gamma+1 query tokens per row, R rows) attend to the KV cache
up to each row's own length, which lives on the device: row r's tokens sit at positions
starts[r] + t, so query t sees keys [0, starts[r] + t] (causal), or all of [0, starts[r] + T)
(``causal=False``: a drafter's block, which sees itself whole). One captured graph therefore serves
every position and every mix of lengths.

Split-K ("flash decoding"): the keys are cut into fixed chunks of ``SPLIT`` positions; one program
per (row, kv head, chunk) computes a partial softmax over its chunk for all the query heads of its
group and all T tokens at once (GQA: the keys are read once per group), and a second launch merges
the chunks. The chunk size is fixed, not chosen from the batch, so a row's keys are always reduced
in the same order whatever else runs in the launch. Chunks past a row's length do nothing.

Query tiles of 16 rows, whatever T and G: a program walks the T x G query rows of its group 16 at
a time, each tile with the same code (mma.sync's smallest M; a tile of 64 rows would take Hopper's
wgmma, another accumulation). So a query token's scores and softmax run in one tile shape and
reduction tree in a plain step (T = 1) as in a verify (T = 1 + drafts) of any length, and its keys
past its own position are masked to exact zeros: it gets the bits of its own plain step (exact
mode's route a, graph_runner.py). Measured on the H200: a tile sized by T*G (64 rows for
Qwen2.5-1.5B's G = 6 at T = 8) broke that identity, which tiles of 16 keep.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .support import check, check_contiguous, check_same_device, interpreting, kernels_run_on, next_power_of_2

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None

SPLIT = 256  # key positions per chunk (a multiple of BLOCK_N)
BLOCK_N = 64  # keys per inner step
TILE_M = 16  # query rows (token t, head g of the group) per tile


def key_limits(starts: Tensor, T: int, causal: bool) -> Tensor:
    """[R] starts -> [R, T] exclusive key bound of each query token."""
    t = torch.arange(T, device=starts.device)
    return starts[:, None] + (t[None, :] + 1 if causal else T)


def decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, starts: Tensor, causal: bool = True
) -> Tensor:
    """q [R, T, Hq, D]; k_cache, v_cache [slots, Hkv, S, D]; slots, starts [R] long -> [R, T, Hq, D].

    Masked attention over the whole cache capacity: no host sync and no shape from the data, so it
    can be captured in a graph too (the kernel reads only what each row needs)."""
    R, T, Hq, D = q.shape
    S = k_cache.shape[2]
    keys, values = k_cache[slots], v_cache[slots]  # [R, Hkv, S, D]
    visible = torch.arange(S, device=q.device)[None, None, :] < key_limits(starts, T, causal)[:, :, None]  # [R, T, S]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=visible[:, None], scale=D**-0.5,
        enable_gqa=Hq != k_cache.shape[1],
    )  # [R, Hq, T, D]
    return out.transpose(1, 2).contiguous()


if triton is not None:

    @triton.jit
    def _attention_chunk_kernel(
        q_ptr, k_ptr, v_ptr, slot_ptr, start_ptr, part_o_ptr, part_lse_ptr,
        scale_log2, cache_slot_stride, cache_head_stride, cache_pos_stride,
        T: tl.constexpr, G: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
        BLOCK_D: tl.constexpr, TILE_M: tl.constexpr, TILES: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLIT: tl.constexpr, NUM_SPLITS: tl.constexpr, CAUSAL: tl.constexpr, DOT_F32: tl.constexpr,
        SUM_DOT: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        chunk = tl.program_id(2)
        start = tl.load(start_ptr + r)
        kv_len = start + T
        lo = chunk * SPLIT
        if lo < kv_len:
            slot = tl.load(slot_ptr + r)
            d = tl.arange(0, BLOCK_D)
            d_ok = d < D
            hi = tl.minimum(lo + SPLIT, kv_len)
            base = k_ptr + slot * cache_slot_stride + kvh * cache_head_stride
            vbase = v_ptr + slot * cache_slot_stride + kvh * cache_head_stride
            for tile in range(TILES):  # the group's T*G query rows, TILE_M at a time, one code for all
                m = tile * TILE_M + tl.arange(0, TILE_M)  # query row = token t, head g of the group
                t = m // G
                head = kvh * G + m % G
                row_ok = m < T * G
                q = tl.load(q_ptr + ((r * T + t) * HQ + head)[:, None] * D + d[None, :],
                            mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [TILE_M, BLOCK_D]
                if DOT_F32:
                    q = q.to(tl.float32)
                if CAUSAL:
                    limit = start + t + 1  # [TILE_M] exclusive key bound
                else:
                    limit = kv_len + t * 0
                m_i = tl.full([TILE_M], float("-inf"), tl.float32)
                l_i = tl.zeros([TILE_M], tl.float32)
                acc = tl.zeros([TILE_M, BLOCK_D], tl.float32)
                for n0 in range(lo, hi, BLOCK_N):
                    n = n0 + tl.arange(0, BLOCK_N)
                    n_ok = n < hi
                    k = tl.load(base + n[:, None] * cache_pos_stride + d[None, :],
                                mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
                    v = tl.load(vbase + n[:, None] * cache_pos_stride + d[None, :],
                                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                    if DOT_F32:
                        k = k.to(tl.float32)
                        v = v.to(tl.float32)
                    if SUM_DOT:  # the interpreter (support.py): one summation order for every row
                        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)
                    elif DOT_F32:  # float32 activations: no tf32 rounding
                        s = tl.dot(q, tl.trans(k), input_precision="ieee")
                    else:
                        s = tl.dot(q, tl.trans(k))
                    s = s * scale_log2  # [TILE_M, BLOCK_N] scores in log2 units
                    s = tl.where(n[None, :] < limit[:, None], s, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s, axis=1))
                    m_base = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
                    p = tl.exp2(s - m_base[:, None])
                    alpha = tl.exp2(m_i - m_base)
                    l_i = l_i * alpha + tl.sum(p, axis=1)
                    if SUM_DOT:
                        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
                    elif DOT_F32:
                        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
                    else:
                        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                    m_i = m_new
                seen = l_i > 0
                o = acc / tl.where(seen, l_i, 1.0)[:, None]
                lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
                part = ((r * HKV + kvh) * NUM_SPLITS + chunk) * (TILES * TILE_M)
                tl.store(part_o_ptr + (part + m)[:, None] * BLOCK_D + d[None, :], o)
                tl.store(part_lse_ptr + part + m, lse)

    @triton.jit
    def _attention_merge_kernel(
        part_o_ptr, part_lse_ptr, start_ptr, out_ptr,
        T: tl.constexpr, G: tl.constexpr, HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
        BLOCK_D: tl.constexpr, TILE_M: tl.constexpr, TILES: tl.constexpr, SPLIT: tl.constexpr,
        NUM_SPLITS: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        used = (tl.load(start_ptr + r) + T + SPLIT - 1) // SPLIT  # chunks that hold keys of this row
        d = tl.arange(0, BLOCK_D)
        for tile in range(TILES):
            m = tile * TILE_M + tl.arange(0, TILE_M)
            big = tl.full([TILE_M], float("-inf"), tl.float32)
            w_sum = tl.zeros([TILE_M], tl.float32)
            acc = tl.zeros([TILE_M, BLOCK_D], tl.float32)
            for chunk in range(0, used):  # fixed order: chunk 0, 1, ... whatever the launch
                part = ((r * HKV + kvh) * NUM_SPLITS + chunk) * (TILES * TILE_M)
                lse = tl.load(part_lse_ptr + part + m)
                o = tl.load(part_o_ptr + (part + m)[:, None] * BLOCK_D + d[None, :])
                new_big = tl.maximum(big, lse)
                base = tl.where(new_big == float("-inf"), 0.0, new_big)
                scale_old = tl.exp2(big - base)
                w = tl.exp2(lse - base)
                acc = acc * scale_old[:, None] + o * w[:, None]
                w_sum = w_sum * scale_old + w
                big = new_big
            out = acc / tl.where(w_sum > 0, w_sum, 1.0)[:, None]
            t = m // G
            head = kvh * G + m % G
            ok = (m < T * G)[:, None] & (d < D)[None, :]
            tl.store(out_ptr + ((r * T + t) * HQ + head)[:, None] * D + d[None, :], out.to(out_ptr.dtype.element_ty),
                     mask=ok)


def decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, starts: Tensor, causal: bool = True
) -> Tensor:
    """q [R, T, Hq, D] over cache slots ``slots`` [R] from positions ``starts`` [R] -> [R, T, Hq, D]
    (module docstring)."""
    if not kernels_run_on(q, k_cache):
        return decode_attention_reference(q, k_cache, v_cache, slots, starts, causal)
    R, T, Hq, D = q.shape
    n_slots, Hkv, S, Dk = k_cache.shape
    check(Dk == D and Hq % Hkv == 0, f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}")
    check(v_cache.shape == k_cache.shape and v_cache.stride() == k_cache.stride(), "k_cache and v_cache must match")
    check(k_cache.stride(3) == 1 and k_cache.dtype == q.dtype, "cache rows must be contiguous, in q's dtype")
    check(slots.shape == (R,) and starts.shape == (R,), f"slots and starts must be [{R}]")
    check(slots.dtype == torch.long and starts.dtype == torch.long, "slots and starts must be int64")
    for name, t in (("q", q), ("slots", slots), ("starts", starts)):
        check_contiguous(name, t)
    check_same_device(q=q, k_cache=k_cache, slots=slots, starts=starts)
    G = Hq // Hkv
    tiles = triton.cdiv(T * G, TILE_M)
    BLOCK_D = max(16, next_power_of_2(D))
    num_splits = triton.cdiv(S, SPLIT)
    part_o = torch.empty((R, Hkv, num_splits, tiles * TILE_M, BLOCK_D), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((R, Hkv, num_splits, tiles * TILE_M), dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    meta = dict(T=T, G=G, HQ=Hq, HKV=Hkv, D=D, BLOCK_D=BLOCK_D, TILE_M=TILE_M, TILES=tiles, SPLIT=SPLIT,
                NUM_SPLITS=num_splits)
    _attention_chunk_kernel[(R, Hkv, num_splits)](
        q, k_cache, v_cache, slots, starts, part_o, part_lse,
        D**-0.5 * math.log2(math.e), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_N=BLOCK_N, CAUSAL=causal, DOT_F32=interpreting() or q.dtype == torch.float32, SUM_DOT=interpreting(), num_warps=4, **meta,
    )
    _attention_merge_kernel[(R, Hkv)](part_o, part_lse, starts, out, num_warps=4, **meta)
    return out
