"""gemv: the skinny matrix product of decode and verify steps, x [M, K] @ weight_t [K, N] (+ bias),
each row's bits independent of M and of the row's place in the call.

At batch 1 a decode step (and a verify step of up to 16 tokens) is a chain of products whose cost
is reading the weight: 2*K*N bytes against 2*M*K*N flops, M <= 16. cuBLAS picks its kernel by
shape, M included, so a row's result can depend on how many rows share the call: on the H200
(examples/results/gpu_gemv_h200.json) the Qwen3-8B down projection (K 12,288) gives a row other
bits in a call of 9 rows than in a call of 1, so a verify forward does not give that row what a
plain step gives. This kernel is row-invariant on every shape and config measured there, at the
speed of cuBLAS (the 8B step's products: 4.11 ms against 4.17 ms, cold L2; copy floor 3.62 ms).
Under batching (exact mode's route a, DESIGN.md) the rows of many requests share one call, up to
64 requests x 9 tokens: the rows go in tiles of 16, each tile its own programs with the same
arithmetic, so a row computes the same bits in a call of 1 row as in one of 576.

Design (one tiling for every M, fixed by (K, N) and the config alone):

    grid (cdiv(M, 16), cdiv(N, BLOCK_N), SPLIT_K); program (i, j, s) owns rows [16i, 16i+16),
    columns [j*BLOCK_N, +BLOCK_N) and the s-th contiguous slice of K (a whole number of BLOCK_K
    blocks, the same slices whatever M is)
      acc [16, BLOCK_N] fp32 = 0
      for k0 over its slice, BLOCK_K at a time (in order):   # the weight tile is read once per tile
          x tile [16, BLOCK_K]        rows >= M masked to 0  # tiny, from L2
          w tile [BLOCK_K, BLOCK_N]   coalesced along N      # the stream; num_stages in flight
          acc = tl.dot(x, w, acc)     tensor cores, fp32 accumulation
    SPLIT_K == 1: out = (acc + bias) in x's dtype
    SPLIT_K  > 1: acc -> partial [SPLIT_K, M, N] fp32; a second small launch sums the slices
                  in the order s = 0, 1, ... per element, adds the bias, casts. No atomics.

The row tiles are the grid's first (fastest-launched) dimension, so the programs that read one
weight tile run together, and those after the first can find it in L2.

Why this is row-invariant: the rows always sit in 16-row tiles (padded with zeros, never a
different tile shape for a different M), a dot product's k-order is fixed by BLOCK_K and the
loop, the K slices by (K, BLOCK_K, SPLIT_K), and the split reduction is one fixed sequential sum:
nothing row m computes reads another row's values or depends on M. ``pick_config`` therefore
ignores M (its argument is kept so callers state the call they mean): a row's bits change only
with the config, so one config must serve every M of a shape (a benchmark may sweep configs;
a runtime must then fix one per shape).

Why split-K at all: o_proj (N 4096) has 64 column tiles of 64, half of an H200's 132 SMs;
cutting K in 4 gives 256 programs, enough bytes in flight to approach copy bandwidth. Its price
is a second launch reading SPLIT_K*M*N*4 bytes (1 MB at M 16, o_proj). Wide products (gate_up,
lm_head) have tiles enough and use SPLIT_K 1.

Compiled for sm_90 (triton 3.6 and 3.9, ahead of time on a CPU machine), the 64 x 128 x 4-stage
config is mma.sync (M 16 is below wgmma's 64) fed by a 3-buffer cp.async pipeline of 16-byte
copies: 60 KB of shared memory and 64 registers a program, so 3 programs (~100 KB of the weight
in flight) per SM.

The bias is added in float32 to the accumulated sum before the single rounding (as cuBLASLt's
bias epilogue and F.linear do; ``linear_t`` rounds the product and then the sum, twice).
Capturable in a CUDA graph: no host sync, and the outputs (and the split-K partials) are
``torch.empty`` of shapes given by the arguments. Under the interpreter the dot operands are
upcast to float32 (kernels.support), so bfloat16 there is close, not bitwise, to the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .support import check, check_contiguous, check_dtype, check_same_device, interpreting, kernels_run_on

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - the reference serves where Triton is missing
    triton = None

MAX_ROWS = 16  # rows of a tile (tl.dot's smallest M): every call computes its rows in tiles of this many
MAX_CALL_ROWS = 1 << 15  # rows of one call (64 requests x 9 tokens is 576; the reduction's grid holds M)
REDUCE_BLOCK = 1024  # columns per program of the split-K reduction
TARGET_PROGRAMS = 256  # pick_config splits K until there are this many programs (~2 per H100/H200 SM)
MIN_K_PER_SPLIT = 256  # ... but never into slices shorter than this


@dataclass(frozen=True)
class GemvConfig:
    """The tiling of one call. Numerics depend on (block_k, split_k) with K, and the kernel's
    code on all fields; a row's bits are the same for every M under one config."""

    block_n: int = 64  # output columns per program (64 bf16 = one 128-byte line per weight row)
    block_k: int = 128  # weight rows per loop step
    split_k: int = 1  # K slices (programs per column tile); > 1 adds the reduction launch
    num_warps: int = 4
    num_stages: int = 4  # weight tiles in flight per program (software pipelining)

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k"):
            v = getattr(self, name)
            check(v >= 16 and v & (v - 1) == 0, f"{name} must be a power of two >= 16, got {v}")
        check(self.split_k >= 1, f"split_k must be >= 1, got {self.split_k}")
        check(self.num_warps in (1, 2, 4, 8, 16), f"num_warps must be a power of two <= 16, got {self.num_warps}")
        check(self.num_stages >= 1, f"num_stages must be >= 1, got {self.num_stages}")

    @property
    def name(self) -> str:
        return f"n{self.block_n}k{self.block_k}s{self.split_k}w{self.num_warps}p{self.num_stages}"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pick_config(M: int, K: int, N: int) -> GemvConfig:
    """The default tiling for a [K, N] weight: 64 x 128 tiles, K split (by powers of two) until
    there are ~TARGET_PROGRAMS programs or a slice would be shorter than MIN_K_PER_SPLIT.
    Independent of M by design (module docstring)."""
    del M  # the tiling must not depend on the row count: that is the row invariance
    cfg = GemvConfig()
    tiles = _cdiv(N, cfg.block_n)
    split = 1
    while tiles * split < TARGET_PROGRAMS and K // (2 * split) >= MIN_K_PER_SPLIT:
        split *= 2
    return GemvConfig(split_k=split)


