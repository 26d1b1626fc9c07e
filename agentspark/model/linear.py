"""Linear layers stored transposed ([in, out]) and one matmul entry point, ``linear_t``.

Why transposed, and why numpy on the CPU: at batch 1 a decoder step is a chain of skinny
matrix products bound by reading the weights. On the CPUs we run on, torch's MKL kernels reach
7-9 GB/s on these shapes and get *slower per row* as rows are added (a speculative verify of 9
rows cost 2-3x one row), while the OpenBLAS that numpy ships reads [in, out] weights at 15-20
GB/s. So float32 inference on the CPU goes through numpy on zero-copy views; everything else
(bfloat16, CUDA, autograd) through torch.

Row-invariant mode (``row_invariant=True``, CPU float32): each row is its own vector-matrix
product, so a row's result never depends on how many rows share the call: a speculative verify
over l+1 rows yields the very bits plain decoding computes one row at a time. The weight is
walked in column panels of ~8 MB; every row of a panel is computed while it sits in the last-level
cache, so extra rows cost cache reads, not memory reads (9 rows ~3x one row, as fast as sgemm).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn


PANEL_BYTES = 8 << 20  # a column panel of the weight that stays in the last-level cache


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


def cpu_float32_inference(*tensors: Tensor) -> bool:
    """True where the numpy path (and row-invariant mode) applies."""
    return not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def linear_t(x: Tensor, weight_t: Tensor, bias: Tensor | None = None, *, row_invariant: bool = False) -> Tensor:
    """x [..., in] @ weight_t [in, out] (+ bias [out]) -> [..., out]."""
    if cpu_float32_inference(x, weight_t):
        flat = x.reshape(-1, x.shape[-1]).numpy()  # [N, in] (zero-copy when contiguous)
        w = weight_t.numpy()
        out_np = _rows_matmul(flat, w) if row_invariant else np.matmul(flat, w)
        out = torch.from_numpy(out_np).view(*x.shape[:-1], weight_t.shape[1])
        return out if bias is None else out.add_(bias)
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

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor, row_invariant: bool = False) -> Tensor:
        return linear_t(x, self.weight_t, self.bias, row_invariant=row_invariant)


@contextmanager
def blas_owns_the_cores(x: Tensor) -> Iterator[None]:
    """While our CPU float32 forward runs, torch's own ops run on one thread.

    OpenBLAS (numpy) and torch's OpenMP pool each start a thread per core and spin-wait between
    calls; interleaved, they steal each other's cores (a decode step went from 64 ms to 270 ms).
    The matmuls are where parallelism pays, so they keep the cores; the thread count is restored
    on exit, so the caller's setting is left as it was.
    """
    if not cpu_float32_inference(x):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
