"""Online drafter training: the target runs on the fly for every batch (its layer features and
logits), nothing is cached to disk — the opposite of DeepSpec's terabyte target cache.

AdamW with linear warmup and cosine decay to 0 (DeepSpec §3.5), gradient clipping, bf16 autocast
on CUDA (float32 master weights), a seeded data order and per-step anchor seeds so that a resumed
run continues exactly where it stopped. Checkpoints (weights, optimizer state, step) are
safetensors + JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..drafters.checkpoint import save_drafter
from ..model.loading import LoadedModel
from .data import Sample
from .dspark_objective import Batch, ObjectiveWeights, dspark_loss, sample_anchors
from .eagle3_objective import eagle3_loss

CHECKPOINT = "checkpoint"  # out/checkpoint: the latest resumable state


@dataclass
class TrainOptions:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 6e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.0
    clip: float = 1.0
    num_anchors: int = 64
    max_length: int = 1024
    save_every: int = 500
    seed: int = 42
    time_budget_s: float = 0.0  # > 0: after 20 steps, shrink ``steps`` so training ends within it




def lr_at(step: int, opts: TrainOptions) -> float:
    warmup = max(1, int(opts.steps * opts.warmup_ratio))
    if step < warmup:
        return opts.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, opts.steps - warmup)
    return opts.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batches_for_step(samples: list[Sample], step: int, opts: TrainOptions) -> list[Sample]:
    """The samples of ``step``: epoch e is a permutation seeded with seed + e (DeepSpec's sampler)."""
    per_epoch = max(1, len(samples) // opts.batch_size)
    epoch, index = divmod(step, per_epoch)
    order = list(range(len(samples)))
    random.Random(opts.seed + epoch).shuffle(order)
    return [samples[i] for i in order[index * opts.batch_size : (index + 1) * opts.batch_size]]


def collate(samples: list[Sample], max_length: int, pad_id: int, device: torch.device) -> Batch:
    rows = [(s.input_ids[:max_length], s.loss_mask[:max_length]) for s in samples]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (i, m) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        mask[r, : len(m)] = torch.tensor(m, dtype=torch.bool)
    lengths = torch.tensor([len(i) for i, _ in rows])
    return Batch(ids.to(device), mask.to(device), lengths.to(device))


class OnlineTarget:
    """The frozen target, run over whole training batches: features of the chosen layers + logits."""

    def __init__(self, target: LoadedModel, layer_ids: tuple[int, ...], max_length: int) -> None:
        self.model = target.model.eval()
        self.layer_ids = layer_ids
        self.max_length = max_length
        self.caches: dict[int, object] = {}  # one static cache per batch size seen

    @torch.no_grad()
    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        B = batch.input_ids.shape[0]
        if B not in self.caches:
            self.caches[B] = self.model.new_cache(self.max_length, batch_size=B)
        out = self.model(batch.input_ids, self.caches[B], 0, capture_layers=self.layer_ids)
        return out.hidden, out.logits  # [B, S, m*H], [B, S, V]


def _save_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, opts: TrainOptions,
                history: list[dict]) -> None:
    ckpt = out / CHECKPOINT
    tmp = out / (CHECKPOINT + ".tmp")
    save_drafter(model, tmp, storage="float32")
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in state["state"].items() for k, v in s.items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "training_state.json").write_text(json.dumps(
        {"next_step": step, "options": asdict(opts), "param_groups": state["param_groups"], "history": history[-200:]}))
    if ckpt.exists():
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    tmp.rename(ckpt)


def _load_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    ckpt = out / CHECKPOINT
    meta = json.loads((ckpt / "training_state.json").read_text())
    weights = load_file(str(ckpt / "model.safetensors"))
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in weights.items()})
    flat = load_file(str(ckpt / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["next_step"]), list(meta.get("history", []))


def train(
    model: nn.Module,
    target: LoadedModel,
    samples: list[Sample],
    opts: TrainOptions,
    out: Path,
    *,
    weights: ObjectiveWeights,
    pad_id: int,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` (a DSparkModel or an Eagle3Model attached to ``target``) in place; returns the
    loss history. The objective follows ``model.cfg.method``: dspark/dflash -> dspark_loss (anchored
    blocks, ``weights``), eagle3 -> eagle3_loss (7-step TTT, soft CE; ``weights`` and
    ``opts.num_anchors`` unused)."""
    device = target.model.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    start, history = (_load_state(out, model, optimizer) if resume and (out / CHECKPOINT).exists() else (0, []))
    online = OnlineTarget(target, tuple(model.cfg.target_layer_ids), opts.max_length)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    model.train()
    t_begin = time.perf_counter()
    step = start
    while step < opts.steps:
        t0 = time.perf_counter()
        batch = collate(batches_for_step(samples, step, opts), opts.max_length, pad_id, device)
        features, logits = online(batch)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, opts)
        if model.cfg.method == "eagle3":  # TTT over every position: no anchors, no objective weights
            with autocast:
                loss, stats = eagle3_loss(model, batch, features, logits)
        else:
            anchors, keep = sample_anchors(batch, opts.num_anchors,
                                           torch.Generator().manual_seed(opts.seed * 100003 + step))
            with autocast:
                loss, stats = dspark_loss(model, batch, features, logits, anchors, keep, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, opts.clip))
        optimizer.step()
        stats.update(step=step + 1, lr=lr_at(step, opts), seconds=time.perf_counter() - t0)
        history.append(stats)
        if on_step is not None:
            on_step(step + 1, stats)
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < opts.steps:
            _save_state(out, model, optimizer, step + 1, opts, history)
        step += 1
        if opts.time_budget_s > 0 and step == start + 20:
            # the whole cosine schedule is fitted into the budget (device time is what is scarce)
            per_step = (time.perf_counter() - t_begin) / 20
            opts.steps = min(opts.steps, step + max(0, int((opts.time_budget_s - (time.perf_counter() - t_begin)) / per_step)))
    _save_state(out, model, optimizer, opts.steps, opts, history)
    model.eval()
    return history
