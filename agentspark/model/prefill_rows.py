"""Several requests' prefills in one forward: the batch engine's admissions, on the device runner.

Why: the batch engine admits requests one at a time, each its own prefill (a graph replay per
chunk) and its own host sync for the first token. On the H200 that cost more than the rounds
themselves at many requests (run 29, default model, 64 requests of ~100 prompt tokens: 2.1 ms of
admission per round against the runner's 1.5), and an agent server admits a request for every
model turn of every session.

What: the admissions whose remaining prompt fits one prefill chunk (``PREFILL_TOKENS``: a session's
appended turn, a short prompt) and stays inside the cache with the chunk's padding go through one
(R rows, C tokens) forward per chunk size and capture flag, R padded to a row bucket (padding rows
write the scratch slot); each row's logits are taken at its own last real token. The others (long
prompts, a tail at the cache's end) prefill alone, as before.

Exact: in exact mode's route a every row of the forward is row-invariant (graph_runner.py), so a
row gets the bits, the K/V and the first logits it gets prefilled alone; the test suite compares
them bit for bit. In fast mode (SDPA over a key window) a row's bits may depend on the launch's
shape, as they already do for fast mode's rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .runner import PrefillItem, PrefillOutput

if TYPE_CHECKING:  # graph_runner imports this module
    from .graph_runner import DeviceRunner


@dataclass(frozen=True)
class RowsKey:
    rows: int  # R, a row bucket
    tokens: int  # C, a prefill chunk size
    keys: int  # W, the key window (the whole cache in route a)
    capture: bool


class _RowsBucket:
    """The static buffers of one (R, C) prefill forward and its graph."""

    def __init__(self, key: RowsKey, device: torch.device) -> None:
        R, C = key.rows, key.tokens
        self.key = key
        # one buffer, so one H2D copy fills it: [slots R | starts R | last R | ids R*C]
        self.ints = torch.zeros(3 * R + R * C, dtype=torch.long, device=device)
        self.slots, self.starts, self.last = self.ints[:R], self.ints[R : 2 * R], self.ints[2 * R : 3 * R]
        self.ids = self.ints[3 * R :].view(R, C)  # [R, C]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None  # [R, V] at each row's last real token
        self.hidden: Tensor | None = None  # [R, C, m*H] when key.capture


def _body(runner: DeviceRunner, b: _RowsBucket) -> tuple[Tensor, Tensor | None]:
    invariant = runner.route == "a"
    out = runner.model.forward_rows(b.ids, runner.cache, b.slots, b.starts, logit_index=b.last,
                                    key_window=None if invariant else b.key.keys, row_invariant=invariant,
                                    capture_layers=runner.capture_layers if b.key.capture else ())
    return out.logits[:, 0], out.hidden  # [R, V], [R, C, m*H] | None


def _bucket(runner: DeviceRunner, key: RowsKey) -> _RowsBucket:
    b = runner.prefill_row_buckets.get(key)
    if b is None:
        b = runner.prefill_row_buckets[key] = _RowsBucket(key, runner.device)
        if runner.graphs:
            b.slots.fill_(runner.scratch)  # warm-up and capture write into the scratch slot only
            b.graph, (b.logits, b.hidden) = runner._capture_body(lambda: _body(runner, b))
    return b


def batchable(runner: DeviceRunner, item: PrefillItem) -> int:
    """The chunk size ``item`` goes through in a batched prefill, or 0 (it prefills alone): its
    tokens fit one chunk, and the chunk's padding stays inside the cache."""
    from .graph_runner import PREFILL_TOKENS

    size = next((c for c in PREFILL_TOKENS if c >= len(item.ids)), 0)
    return size if item.ids and size and item.start + size <= runner.capacity else 0


def prefill_rows(runner: DeviceRunner, items: list[PrefillItem]) -> list[PrefillOutput]:
    """Every item's prefill (module docstring): in one forward per (chunk size, capture) group of
    two or more, the rest alone. Nothing here waits for the device."""
    from .graph_runner import ROW_BUCKETS, key_window, row_bucket

    out: list[PrefillOutput | None] = [None] * len(items)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, item in enumerate(items):
        size = batchable(runner, item)
        if size:
            groups.setdefault((size, item.capture), []).append(i)
    for (size, capture), members in groups.items():
        if len(members) < 2:
            continue
        for at in range(0, len(members), ROW_BUCKETS[-1]):
            part = members[at : at + ROW_BUCKETS[-1]]
            R = row_bucket(len(part))
            end = max(items[i].start for i in part) + size
            keys = runner.cache.capacity if runner.route == "a" else key_window(end, runner.capacity)
            b = _bucket(runner, RowsKey(R, size, keys, capture))
            host = torch.zeros(3 * R + R * size, dtype=torch.long, pin_memory=runner.device.type == "cuda")
            view = host.numpy()  # the caching host allocator keeps it alive until its copy is done
            view[:R] = runner.scratch  # padding rows: the scratch slot, position 0, one token
            for r, i in enumerate(part):
                item = items[i]
                view[r], view[R + r], view[2 * R + r] = item.slot, item.start, len(item.ids) - 1
                o = 3 * R + r * size
                view[o : o + len(item.ids)] = item.ids
            b.ints.copy_(host.to(runner.device, non_blocking=True))
            if runner.graphs:
                b.graph.replay()
            else:
                with torch.inference_mode():
                    b.logits, b.hidden = _body(runner, b)
            for r, i in enumerate(part):  # copies: the bucket's next replay overwrites its outputs
                n = len(items[i].ids)
                out[i] = PrefillOutput(logits=b.logits[r : r + 1].clone(),
                                       hidden=None if b.hidden is None else b.hidden[r, :n].clone())
    for i, item in enumerate(items):
        if out[i] is None:
            out[i] = runner.prefill(item.slot, item.ids, item.start, capture=item.capture)
    return out  # type: ignore[return-value]
