"""Linear layers stored transposed ([in, out]) and one matmul entry point, ``linear_t``.

Why transposed, and why numpy on the CPU: at batch 1 a decoder step is a chain of skinny
matrix products bound by reading the weights. On the CPUs we run on, torch's MKL kernels reach
7-9 GB/s on these shapes and get *slower per row* as rows are added (a speculative verify of 9
rows cost 2-3x one row), while the OpenBLAS that numpy ships reads [in, out] weights at 15-20
GB/s. So float32 prefills on the CPU go through numpy on zero-copy views; everything else
(bfloat16, CUDA, autograd) through torch.

Row-invariant mode (``row_invariant=True``, CPU float32: every decode and verify step): a row's
result never depends on how many rows share the call, so a speculative verify over l+1 rows
yields the very bits plain decoding computes one row at a time. Two routes (``ROW_KERNEL``):

- ``"blocks"`` (the default where torch has oneDNN): the rows go through oneDNN's matmul on a
  copy of the weight packed once in its blocked layout, 4 to 16 rows a call (a plain step's one
  row is padded with zero rows to 4). oneDNN's kernel accumulates every output along ``in`` in one
  order whatever the row count, so each row's bits are the same in a call of 4 rows as in one of
  16 (checked bit for bit on every shape of the tiny test models and of Qwen2.5-0.5B/1.5B in
  tests/test_row_invariant_blocks.py; a single row is not: oneDNN takes a gemv path for it, hence
  the padding). The weight is read once for all rows: on the 0.5B shape (examples/cpu_verify_cost.py)
  a 4-row call costs what numpy's one-row gemv costs and 9 rows about 1.4x, where one
  vector-matrix product per row cost ~1 step per row. Not numpy's sgemm: OpenBLAS packs the
  weight on every call, 2.2-2.9x a gemv for 2-9 rows. The price is memory: the packed copy is
  as large as the weights it packs (made on the first row-invariant call, remade when the
  weight changes).
- ``"rows"`` (no oneDNN, or to compare): each row its own vector-matrix product over ~8 MB
  column panels of the weight, which stay in the last-level cache while every row reads them.

On CUDA, row-invariant mode is exact mode's route a (DESIGN.md, model/graph_runner.py): the
products go through the Triton kernel of kernels/gemv.py, whose rows are computed in fixed 16-row
tiles with one reduction order, so a row's bits do not depend on how many rows (of how many
requests) share the call. Where the kernels cannot run, torch's matmul serves and the mode is
not exact (the runner then takes route b).

Threads (``CPU_THREADS``, ``blas_owns_the_cores``): a CPU float32 forward runs its matmuls on one
thread unless ``OPENBLAS_NUM_THREADS`` asks for more. Measured on the 2-core machine with two
other busy processes, two threads made a step 4-5x slower than one (a thread that loses its core
stalls the other at every barrier), and with the machine otherwise shared they gained nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from ..kernels.gemv import gemv
from ..kernels.support import kernels_run_on


PANEL_BYTES = 8 << 20  # a column panel of the weight that stays in the last-level cache
MIN_BLOCK_ROWS = 4  # rows of the smallest oneDNN call: 1 row takes another kernel, 4 cost what 1 does
MAX_BLOCK_ROWS = 16  # rows of the largest: a verify of more rows goes in several calls


def _onednn_matmul_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ROW_KERNEL = "blocks" if _onednn_matmul_available() else "rows"  # the route of row-invariant matmuls


def _threads_from_env() -> int:
    value = os.environ.get("OPENBLAS_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


CPU_THREADS = _threads_from_env()  # threads of a CPU float32 forward's matmuls (module docstring)


def _rows_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [N, in] @ w [in, out], one vector-matrix product per row and column panel."""
    n, (k, m) = x.shape[0], w.shape
    out = np.empty((n, m), dtype=np.float32)
    panel = max(64, PANEL_BYTES // (4 * k))
    for c in range(0, m, panel):
        cols = w[:, c : c + panel]  # [in, panel] strided view, no copy
        for r in range(n):
            np.matmul(x[r], cols, out=out[r, c : c + panel])
    return out


def pack_weight(weight_t: Tensor) -> Tensor:
    """weight_t [in, out] -> oneDNN's packed copy (an opaque mkldnn tensor) that ``block_matmul`` reads."""
    return torch.ops.mkldnn._reorder_linear_weight(weight_t.detach().t(), MIN_BLOCK_ROWS)


def block_matmul(x: Tensor, packed: Tensor) -> Tensor:
    """x [N, in] @ the packed weight [in, out] -> [N, out], row-invariant: calls of 4 to 16 rows."""
    blocks = []
    for r in range(0, x.shape[0], MAX_BLOCK_ROWS):
        block = x[r : r + MAX_BLOCK_ROWS]  # [n, in], n <= 16
        n = block.shape[0]
        if n < MIN_BLOCK_ROWS:  # zero rows: their outputs are dropped, and they cannot touch row 0's
            block = torch.cat([block, block.new_zeros(MIN_BLOCK_ROWS - n, block.shape[1])])
        blocks.append(torch.ops.mkldnn._linear_pointwise(block, packed, None, "none", [], "")[:n])
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def cpu_float32_inference(*tensors: Tensor) -> bool:
    """True where the numpy path (and row-invariant mode) applies."""
    return not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def linear_t(x: Tensor, weight_t: Tensor, bias: Tensor | None = None, *, row_invariant: bool = False,
             packed: Tensor | None = None) -> Tensor:
    """x [..., in] @ weight_t [in, out] (+ bias [out]) -> [..., out]. ``packed``: weight_t's
    ``pack_weight`` copy, which row-invariant mode reads instead of weight_t where given."""
    if cpu_float32_inference(x, weight_t):
        flat = x.reshape(-1, x.shape[-1])  # [N, in] (a view when contiguous)
        if row_invariant and packed is not None:
            out = block_matmul(flat.contiguous(), packed)
        else:
            flat_np, w = flat.numpy(), weight_t.numpy()
            out = torch.from_numpy(_rows_matmul(flat_np, w) if row_invariant else np.matmul(flat_np, w))
        out = out.view(*x.shape[:-1], weight_t.shape[1])
        return out if bias is None else out.add_(bias)  # the bias after the product: one rule for both routes
    if row_invariant and kernels_run_on(x, weight_t):  # CUDA (or the interpreter): the row-invariant kernel
        out = gemv(x.reshape(-1, x.shape[-1]).contiguous(), weight_t, bias)  # [N, out], the bias before rounding
        return out.view(*x.shape[:-1], weight_t.shape[1])
    out = torch.matmul(x, weight_t)
    return out if bias is None else out + bias


def linear_t_few_rows(x: Tensor, weight_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """``linear_t`` for a drafter: a handful of rows (a draft block) go one vector-matrix product
    per row, which beats OpenBLAS's sgemm (it packs the whole weight first; the 5,977-token draft
    head: 1.2 vs 1.8 ms); more rows (a prefill's context) take the sgemm."""
    return linear_t(x, weight_t, bias, row_invariant=x.numel() <= 16 * x.shape[-1])


class DenseLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose CPU float32 inference goes
    through numpy like ``linear_t``. Learned drafters use it: their weights keep DeepSpec's [out, in]
    layout on disk, while a propose under torch's single thread (``blas_owns_the_cores``) cost
    ~13 ms in 15 small MKL calls. The transposed copy is made once and remade whenever the weight
    changes (training steps bump its version)."""

    _cached: tuple[int, int, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not cpu_float32_inference(x, self.weight):
            return super().forward(x)
        key = (self.weight.data_ptr(), self.weight._version)
        if self._cached is None or self._cached[:2] != key:
            self._cached = (*key, self.weight.detach().t().contiguous())  # [in, out]
        return linear_t_few_rows(x.contiguous(), self._cached[2], self.bias)


class LinearT(nn.Module):
    """y = x @ weight_t + bias, with weight_t [in, out] (the transpose of nn.Linear's weight)."""

    _packed: tuple[int, int, Tensor] | None = None  # (data_ptr, version, pack_weight(weight_t))

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor, row_invariant: bool = False) -> Tensor:
        packed = self.packed_weight() if row_invariant and cpu_float32_inference(x, self.weight_t) else None
        return linear_t(x, self.weight_t, self.bias, row_invariant=row_invariant, packed=packed)

    def packed_weight(self) -> Tensor | None:
        """The oneDNN copy of weight_t on the "blocks" route (None on "rows"), remade whenever the
        weight changes (a load's copy_ bumps its version, ``.to()`` moves its storage)."""
        if ROW_KERNEL != "blocks":
            return None
        w = self.weight_t
        key = (w.data_ptr(), 0 if w.is_inference() else w._version)  # inference tensors have no version
        if self._packed is None or self._packed[:2] != key:
            self._packed = None  # drop the stale copy before making the new one (peak memory)
            self._packed = (*key, pack_weight(w))
        return self._packed[2]

    def __getstate__(self) -> dict:
        """Copies (deepcopy, pickle) leave the packed weight out: oneDNN's opaque tensor has no
        storage to copy, and the copy packs its own on first use."""
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state


def _find_openblas() -> ctypes.CDLL | None:
    """numpy's OpenBLAS, already loaded (Linux: named in /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]})
    except OSError:
        return None
    return ctypes.CDLL(paths[0]) if paths else None


def _openblas_thread_calls() -> tuple | None:
    """(get, set) of numpy's OpenBLAS thread count, whichever symbol names its build exports."""
    lib = _find_openblas()
    for suffix in ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_", "openblas_{}_num_threads"):
        get, set_ = getattr(lib, suffix.format("get"), None), getattr(lib, suffix.format("set"), None)
        if get is not None and set_ is not None:
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            return get, set_
    return None


_OPENBLAS = _openblas_thread_calls()


def openblas_threads(n: int | None = None) -> int | None:
    """numpy's OpenBLAS thread count (None where it cannot be read); with ``n``, set it first."""
    if _OPENBLAS is None:
        return None
    if n is not None:
        _OPENBLAS[1](n)
    return _OPENBLAS[0]()


@contextmanager
def blas_owns_the_cores(x: Tensor) -> Iterator[None]:
    """While our CPU float32 forward runs, its matmuls (OpenBLAS and oneDNN) use ``CPU_THREADS``
    threads and torch's other ops one.

    OpenBLAS (numpy) and torch's OpenMP pool each start a thread per core and spin-wait between
    calls; interleaved, they steal each other's cores (a decode step went from 64 ms to 270 ms),
    and on a loaded machine two threads of either made a step 4-5x slower than one (module
    docstring). oneDNN's matmuls run on torch's pool, so torch gets ``CPU_THREADS`` too (one, by
    default: no second pool spins). Both counts are restored on exit.
    """
    if not cpu_float32_inference(x):
        yield
        return
    before, blas_before = torch.get_num_threads(), openblas_threads()
    torch.set_num_threads(CPU_THREADS if ROW_KERNEL == "blocks" else 1)
    openblas_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if blas_before is not None:
            openblas_threads(blas_before)
