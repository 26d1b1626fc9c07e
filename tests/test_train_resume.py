"""Training that adds up across runs (training/shards.py, checkpoint_state.py, train_log.py): the
checkpoint in capped safetensors shards, a schedule of N steps split over runs that stop early
and resume, and the report accumulating every run's log. Tiny random target, CPU, float32."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ours_from_hf, tiny_hf_model
from safetensors.torch import save_file

from agentspark.drafters.checkpoint import build_model
from agentspark.drafters.learned_config import LearnedDrafterConfig
from agentspark.training import shards
from agentspark.training.checkpoint_state import CHECKPOINT, load_state, read_state
from agentspark.training.data import Sample, load_samples, save_samples
from agentspark.training.dspark_objective import ObjectiveWeights
from agentspark.training.trainer import TrainOptions, batches_for_step, train

VOCAB = 16
LAYERS = (-1, 0, 1)
CAP = 24 * 1024  # bytes per shard in these tests: the tiny drafter's state takes several


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_target():
    return ours_from_hf(tiny_hf_model("llama", seed=31, vocab_size=VOCAB, num_hidden_layers=3))


def random_samples(n: int, seed: int) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, r = int(torch.randint(3, 8, (1,), generator=g)), int(torch.randint(6, 14, (1,), generator=g))
        ids = torch.randint(0, VOCAB, (p + r,), generator=g).tolist()
        out.append(Sample(ids, [0] * p + [1] * r, "tiny"))
    return out


def fresh_model(target):
    cfg = LearnedDrafterConfig.for_target(target.config, "dspark", target_layer_ids=LAYERS, block_size=4,
                                          markov_rank=4, mask_token_id=VOCAB - 1)
    torch.manual_seed(0)
    return build_model(cfg).attach_target(target.model)


def opts(**kw) -> TrainOptions:
    return TrainOptions(**{"steps": 12, "batch_size": 2, "lr": 3e-3, "num_anchors": 4, "max_length": 32,
                           "save_every": 0, "eval_samples": 4, **kw})


def run(target, samples, held, out, o, resume=False):
    model = fresh_model(target)
    history = train(model, target, samples, o, out, weights=ObjectiveWeights(), pad_id=0, resume=resume,
                    held_out=held)
    return model, history


def optimizer_state(out, target):
    model = fresh_model(target)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    step, log = load_state(out, model, opt)
    return step, log, model, opt.state_dict()["state"]


def test_shards_stay_under_the_cap_and_round_trip_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"big": torch.randn(100, 70, generator=g),  # 28 kB: more than one file of 8 kB holds
               "small": torch.randn(3, generator=g), "step": torch.tensor(7.0), "ids": torch.arange(5),
               "half": torch.randn(40, 30, generator=g).to(torch.bfloat16)}
    index = shards.save_sharded(tensors, tmp_path, "model", cap=8192)
    assert len(index["files"]) >= 4 and len(index["tensors"]["big"]["parts"]) >= 4
    assert all((tmp_path / f).stat().st_size <= 8192 for f in index["files"])
    back = shards.load_sharded(tmp_path, "model")
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_two_stopped_runs_resume_to_the_uninterrupted_run(tiny_target, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "MAX_SHARD_BYTES", CAP)
    samples, held = random_samples(10, seed=1), random_samples(4, seed=2)
    full_model, full = run(tiny_target, samples, held, tmp_path / "full", opts())

    half = tmp_path / "half"
    _, first = run(tiny_target, samples, held, half, opts(stop_at_step=5))
    assert [h["step"] for h in first] == [1, 2, 3, 4, 5]
    ckpt = half / CHECKPOINT
    files = sorted(f.name for f in ckpt.iterdir())
    assert sum(f.startswith("model-") for f in files) >= 2 and sum(f.startswith("optimizer-") for f in files) >= 3
    assert all((ckpt / f).stat().st_size <= CAP for f in files), {f: (ckpt / f).stat().st_size for f in files}
    assert not any(f.endswith(".pt") or f.endswith(".bin") for f in files)  # never pickle
    state = read_state(half)
    assert state["next_step"] == 5 and state["options"]["steps"] == 12  # the schedule left intact
    assert state["runs"][-1]["ended"] == "stop_at_step"
    # the data position is the step: the next batches are those of the uninterrupted run
    assert batches_for_step(samples, 5, opts()) == batches_for_step(samples, 5, opts(stop_at_step=5))

    resumed_model, second = run(tiny_target, samples, held, half, opts(), resume=True)
    assert [h["step"] for h in second] == list(range(1, 13))
    for a, b in zip(full, second):  # same batches, same anchors, same lr: the same numbers
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"], (a, b)
    for (k, a), (_, b) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), k

    step_f, log_f, _, opt_f = optimizer_state(tmp_path / "full", tiny_target)
    step_h, log_h, _, opt_h = optimizer_state(half, tiny_target)
    assert step_f == step_h == 12
    assert opt_f.keys() == opt_h.keys()
    for i in opt_f:
        for k in opt_f[i]:
            assert torch.equal(opt_f[i][k], opt_h[i][k]), (i, k)
    # the log adds up: both runs, the whole curve, a held-out score per checkpoint
    assert [r["ended"] for r in log_h.runs] == ["stop_at_step", "finished"]
    assert [c["step"] for c in log_h.curve] == [c["step"] for c in log_f.curve] == [10]
    assert log_h.curve[0]["loss"] == log_f.curve[0]["loss"]
    assert [e["step"] for e in log_h.evals] == [5, 12] and log_h.evals[-1] == log_f.evals[-1]


def test_stop_after_seconds_and_the_unsharded_layout_still_loads(tiny_target, tmp_path):
    samples = random_samples(6, seed=3)
    out = tmp_path / "run"
    model, history = run(tiny_target, samples, [], out, opts(stop_after_s=1e-9))
    assert len(history) == 1 and read_state(out)["runs"][-1]["ended"] == "stop_after"
    # rewrite the checkpoint in the layout before sharding: one model and one optimizer file
    ckpt = out / CHECKPOINT
    for stem in ("model", "optimizer"):
        save_file(shards.load_sharded(ckpt, stem), str(ckpt / f"{stem}.safetensors"))
        for f in ckpt.glob(f"{stem}-*.safetensors"):
            f.unlink()
        shards.index_path(ckpt, stem).unlink()
    step, _, loaded, _ = optimizer_state(out, tiny_target)
    assert step == 1
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_pipeline_report_accumulates_and_exports_only_at_the_end(tiny_target, tmp_path):
    from agentspark.training.pipeline import DrafterRecipe
    from agentspark.training.pipeline import run as run_pipeline

    data = tmp_path / "samples.jsonl"
    save_samples(random_samples(12, seed=4), data)
    out = tmp_path / "out"

    def recipe(**kw):
        return DrafterRecipe(num_layers=1, num_features=3, block_size=4, markov_rank=4, held_out=0.2,
                             calibration_prompts=1, calibration_tokens=4, storage="float32",
                             train=opts(steps=20, **kw))

    first = run_pipeline("tiny", tiny_target, "unused", out, recipe(stop_at_step=10), responses=data, log=lambda m: None)
    assert not first["finished"] and first["next_step"] == 10 and not (out / "drafter").exists()
    second = run_pipeline("tiny", tiny_target, "unused", out, recipe(), responses=data, resume=True, log=lambda m: None)
    assert second["finished"] and (out / "drafter" / "config.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert [r["ended"] for r in report["runs"]] == ["stop_at_step", "finished"]
    assert [c["step"] for c in report["loss_curve"]] == [10, 20]
    assert [e["step"] for e in report["evals"]] == [10, 20]


def test_samples_travel_gzipped_and_split(tmp_path):
    import gzip

    samples = random_samples(30, seed=5)
    save_samples(samples, tmp_path / "plain" / "samples.jsonl")
    raw = gzip.compress((tmp_path / "plain" / "samples.jsonl").read_bytes())
    one = tmp_path / "gz"
    one.mkdir()
    (one / "samples.jsonl.gz").write_bytes(raw)
    assert load_samples(one / "samples.jsonl") == samples
    parts = tmp_path / "parts"  # what `gzip -c | split -b 15M -d -a 3 - samples.jsonl.gz.part-` leaves
    parts.mkdir()
    step = len(raw) // 3 + 1
    for i in range(3):
        (parts / f"samples.jsonl.gz.part-{i:03d}").write_bytes(raw[i * step : (i + 1) * step])
    assert load_samples(parts / "samples.jsonl") == samples


def test_checkpoint_files_group_into_device_calls(tiny_target, tmp_path, monkeypatch):
    from agentspark.training.carry import groups, main

    monkeypatch.setattr(shards, "MAX_SHARD_BYTES", CAP)
    run(tiny_target, random_samples(6, seed=6), [], tmp_path / "run", opts(steps=1))
    ckpt = tmp_path / "run" / CHECKPOINT
    found = groups(ckpt, max_files=3, max_bytes=2 * CAP)
    assert len(found) >= 3 and sorted(f for g in found for f in g) == sorted(ckpt.iterdir())
    assert all(len(g) <= 3 and (sum(f.stat().st_size for f in g) <= 2 * CAP or len(g) == 1) for g in found)
    default_groups = groups(ckpt)
    for bad in (["--group", "0"], [], ["--group", str(len(default_groups) + 1)]):  # nothing copied: said so
        assert main([str(ckpt), str(tmp_path / "nowhere"), *bad]) == 2
    assert not (tmp_path / "nowhere").exists()
    for k in range(1, len(default_groups) + 1):  # copied group by group, the checkpoint arrives whole
        assert main([str(ckpt), str(tmp_path / "back" / CHECKPOINT), "--group", str(k)]) == 0
    assert sorted(f.name for f in (tmp_path / "back" / CHECKPOINT).iterdir()) == sorted(f.name for f in ckpt.iterdir())
    step, _, back, _ = optimizer_state(tmp_path / "back", tiny_target)
    _, _, here, _ = optimizer_state(tmp_path / "run", tiny_target)
    assert step == 1 and all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), here.state_dict().values()))


def test_time_budget_paces_by_the_steps_after_the_start_up(tiny_target, tmp_path, monkeypatch):
    """--time-budget fits the schedule at the pace of steps 21..60, not of the first 20, which carry
    the start-up (a resumed checkpoint, kernel selection on a GPU). On a synthetic clock the first
    20 steps take 1 s each and the rest 0.1 s: with a 26 s budget the pace of steps 21..60 plans
    60 + (26 - 24) / 0.1 = 80 steps; the pace of the first 20 (the old rule, the control) would
    have planned 20 + (26 - 20) / 1 = 26. The run ends before the first re-fit (step 120)."""
    samples = random_samples(6, seed=5)
    history, planned, _ = budget_run(tiny_target, samples, tmp_path / "run", monkeypatch, 26.0,
                                     lambda step: 1.0 if step <= 20 else 0.1)
    assert len(history) == planned and 78 <= planned <= 80


def budget_run(target, samples, out, monkeypatch, budget_s, pace):
    """train() with --time-budget on a synthetic clock: step s (1-based) takes pace(s) seconds.
    Returns the history, the schedule's length in training_state.json and the clock at the end."""
    import types

    from agentspark.training import trainer

    now = [0.0]
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def tick(step, stats):
        now[0] += pace(step)

    history = train(fresh_model(target), target, samples, opts(steps=100_000, eval_samples=0, time_budget_s=budget_s),
                    out, weights=ObjectiveWeights(), pad_id=0, on_step=tick)
    state = read_state(out)
    assert state["options"]["steps"] == state["runs"][-1]["steps"]  # what a --resume run continues
    return history, state["options"]["steps"], now[0]


