"""Tensors saved as numbered safetensors files under a size cap, with a small JSON index.

Why: a checkpoint brought back from the GPU machine travels file by file, and the device tool
refuses files over 16 MiB. So every file written here is at most ``MAX_SHARD_BYTES`` (16 MiB
minus a margin); a tensor larger than the cap is flattened and cut into 1-D parts, each in a file
of its own, and joined again on load. Only safetensors and JSON: nothing is ever unpickled.

Layout for ``stem="model"``: ``model-00001-of-00003.safetensors`` ... and ``model.index.json``::

    {"format": "agentspark-shards-v1", "cap_bytes": N, "files": [...],
     "tensors": {name: {"shape": [...], "dtype": "float32", "parts": [[file, key], ...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CorruptModelError

MAX_SHARD_BYTES = 16 * 2**20 - 64 * 2**10  # the device tool's 16 MiB per file, less a margin for headers
INDEX_FORMAT = "agentspark-shards-v1"
_HEADER_BASE = 1024  # safetensors: 8-byte length + the JSON header's fixed part, with room to spare
_HEADER_PER_TENSOR = 160  # + the key: '"key":{"dtype":"F32","shape":[..],"data_offsets":[..]},'


def index_path(directory: Path, stem: str) -> Path:
    return directory / f"{stem}.index.json"


def _pieces(name: str, t: torch.Tensor, cap: int) -> list[tuple[str, torch.Tensor]]:
    """(key, tensor) pieces of ``t``, each fitting a file of ``cap`` bytes alone."""
    room = cap - _HEADER_BASE - _HEADER_PER_TENSOR - len(name) - 16
    nbytes = t.numel() * t.element_size()
    if nbytes <= room:
        return [(name, t)]
    per = max(1, room // t.element_size())  # elements per part
    flat = t.reshape(-1)  # [numel]
    return [(f"{name}@part{k}", flat[s : s + per].clone()) for k, s in enumerate(range(0, flat.numel(), per))]


def save_sharded(tensors: dict[str, torch.Tensor], directory: Path, stem: str, cap: int | None = None) -> dict:
    """Write ``tensors`` (CPU) as ``stem-0000i-of-0000n.safetensors`` files of at most ``cap``
    bytes each, then ``stem.index.json``; returns the index. Tensors keep their insertion order,
    packed greedily into files in that order."""
    cap = MAX_SHARD_BYTES if cap is None else int(cap)
    groups: list[list[tuple[str, torch.Tensor]]] = [[]]
    used = _HEADER_BASE
    entries: dict[str, dict] = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        entries[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "parts": []}
        for key, piece in _pieces(name, t, cap):
            size = piece.numel() * piece.element_size() + _HEADER_PER_TENSOR + len(key)
            if groups[-1] and used + size > cap:
                groups.append([])
                used = _HEADER_BASE
            groups[-1].append((key, piece))
            used += size
            entries[name]["parts"].append([len(groups) - 1, key])
    n = len(groups)
    files = [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    directory.mkdir(parents=True, exist_ok=True)
    for name, group in zip(files, groups):
        save_file(dict(group), str(directory / name), metadata={"format": "pt"})
    for entry in entries.values():
        entry["parts"] = [[files[i], key] for i, key in entry["parts"]]
    index = {"format": INDEX_FORMAT, "cap_bytes": cap, "files": files, "tensors": entries}
    index_path(directory, stem).write_text(json.dumps(index, indent=1) + "\n")
    return index


def has_sharded(directory: Path, stem: str) -> bool:
    return index_path(directory, stem).is_file()


def load_sharded(directory: Path, stem: str) -> dict[str, torch.Tensor]:
    """The tensors ``save_sharded`` wrote, parts joined, in their saved order."""
    path = index_path(directory, stem)
    try:
        index = json.loads(path.read_text())
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {INDEX_FORMAT!r}")
        loaded = {f: load_file(str(directory / f)) for f in index["files"]}
        out: dict[str, torch.Tensor] = {}
        for name, entry in index["tensors"].items():
            parts = [loaded[f][key] for f, key in entry["parts"]]
            t = parts[0] if len(parts) == 1 and parts[0].shape == tuple(entry["shape"]) else torch.cat(parts)
            out[name] = t.reshape(entry["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise CorruptModelError(f"the shards indexed by {path} are not readable: {exc}") from exc
