"""train-drafter, end to end: regenerate -> self-written chat -> agent sessions -> split -> train online ->
calibrate -> export.

Layout of ``out``:
  data/samples.jsonl        the regenerated conversations (reused by later runs and --resume; also
                            read as samples.jsonl.gz or its split parts samples.jsonl.gz.part-*)
  data/chat_prompts.jsonl   the chat requests the target wrote itself (chat_prompts.py; reused likewise)
  data/chat_samples.jsonl   their answers, regenerated like samples.jsonl (reused likewise)
  data/agent_samples.jsonl  the agent sessions (agent_data.py; reused likewise)
  checkpoint/               the latest resumable state (checkpoint_state.py: float32 weights and
                            optimizer state in shards of at most 16 MiB, next step, run log)
  drafter/                  the exported drafter (config.json + model.safetensors, calibrated)
  report.json               options, data sizes, the loss curve, held-out scores per checkpoint and
                            the runs so far (all carried in the checkpoint), calibration per position

A run that stops before the schedule's end (--stop-after, --stop-at-step) leaves the checkpoint
and the report and skips calibration and export: the run that finishes the schedule does them.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..calibration import calibration_report, fit_temperatures
from ..drafters.checkpoint import build_model, place_like_target, save_drafter
from ..drafters.dspark import DSparkDrafter
from ..drafters.learned_config import LearnedDrafterConfig, default_layer_ids
from ..engine import Engine
from ..errors import InvalidRequestError
from ..model.loading import LoadedModel
from ..sampling import SamplingParams
from .agent_data import AgentDataParams, generate_agent_samples, refuse_eval_prompts, target_backend
from .chat_prompts import CHAT_DATASET, ChatPromptParams, generate_chat_prompts, load_chat_prompts, save_chat_prompts
from .checkpoint_state import read_state
from .data import (RegenParams, Sample, draft_vocabulary, has_samples, load_samples, pick_mask_token, regenerate,
                   save_samples, split_held_out)
from .dspark_objective import ObjectiveWeights
from .train_log import TrainLog
from .trainer import TrainOptions, train

SAMPLES = "samples.jsonl"
AGENT_SAMPLES = "agent_samples.jsonl"
CHAT_PROMPTS = "chat_prompts.jsonl"
CHAT_SAMPLES = "chat_samples.jsonl"


@dataclass
class DrafterRecipe:
    method: str = "dspark"
    num_layers: int = 1
    num_features: int = 3  # target layers fused as context
    block_size: int = 7
    markov_rank: int = 32
    draft_vocab_size: int = 0  # 0 = the full vocabulary
    held_out: float = 0.05
    calibration_prompts: int = 32
    calibration_tokens: int = 128
    storage: str = "bfloat16"
    train: TrainOptions = field(default_factory=TrainOptions)
    regen: RegenParams = field(default_factory=RegenParams)
    agent: AgentDataParams = field(default_factory=AgentDataParams)
    chat: ChatPromptParams = field(default_factory=ChatPromptParams)


def load_hf_copy(target_spec: str, target: LoadedModel) -> Any:
    """The target's weights loaded again through transformers, for its batched ``generate``."""
    from transformers import AutoModelForCausalLM

    from ..model.loading import resolve_folder

    folder = resolve_folder(target_spec)
    # use_safetensors: a pytorch_model.bin beside the safetensors is never unpickled
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=target.model.dtype,
                                                use_safetensors=True).to(target.model.device).eval()


def _release(target: LoadedModel) -> None:
    """After the caller dropped its HF copy: give its device memory back before training."""
    if target.model.device.type == "cuda":
        torch.cuda.empty_cache()


def regenerate_with_hf(target_spec: str, target: LoadedModel, prompts: str | Path, recipe: DrafterRecipe,
                       limit: int | None, progress: Any = None) -> list[Sample]:
    """Load the same weights through transformers (batched generate) and answer every prompt."""
    hf = load_hf_copy(target_spec, target)
    try:
        return regenerate(hf, target.tokenizer, prompts, recipe.regen, limit=limit, progress=progress)
    finally:
        del hf
        _release(target)