def simulate_budget(budget_s, steps, pace, **kw):
    """train()'s loop around BudgetPlan without the training (thousands of steps in microseconds):
    returns the schedule's length, the clock at its end and the plan (its fits)."""
    from agentspark.training.trainer import BudgetPlan

    plan, now, step = BudgetPlan(budget_s, 0, steps, 0.0, **kw), 0.0, 0
    while step < steps:
        now += pace(step + 1)
        step += 1
        steps = plan.after_step(step, steps, now)
    return steps, now, plan


def h200_pace(step):
    """issue 12: on an H200 (11,100 samples, batch 16) steps meeting a new sequence shape were slow,
    steps 21..60 ran at ~0.17 s against a median of 0.065 s; here the first 100 steps are slow."""
    return 0.17 if step <= 100 else 0.065


@pytest.mark.parametrize("refit", [True, False], ids=["refits", "control-single-fit"])
def test_time_budget_refits_from_the_recent_pace(refit):
    """--steps 7000 --time-budget 380 with the H200's slow first steps: one fit at the pace of steps
    21..60 (0.17 s) planned 60 + 369.8 / 0.17 = 2,235 steps that end after 156 s, under half of the
    budget (the H200 run: 2,196 steps, 162 s); re-fitted at steps 120, 240, 480, ... from the pace
    since the previous fit, the run uses 85-100% of it and never goes past it."""
    steps, end, plan = simulate_budget(380.0, 7000, h200_pace, **({} if refit else {"refit_until": 0.0}))
    if not refit:
        assert [s for s, _ in plan.fits] == [60] and 2200 <= steps <= 2240 and end < 0.5 * 380
        return
    assert 0.85 * 380 <= end <= 380 and 5000 < steps < 7000
    assert [s for s, _ in plan.fits][:3] == [60, 120, 240]
    assert all(s <= 0.5 * n for s, n in plan.fits[1:])  # re-fits only in the schedule's first half
    assert steps == plan.fits[-1][1]


