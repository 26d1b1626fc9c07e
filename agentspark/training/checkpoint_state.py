"""out/checkpoint: the resumable state of a training run, in files the GPU machine can give back.

Contents: ``config.json`` (the drafter's config), the float32 weights and the AdamW state as
capped safetensors shards (shards.py: ``model-*.safetensors`` + ``model.index.json``,
``optimizer-*.safetensors`` + ``optimizer.index.json``), and ``training_state.json``: the next
step, the options, the optimizer's param groups and the run log (train_log.py). Nothing is ever
unpickled. Checkpoints written before sharding (one ``model.safetensors`` and one
``optimizer.safetensors``) still load.

The data position needs no saving: the batch of step s and its anchors are functions of (s, seed)
and the sample list alone (trainer.batches_for_step), so the next step is the whole position.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..drafters.checkpoint import write_config
from ..errors import CorruptModelError
from .shards import has_sharded, load_sharded, save_sharded
from .train_log import TrainLog

CHECKPOINT = "checkpoint"  # out/checkpoint: the latest resumable state
STATE_FILE = "training_state.json"


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The drafter's state dict in float32 (what training updates: master weights, not bf16)."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in model.state_dict().items()}


def save_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, options: Any,
               log: TrainLog, cap: int | None = None) -> Path:
    """Write the checkpoint beside the old one, then swap it in (a crash leaves one whole)."""
    ckpt, tmp = out / CHECKPOINT, out / (CHECKPOINT + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_config(model, tmp, "float32")
    save_sharded(_weights(model), tmp, "model", cap)
    state = optimizer.state_dict()
    flat = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if isinstance(v, torch.Tensor)}
    save_sharded(flat, tmp, "optimizer", cap)
    (tmp / STATE_FILE).write_text(json.dumps({"next_step": step, "options": asdict(options),
                                              "param_groups": state["param_groups"], **log.to_json()}))
    if ckpt.exists():
        shutil.rmtree(ckpt)
    tmp.rename(ckpt)
    return ckpt


def read_state(out: Path) -> dict | None:
    """training_state.json of out/checkpoint, or None when there is no checkpoint."""
    path = out / CHECKPOINT / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"{path} is not readable JSON: {exc}") from exc


def _tensors(ckpt: Path, stem: str) -> dict[str, torch.Tensor]:
    if has_sharded(ckpt, stem):
        return load_sharded(ckpt, stem)
    return load_file(str(ckpt / f"{stem}.safetensors"))  # the layout before sharding


def load_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, TrainLog]:
    """Load weights and optimizer state in place; (the next step, the run log so far)."""
    ckpt = out / CHECKPOINT
    meta = read_state(out)
    if meta is None:
        raise CorruptModelError(f"no {STATE_FILE} in {ckpt}")
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in _tensors(ckpt, "model").items()})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in _tensors(ckpt, "optimizer").items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["next_step"]), TrainLog.from_json(meta)