def new_drafter_model(target: LoadedModel, recipe: DrafterRecipe, samples: list[Sample]) -> torch.nn.Module:
    t = target.config
    vocab = None
    if recipe.draft_vocab_size and recipe.draft_vocab_size < t.vocab_size:
        vocab = draft_vocabulary(samples, recipe.draft_vocab_size, set(target.eos_token_ids))
    cfg = LearnedDrafterConfig.for_target(
        t, recipe.method, num_layers=recipe.num_layers,
        target_layer_ids=default_layer_ids(t.num_layers, recipe.num_features), block_size=recipe.block_size,
        mask_token_id=pick_mask_token(target.tokenizer, t.vocab_size), markov_rank=recipe.markov_rank,
        draft_vocab=vocab,
    )
    torch.manual_seed(recipe.train.seed)
    model = build_model(cfg)
    model.to(device=target.model.device)  # float32 master weights; autocast does bf16 on CUDA
    return model.attach_target(target.model)


def collect_rounds(model: torch.nn.Module, target: LoadedModel, prompts: list[list[int]], params: SamplingParams):
    """Verify full blocks on ``prompts`` and record every round's raw confidences and outcome."""
    drafter = DSparkDrafter(model)
    drafter.recording = []
    engine = Engine(target, drafter, max_draft=model.cfg.block_size, schedule="full")
    for i, ids in enumerate(prompts):
        seeded = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                seed=1000 + i, max_new_tokens=params.max_new_tokens)
        engine.generate(ids, seeded)
    return drafter.recording


def prompt_part(sample: Sample) -> list[int]:
    n = sample.loss_mask.index(1) if 1 in sample.loss_mask else len(sample.input_ids)
    return sample.input_ids[:n]


def regenerated_samples(target_spec: str, target: LoadedModel, prompts: str | Path, out: Path, recipe: DrafterRecipe,
                        responses: Path | None, limit: int | None, log: Any, progress_factory: Any) -> list[Sample]:
    cached = out / "data" / SAMPLES
    if responses is not None:
        samples = load_samples(responses)
        log(f"samples: {len(samples)} from {responses}")
    elif has_samples(cached):
        samples = load_samples(cached)
        log(f"samples: {len(samples)} reused from {cached}")
    else:
        log(f"regenerating responses with the target ({recipe.regen})")
        with progress_factory("regenerate", limit) if progress_factory else nullcontext() as advance:
            samples = regenerate_with_hf(target_spec, target, prompts, recipe, limit, advance)
        save_samples(samples, cached)
        log(f"samples: {len(samples)} regenerated -> {cached}")
    return samples


def chat_samples(target_spec: str, target: LoadedModel, out: Path, recipe: DrafterRecipe, log: Any,
                 progress_factory: Any) -> tuple[int, list[Sample]]:
    """(prompts, samples) of ``recipe.chat`` (none when its prompts are 0): the samples reused from
    data/chat_samples.jsonl when there; else the requests reused from data/chat_prompts.jsonl when
    there, else written by the target and saved there; then answered like the training prompts
    (``recipe.regen``) and saved. The HF copy is loaded again here rather than shared with the
    regeneration's: a second load only in a run that writes both, and no copy held meanwhile."""
    params = recipe.chat
    if params.prompts <= 0:
        return 0, []
    prompts_path, samples_path = out / "data" / CHAT_PROMPTS, out / "data" / CHAT_SAMPLES
    records = load_chat_prompts(prompts_path) if has_samples(prompts_path) else None
    if records is not None:
        note = "" if len(records) == params.prompts else f" (not the {params.prompts} asked: delete it to write them again)"
        log(f"chat prompts: {len(records)} reused from {prompts_path}{note}")
    if has_samples(samples_path):
        samples = load_samples(samples_path)
        log(f"chat samples: {len(samples)} reused from {samples_path}")
        # the prompts file may not have travelled with them: count the prompts the samples answer
        return (len(records) if records is not None else len({tuple(prompt_part(s)) for s in samples})), samples
    hf = load_hf_copy(target_spec, target)
    try:
        if records is None:
            log(f"writing {params.prompts} chat requests with the target ({params})")
            with progress_factory("chat prompts", params.prompts) if progress_factory else nullcontext() as advance:
                records = generate_chat_prompts(hf, target.tokenizer, params, progress=advance)
            if not records:
                raise InvalidRequestError(f"the target wrote no usable chat request in {params.attempts * params.prompts} "
                                          "tries (none closed its turn, or all were short, repeated or held chat "
                                          "markup); run without --chat-prompts")
            save_chat_prompts(records, prompts_path)
            note = "" if len(records) == params.prompts else f" (of {params.prompts} asked: the tries ran out)"
            log(f"chat prompts: {len(records)}{note} -> {prompts_path}")
        total = len(records) * (recipe.regen.answers + int(recipe.regen.greedy))
        with progress_factory("answer chat prompts", total) if progress_factory else nullcontext() as advance:
            samples = regenerate(hf, target.tokenizer, records, recipe.regen, progress=advance)
    finally:
        del hf
        _release(target)
    save_samples(samples, samples_path)
    log(f"chat samples: {len(samples)} answered -> {samples_path}")
    return len(records), samples


