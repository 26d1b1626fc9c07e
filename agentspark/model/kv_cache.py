"""StaticKVCache: preallocated key/value buffers written by index, rolled back by length.

The buffers never change shape after construction (what a CUDA graph needs). ``length`` is a
host integer kept by the caller's bookkeeping, never read back from the device: rolling back a
rejected draft is just ``cache.length = n`` — the stale entries past ``n`` are overwritten by the
next write and are never attended to, because attention reads ``[0, start + T)`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DecoderConfig


class StaticKVCache:
    def __init__(
        self,
        cfg: DecoderConfig,
        capacity: int,
        *,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)  # batch_size = slots
        self.k: Tensor = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, S, D]
        self.v: Tensor = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, S, D]
        self.capacity = capacity
        self.length = 0  # tokens whose K/V are valid, [0, length)

    def write(self, layer: int, start: int, k: Tensor, v: Tensor, slot: int = 0) -> tuple[Tensor, Tensor]:
        """Store k, v [B, Hkv, T, D] at positions [start, start+T) of slots [slot, slot+B); return
        the valid prefix views [B, Hkv, start+T, D] that attention reads."""
        end, rows = start + k.shape[2], slice(slot, slot + k.shape[0])
        self.k[layer, rows, :, start:end] = k
        self.v[layer, rows, :, start:end] = v
        return self.k[layer, rows, :, :end], self.v[layer, rows, :, :end]

    def rollback(self, length: int) -> None:
        """Forget every position >= length (rejected draft tokens)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"rollback to {length} outside [0, {self.capacity}]")
        self.length = min(self.length, length)

    def reset(self) -> None:
        self.length = 0

    @property
    def free(self) -> int:
        return self.capacity - self.length