def test_time_budget_fits_stay_between_the_step_reached_and_steps():
    """A budget that a fast pace leaves unused keeps --steps (never more); a pace that slows down
    shrinks the schedule at the next re-fit, never below the step reached (the run ends there)."""
    steps, end, _ = simulate_budget(1000.0, 3000, lambda s: 0.1)
    assert steps == 3000 and end == pytest.approx(300.0)
    steps, end, plan = simulate_budget(30.0, 100_000, lambda s: 0.1 if s <= 60 else 1.0)
    assert plan.fits[0] == (60, 60 + 240) and steps == 120 and plan.fits[1] == (120, 120)
    assert end == pytest.approx(66.0)  # 6 s over the budget, not the 240 s of the first fit


def test_time_budget_refit_in_train(tiny_target, tmp_path, monkeypatch):
    """Through train(): steps 1..60 take 0.2 s and the rest 0.15 s. The first fit (step 60, at 12 s)
    plans 60 + 36 / 0.2 = 240 steps (which would end at 39 s of the 48); the re-fit at step 120
    (21 s, 0.15 s a step since step 60) plans 120 + 27 / 0.15 = 300, which end at the budget; no
    re-fit at step 240 (past half of 300). The length saved in training_state.json is the last."""
    samples = random_samples(6, seed=5)
    history, planned, end = budget_run(tiny_target, samples, tmp_path / "run", monkeypatch, 48.0,
                                       lambda step: 0.2 if step <= 60 else 0.15)
    assert len(history) == planned and 298 <= planned <= 300 and 0.85 * 48 <= end <= 48 + 1e-6