def agent_samples(target: LoadedModel, prompts: str | Path, out: Path, recipe: DrafterRecipe, limit: int | None,
                  log: Any, progress_factory: Any, backend: Any = None) -> list[Sample]:
    """The agent sessions of ``recipe.agent`` (none when sessions is 0): reused from
    data/agent_samples.jsonl when there, else run on the target (or ``backend``) and saved there."""
    params = recipe.agent
    cached = out / "data" / AGENT_SAMPLES
    if params.sessions <= 0:
        return []
    if has_samples(cached):
        samples = load_samples(cached)
        note = "" if len(samples) == params.sessions else f" (not the {params.sessions} asked: delete it to run them again)"
        log(f"agent samples: {len(samples)} reused from {cached}{note}")
        return samples
    from ..datasets import load_prompts

    refuse_eval_prompts(prompts)
    records = load_prompts(prompts, limit)
    log(f"running {params.sessions} agent sessions with the target ({params})")
    own = backend is None
    backend = target_backend(target, params) if own else backend
    try:
        with progress_factory("agent sessions", params.sessions) if progress_factory else nullcontext() as advance:
            samples = generate_agent_samples(backend, records, params, progress=advance)
    finally:
        if own and hasattr(backend, "close"):
            backend.close()
    save_samples(samples, cached)
    log(f"agent samples: {len(samples)} sessions, {sum(s.loss_tokens for s in samples)} generated tokens -> {cached}")
    return samples


