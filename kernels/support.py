"""When the Triton kernels run, and the small checks every launcher shares.

The kernels run on CUDA tensors when Triton imports. Under Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported) they also run on CPU tensors: that is how
their logic is tested on machines without a GPU. Everywhere else the callers use the pure-PyTorch
reference that sits beside each kernel.

What the interpreter cannot do (triton 3.9, checked 2026-12-01): a ``tl.dot`` of bfloat16
operands returns garbage, so kernels upcast dot operands to float32 when ``interpreting()``. And
its ``tl.dot`` is numpy's matmul, whose BLAS may sum a row's products in an order that depends on
the row's place in the tile (seen on an AMD EPYC machine, 2026-12-02: the row-invariance tests of
gemv and decode attention failed there and passed on another machine). So under the interpreter
the kernels take their products as a broadcast multiply and a sum over the shared axis
(``SUM_DOT``): one order for every row, as the GPU's mma tiles give.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # not installed, or a broken install: the references serve
        return False
    return True


_on_cpu = False  # set by ``cpu_interpreter()``: kernels run on CPU tensors through the interpreter


def kernels_run_on(*tensors: Tensor) -> bool:
    """True where the Triton kernels (not the references) should compute on these tensors."""
    if not triton_available():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return _on_cpu and interpreting() and all(t.device.type == "cpu" for t in tensors)


@contextmanager
def cpu_interpreter() -> Iterator[None]:
    """Within this block CPU tensors go through the kernels under Triton's interpreter (tests of
    the kernels' logic). Needs ``TRITON_INTERPRET=1`` before triton was first imported."""
    if not interpreting():
        raise RuntimeError("set TRITON_INTERPRET=1 before triton is imported to run kernels on the CPU")
    global _on_cpu
    before, _on_cpu = _on_cpu, True
    try:
        yield
    finally:
        _on_cpu = before


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def check(cond: bool, message: str) -> None:
    """A launcher's input check: a wrong shape, stride or dtype is our bug, reported before launch."""
    if not cond:
        raise ValueError(message)


def check_contiguous(name: str, t: Tensor) -> None:
    check(t.is_contiguous(), f"{name} must be contiguous, got strides {tuple(t.stride())} for shape {tuple(t.shape)}")


def check_dtype(name: str, t: Tensor, *dtypes: torch.dtype) -> None:
    check(t.dtype in dtypes, f"{name} must be one of {dtypes}, got {t.dtype}")


def check_same_device(**tensors: Tensor) -> None:
    devices = {t.device for t in tensors.values()}
    check(len(devices) == 1, f"{', '.join(tensors)} must share one device, got {sorted(map(str, devices))}")