def sweep_configs(K: int, N: int) -> list[GemvConfig]:
    """A small set of tilings worth timing for a [K, N] weight (examples/gpu_gemv.py): the default,
    its split halved and doubled, deeper and wider tiles, a narrow tile with more column programs."""
    base = pick_config(1, K, N)
    s = base.split_k
    k_blocks = max(1, _cdiv(K, 128))
    cands = [
        base,
        GemvConfig(64, 128, max(1, s // 2), 4, 4),
        GemvConfig(64, 128, min(2 * s, k_blocks), 4, 4),
        GemvConfig(64, 256, s, 4, 3),
        GemvConfig(128, 64, min(2 * s, k_blocks), 4, 4),
        GemvConfig(128, 128, min(2 * s, k_blocks), 8, 3),
        GemvConfig(32, 256, max(1, s // 2), 4, 4),
        GemvConfig(64, 64, s, 4, 6),
    ]
    out: list[GemvConfig] = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


def gemv_reference(x: Tensor, weight_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [M, K] @ weight_t [K, N] (+ bias [N]) -> [M, N] in x's dtype, computed in float32 and
    rounded once (the bias added before the rounding, as the kernel does)."""
    out = x.float() @ weight_t.float()  # [M, N] fp32
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


if triton is not None:

    @triton.jit(do_not_specialize=["M"])
    def _gemv_kernel(
        x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, M, K, N, k_per_split,
        HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr, SUM_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_m = tl.program_id(0)  # the row tile: fastest, so one weight tile's readers run together
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] rows of this tile (those < M are real)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output columns
        rk = tl.arange(0, BLOCK_K)  # [BLOCK_K]
        row_ok = rm < M
        n_ok = rn < N
        k_lo = pid_k * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        x_ptrs = x_ptr + rm[:, None] * K + (k_lo + rk)[None, :]  # [BLOCK_M, BLOCK_K]
        w_ptrs = w_ptr + k_lo.to(tl.int64) * N + rk[:, None] * N + rn[None, :]  # [BLOCK_K, BLOCK_N]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):  # in order: the k-order of every output is fixed
            k_ok = (k0 + rk) < k_hi
            x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if SUM_DOT:  # the interpreter (support.py): one summation order for every row
                acc += tl.sum(x.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
            elif DOT_F32:  # float32 inputs: exact float32 products, no tf32
                acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K * N
        out_ok = row_ok[:, None] & n_ok[None, :]
        if SPLIT:
            tl.store(part_ptr + (pid_k * M + rm)[:, None] * N + rn[None, :], acc, mask=out_ok)  # [S, M, N]
        else:
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_ok)

    @triton.jit(do_not_specialize=["M"])
    def _gemv_reduce_kernel(
        part_ptr, b_ptr, out_ptr, M, N,
        SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    ):
        rn = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] columns of row m
        m = tl.program_id(1)
        ok = rn < N
        acc = tl.load(part_ptr + m * N + rn, mask=ok, other=0.0)
        for s in tl.static_range(1, SPLIT_K):  # slice 0, 1, ...: one order whatever the launch
            acc += tl.load(part_ptr + (s * M + m) * N + rn, mask=ok, other=0.0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * N + rn, acc.to(out_ptr.dtype.element_ty), mask=ok)


def split_layout(K: int, cfg: GemvConfig) -> tuple[int, int]:
    """(slices actually launched, K per slice): whole BLOCK_K blocks, none of the slices empty."""
    k_blocks = max(1, _cdiv(K, cfg.block_k))
    per = _cdiv(k_blocks, min(cfg.split_k, k_blocks))  # blocks per slice
    return _cdiv(k_blocks, per), per * cfg.block_k


def gemv(x: Tensor, weight_t: Tensor, bias: Tensor | None = None, *, config: GemvConfig | None = None) -> Tensor:
    """x [M, K] @ weight_t [K, N] (+ bias [N]) -> [M, N], any M (in tiles of 16 rows): the kernel
    where it runs (CUDA, or the interpreter), else ``gemv_reference``. ``config`` None: ``pick_config``."""
    if not kernels_run_on(x, weight_t):
        return gemv_reference(x, weight_t, bias)
    check(x.dim() == 2 and weight_t.dim() == 2, f"x and weight_t must be 2-D, got {tuple(x.shape)} and {tuple(weight_t.shape)}")
    M, K = x.shape
    K2, N = weight_t.shape
    check(K == K2, f"x [{M}, {K}] does not fit weight_t [{K2}, {N}]")
    check(1 <= M <= MAX_CALL_ROWS, f"gemv takes 1..{MAX_CALL_ROWS} rows, got {M}")
    check(K >= 1 and N >= 1, f"empty product: K {K}, N {N}")
    check_dtype("x", x, torch.bfloat16, torch.float16, torch.float32)
    check(weight_t.dtype == x.dtype, f"weight_t dtype {weight_t.dtype} must equal x's {x.dtype}")
    check_contiguous("x", x)
    check_contiguous("weight_t", weight_t)
    if bias is not None:
        check(bias.shape == (N,), f"bias must be [{N}], got {tuple(bias.shape)}")
        check(bias.dtype == x.dtype, f"bias dtype {bias.dtype} must equal x's {x.dtype}")
        check_contiguous("bias", bias)
        check_same_device(x=x, weight_t=weight_t, bias=bias)
    else:
        check_same_device(x=x, weight_t=weight_t)
    cfg = config if config is not None else pick_config(M, K, N)
    check(isinstance(cfg, GemvConfig), f"config must be a GemvConfig, got {type(cfg).__name__}")
    splits, k_per_split = split_layout(K, cfg)
    tiles = _cdiv(M, MAX_ROWS)
    check(cfg.block_k * N < 2**31 and splits * tiles * MAX_ROWS * N < 2**31 and tiles * MAX_ROWS * K < 2**31,
          f"offsets of K {K}, N {N} with {cfg.name} overflow int32")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)  # [M, N]
    split = splits > 1
    part = torch.empty((splits, M, N), dtype=torch.float32, device=x.device) if split else out  # [S, M, N]
    b = bias if bias is not None else out  # a placeholder pointer, never read
    _gemv_kernel[(tiles, triton.cdiv(N, cfg.block_n), splits)](
        x, weight_t, b, out, part, M, K, N, k_per_split,
        HAS_BIAS=bias is not None, SPLIT=split, DOT_F32=interpreting() or x.dtype == torch.float32,
        SUM_DOT=interpreting(),
        BLOCK_M=MAX_ROWS, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split:
        _gemv_reduce_kernel[(triton.cdiv(N, REDUCE_BLOCK), M)](
            part, b, out, M, N, SPLIT_K=splits, HAS_BIAS=bias is not None, BLOCK=REDUCE_BLOCK, num_warps=4,
        )
    return out
