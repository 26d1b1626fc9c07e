"""Online drafter training: the target runs on the fly for every batch (its layer features and
logits), nothing is cached to disk — the opposite of DeepSpec's terabyte target cache.

AdamW with linear warmup and cosine decay to 0 (DeepSpec §3.5), gradient clipping, bf16 autocast
on CUDA (float32 master weights), a seeded data order and per-step anchor seeds so that a resumed
run continues exactly where it stopped. Checkpoints (weights, optimizer state, step) are
safetensors + JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.loading import LoadedModel
from .checkpoint_state import CHECKPOINT, load_state, save_state
from .data import Sample
from .dspark_objective import Batch, ObjectiveWeights, dspark_loss, sample_anchors
from .eagle3_objective import eagle3_loss
from .train_log import TrainLog

__all__ = ["CHECKPOINT", "BudgetPlan", "TrainOptions", "batches_for_step", "collate", "lr_at", "train"]


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
    time_budget_s: float = 0.0  # > 0: fit ``steps`` (at most as given) so training ends within it (BudgetPlan)
    # The two ways to split one schedule of ``steps`` over several runs (each resumed with --resume):
    stop_after_s: float = 0.0  # > 0: stop at the first step boundary this many seconds after the clock's start
    stop_at_step: int = 0  # > 0: stop once this many steps are done
    eval_samples: int = 32  # held-out samples scored at every checkpoint (0: none)



# --time-budget: steps 1..20 of a run are not timed (the start-up: a resumed checkpoint, the first
# kernels); the first fit is at step 60 from the pace of steps 21..60, and it is re-fitted at steps
# 120, 240, 480, ... of the run (doubling), each time from the pace of the steps since the previous
# fit, while the step reached is at most BUDGET_REFIT_UNTIL of the projected schedule.
BUDGET_WARMUP_STEPS, BUDGET_FIRST_FIT, BUDGET_REFIT_UNTIL = 20, 60, 0.5


class BudgetPlan:
    """Fits the whole cosine schedule (``steps``) into ``budget_s`` seconds from ``t_begin``: the
    device time is what is scarce. ``after_step`` is told the steps done and the clock after every
    step and returns the schedule's length, at most the user's ``steps`` and at least the steps done.

    One fit from the pace of steps 21..60 was not enough: steps that meet a sequence shape for the
    first time are slow (the allocator, kernel selection), so on an H200 (11,100 samples, batch 16)
    steps 21..60 ran at ~0.17 s a step against a median of 0.065 s over the run, and --steps 7000
    --time-budget 380 was cut to 2,196 steps that finished in 162 s, under half the budget. So the
    length is re-fitted at steps 120, 240, 480, ... of the run, each time from the pace of the
    steps since the previous fit (a window: the slow start falls out of it). The first 20 steps of
    a run are never timed: taken as the pace, they cut a resumed H200 run to 218 s of its 465 s.

    ``lr_at`` reads the schedule's length, so every fit makes a small jump in the learning rate
    (and in the warmup's length); re-fits stop once the step reached is past ``refit_until``
    (default a half) of the projected schedule, where the jumps would be larger. The first fit is
    made even past it (a resumed run late in its schedule), as before re-fits existed;
    ``refit_until=0`` is that single fit alone."""

    def __init__(self, budget_s: float, start: int, steps: int, t_begin: float,
                 refit_until: float = BUDGET_REFIT_UNTIL) -> None:
        self.budget_s, self.start, self.cap, self.t_begin = budget_s, start, steps, t_begin
        self.refit_until = refit_until
        self.window: tuple[int, float] | None = None  # (step, clock) where the timed window began
        self.next_fit: int | None = start + BUDGET_FIRST_FIT
        self.fits: list[tuple[int, int]] = []  # (step, the schedule's length fitted there)

    def after_step(self, step: int, steps: int, now: float) -> int:
        if step == self.start + BUDGET_WARMUP_STEPS:
            self.window = (step, now)
        if step != self.next_fit or self.window is None:
            return steps
        if self.fits and step > self.refit_until * steps:
            self.next_fit = None  # no more re-fits: ``steps`` only changes here, so none would come
            return steps
        w_step, w_clock = self.window
        per_step = (now - w_clock) / (step - w_step)
        left = self.budget_s - (now - self.t_begin)
        more = self.cap - step if per_step <= 0 else max(0, int(left / per_step))
        steps = min(self.cap, step + more)
        self.fits.append((step, steps))
        self.window, self.next_fit = (step, now), self.start + 2 * (step - self.start)
        return steps


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


def objective(model: nn.Module, batch: Batch, features: torch.Tensor, logits: torch.Tensor, opts: TrainOptions,
              weights: ObjectiveWeights | None, anchor_seed: int) -> tuple[torch.Tensor, dict]:
    """(loss, stats) of one batch: eagle3 -> TTT over every position (no anchors, no weights);
    dspark/dflash -> anchored blocks, the anchors drawn from ``anchor_seed`` alone."""
    if model.cfg.method == "eagle3":
        return eagle3_loss(model, batch, features, logits)
    anchors, keep = sample_anchors(batch, opts.num_anchors, torch.Generator().manual_seed(anchor_seed))
    return dspark_loss(model, batch, features, logits, anchors, keep, weights)


@torch.no_grad()
def held_out_summary(model: nn.Module, online: OnlineTarget, samples: list[Sample], opts: TrainOptions,
                     weights: ObjectiveWeights | None, pad_id: int, autocast: contextlib.AbstractContextManager) -> dict:
    """Mean objective stats over the first ``opts.eval_samples`` held-out samples (fixed anchors,
    so checkpoints of one run are scored on the same blocks). Touches no training state."""
    chosen = samples[: opts.eval_samples]
    sums: dict[str, float] = {}
    model.eval()
    for b in range(0, len(chosen), opts.batch_size):
        batch = collate(chosen[b : b + opts.batch_size], opts.max_length, pad_id, online.model.device)
        features, logits = online(batch)
        with autocast:
            _, stats = objective(model, batch, features, logits, opts, weights, opts.seed * 100003 - 1 - b)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch.lengths)
    model.train()
    return {k: v / len(chosen) for k, v in sums.items()} | {"samples": len(chosen)} if chosen else {}


def train(
    model: nn.Module,
    target: LoadedModel,
    samples: list[Sample],
    opts: TrainOptions,
    out: Path,
    *,
    weights: ObjectiveWeights | None,
    pad_id: int,
    resume: bool = False,
    on_step: Callable[[int, dict], None] | None = None,
    held_out: list[Sample] | None = None,
    clock_start: float | None = None,
) -> list[dict]:
    """Train ``model`` (a DSparkModel or an Eagle3Model attached to ``target``) in place; returns the
    loss history (the checkpoint's tail, then this run's steps). The objective follows
    ``model.cfg.method`` (``objective``). The run ends after ``opts.steps``, or earlier at
    ``stop_at_step`` / ``stop_after_s`` (seconds since ``clock_start``, default: now) with the
    schedule of ``opts.steps`` left as it is, so a ``resume`` run continues it exactly. Every
    checkpoint scores ``held_out`` (``opts.eval_samples`` of them) into the log's ``evals``."""
    t_begin = time.perf_counter()
    clock_start = t_begin if clock_start is None else clock_start
    device = target.model.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    start, log = (load_state(out, model, optimizer) if resume and (out / CHECKPOINT).exists() else (0, TrainLog()))
    history = list(log.history)
    online = OnlineTarget(target, tuple(model.cfg.target_layer_ids), opts.max_length)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())

    def checkpoint(next_step: int) -> None:
        if held_out and opts.eval_samples > 0:
            summary = held_out_summary(model, online, held_out, opts, weights, pad_id, autocast)
            log.evals.append({"step": next_step, **summary})
        save_state(out, model, optimizer, next_step, opts, log)

    model.train()
    step, ended = start, "finished"
    budget = BudgetPlan(opts.time_budget_s, start, opts.steps, t_begin) if opts.time_budget_s > 0 else None
    while step < opts.steps:
        t0 = time.perf_counter()
        batch = collate(batches_for_step(samples, step, opts), opts.max_length, pad_id, device)
        features, logits = online(batch)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, opts)
        with autocast:
            loss, stats = objective(model, batch, features, logits, opts, weights, opts.seed * 100003 + step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, opts.clip))
        optimizer.step()
        stats.update(step=step + 1, lr=lr_at(step, opts), seconds=time.perf_counter() - t0)
        history.append(stats)
        log.add_step(stats)
        if on_step is not None:
            on_step(step + 1, stats)
        step += 1
        if step < opts.steps and opts.stop_at_step and step >= opts.stop_at_step:
            ended = "stop_at_step"
        elif step < opts.steps and opts.stop_after_s and time.perf_counter() - clock_start >= opts.stop_after_s:
            ended = "stop_after"
        if ended != "finished":
            break
        if opts.save_every and step % opts.save_every == 0 and step < opts.steps:
            checkpoint(step)
        if budget is not None:
            # the schedule is re-fitted into the budget from the recent pace (BudgetPlan), early in
            # the run only: each fit makes a small jump in the learning rate. The last fit stays in
            # opts.steps, which the checkpoint saves, so a --resume run continues that schedule
            opts.steps = budget.after_step(step, opts.steps, time.perf_counter())
    if step > start or not (out / CHECKPOINT).exists():
        log.runs.append({"start_step": start, "end_step": step, "steps": opts.steps, "ended": ended,
                         "seconds": time.perf_counter() - t_begin})
        checkpoint(step)
    model.eval()
    return history