def run(target_spec: str, target: LoadedModel, prompts: str | Path, out: Path, recipe: DrafterRecipe, *,
        responses: Path | None = None, limit: int | None = None, resume: bool = False,
        log: Any = print, progress_factory: Any = None, agent_backend: Any = None,
        clock_start: float | None = None) -> dict[str, Any]:
    """``agent_backend``: run the agent sessions on it instead of the target's own (tests).
    ``clock_start``: the perf_counter time --stop-after counts from (default: now)."""
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    clock_start = t_start if clock_start is None else clock_start
    samples = regenerated_samples(target_spec, target, prompts, out, recipe, responses, limit, log, progress_factory)
    regen_s = time.perf_counter() - t_start
    chat_prompts, chat = chat_samples(target_spec, target, out, recipe, log, progress_factory)
    chat_s = time.perf_counter() - t_start - regen_s
    agent = agent_samples(target, prompts, out, recipe, limit, log, progress_factory, agent_backend)
    agent_s = time.perf_counter() - t_start - regen_s - chat_s
    samples = [s for s in samples + agent + chat if s.loss_tokens >= 2]
    if not samples:
        raise InvalidRequestError("no usable training samples (every response was empty)")
    train_set, held_out = split_held_out(samples, recipe.held_out, recipe.train.seed)
    model = new_drafter_model(target, recipe, train_set)
    log(f"drafter: {model.cfg.method}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M trainable parameters, "
        f"layers {model.cfg.target_layer_ids} of the target, draft vocab {model.cfg.draft_vocab_size}")
    pad = target.tokenizer.pad_token_id if target.tokenizer is not None and target.tokenizer.pad_token_id is not None else 0
    before = read_state(out) if resume else None
    if before is not None and before.get("options", {}).get("steps") not in (None, recipe.train.steps):
        log(f"note: the checkpoint's schedule has {before['options']['steps']} steps, this run {recipe.train.steps} "
            "(the learning-rate schedule changes from here)")
    t_train = time.perf_counter()
    with progress_factory("train", recipe.train.steps) if progress_factory else nullcontext() as advance:
        if advance and before is not None:
            advance(int(before["next_step"]))  # the bar counts the schedule, not this run
        history = train(model, target, train_set, recipe.train, out, weights=ObjectiveWeights.for_method(recipe.method),
                        pad_id=pad, resume=resume, on_step=(lambda s, st: advance(1, st)) if advance else None,
                        held_out=held_out, clock_start=clock_start)
    train_s = time.perf_counter() - t_train
    state = read_state(out) or {}
    next_step = int(state.get("next_step", 0))
    finished = next_step >= recipe.train.steps
    report: dict[str, Any] = {
        "recipe": asdict(recipe), "target": target_spec, "samples": len(samples),
        "agent_samples": sum(s.dataset.startswith("agent-") for s in samples), "train_samples": len(train_set),
        "held_out_samples": len(held_out), "regenerate_s": regen_s, "agent_sessions_s": agent_s,
        "chat_prompts": chat_prompts, "chat_samples": sum(s.dataset == CHAT_DATASET for s in samples),
        "chat_prompts_s": chat_s, "train_s": train_s,
        "next_step": next_step, "steps": recipe.train.steps, "finished": finished,
        "final_loss": _mean_tail(history),
    }
    if not finished:
        report.update(_log_report(state), total_s=time.perf_counter() - t_start)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        log(f"stopped at step {next_step} of {recipe.train.steps}: the checkpoint is in {out / 'checkpoint'}; "
            "run again with --resume to continue")
        return report
    # --- calibrate on the held-out split: real verification rounds at temperature 1 ---
    calibration: list[dict] = []
    # (confidence heads only: DFlash has none, and EAGLE-3 drafts have no confidences at all)
    if getattr(model, "confidence_head", None) is not None and held_out:
        place_like_target(model, target).attach_target(target.model)
        prompts_ho = [prompt_part(s) for s in held_out[: recipe.calibration_prompts]]
        rounds = collect_rounds(model, target, prompts_ho, SamplingParams(temperature=1.0,
                                                                          max_new_tokens=recipe.calibration_tokens))
        temps = fit_temperatures(rounds, model.cfg.block_size)
        model.cfg = model.cfg.with_(confidence_temperatures=tuple(temps))
        model.confidence_temperatures.copy_(torch.tensor(temps))
        calibration = calibration_report(rounds, model.cfg.block_size, temps)
        log(f"calibrated on {len(rounds)} held-out rounds: temperatures {[round(t, 2) for t in temps]}")
    final = save_drafter(model, out / "drafter", storage=recipe.storage)
    size = sum(f.stat().st_size for f in final.iterdir())
    report.update(drafter_bytes=size, calibration=calibration, **_log_report(state), total_s=time.perf_counter() - t_start)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(f"drafter written to {final} ({size / 2**20:.2f} MiB)")
    return report


def _mean_tail(history: list[dict], n: int = 50) -> dict[str, float]:
    tail = history[-n:]
    return {k: sum(h[k] for h in tail) / len(tail) for k in tail[0] if isinstance(tail[0][k], float)} if tail else {}


def _log_report(state: dict) -> dict[str, Any]:
    """What the checkpoint's log holds of every run so far: the loss curve, held-out scores, runs."""
    log = TrainLog.from_json(state)
    return {"loss_curve": log.curve, "evals": log.evals, "runs": log.runs}
