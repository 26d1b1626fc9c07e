"""The SPS table's on-disk cache: measured once per model, dtype, device and machine.

A table costs a dozen target forwards (seconds for a 1.5B model on the CPU); an agent session or a
server restart should not pay that each time. The key names everything a forward's speed depends
on: the model (its source and its config), dtype, device (the GPU's name on CUDA), the runner
(graphs or eager), the table's length, the machine (host name, processor, core count) and torch's
version. Only models read from a file (``default``, a folder, a GGUF) are cached: a test's random
model has no identity to key on. ``AGENTSPARK_SPS_CACHE=0`` turns the cache off.

A cached table is a starting point, not a verdict: the engine refreshes it from every round's own
timings and measures again when it cuts a dozen drafts in a row (engine.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .model.default_model import cache_dir
from .progress import status

if TYPE_CHECKING:
    from .scheduler import SpsTable

log = logging.getLogger("agentspark")  # the CLI shows these as progress lines


def _machine() -> dict[str, Any]:
    return {"host": platform.node(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__}


def sps_key(source: str, config: Any, dtype: torch.dtype, device: torch.device, runner_kind: str,
            tokens: int) -> dict[str, Any] | None:
    """What the table depends on, or None when it must not be cached (a model with no file)."""
    if os.environ.get("AGENTSPARK_SPS_CACHE", "1") == "0":
        return None
    if source != "default" and not Path(source).expanduser().exists():
        return None
    where = str(Path(source).expanduser().resolve()) if source != "default" else "default"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"source": where, "config": repr(config), "dtype": str(dtype), "device": device.type, "gpu": gpu,
            "runner": runner_kind, "tokens": tokens, **_machine()}


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "sps" / f"{digest}.json"


def load_sps(key: dict[str, Any] | None) -> list[float] | None:
    """The cached steps/s at 1..n tokens, or None (no entry, another key, an unreadable file)."""
    if key is None:
        return None
    try:
        entry = json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return None
    values = entry.get("values") if isinstance(entry, dict) and entry.get("key") == key else None
    if not isinstance(values, list) or len(values) != key["tokens"]:
        return None
    if not all(isinstance(v, (int, float)) and v > 0 for v in values):
        return None
    return [float(v) for v in values]


def save_sps(key: dict[str, Any] | None, values: list[float]) -> Path | None:
    """Store a table (atomically: a crash leaves the old entry or none). Failing to write is not an
    error: the table is still used, just measured again next time."""
    if key is None:
        return None
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "values": values, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def cached_or_measured(key: dict[str, Any] | None, tokens: int, what: str, measure: Callable[[], SpsTable],
                       from_values: Callable[[list[float]], SpsTable]) -> SpsTable:
    """The table of ``key`` from the cache (``from_values`` makes it), else ``measure()``d now and
    cached; either way said in the log, since a measurement takes seconds (``what``: what B counts)."""
    cached = load_sps(key)
    if cached is not None:
        log.info("target speed at 1..%d tokens per %s: from the cache", tokens, what)
        return from_values(cached)
    log.info("measuring the target's speed at 1..%d tokens per %s (once per model and machine)…", tokens, what)
    t0 = time.perf_counter()
    with status("measuring the target's speed (once per model and machine)"):
        table = measure()
    where = save_sps(key, table.values())
    log.info("measured in %.1f s%s", time.perf_counter() - t0, f"; cached in {where}" if where else "")
    return table
