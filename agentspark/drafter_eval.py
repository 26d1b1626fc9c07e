"""Drafter evaluation following DeepSpec's protocol (deepspec-format.md §4).

Chain drafting, every drafted token verified (no scheduler), batch 1, the first user turn of each
prompt with the chat template and no system prompt of our own, one seed per sample (980406 + i).
Per round the accepted length counts the bonus token (a + 1), except a round that ends the request
on a stop token, which counts a. tau = the mean over all rounds of a dataset (round-weighted).
accept_rate@i = rounds with a > i / rounds that verified more than i tokens (unconditional prefix
survival); conditional@i = accept_rate@i / accept_rate@(i-1) (the paper's Fig. 2).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .calibration import ConfidenceRound, calibration_report
from .datasets import load_prompts
from .engine import Engine
from .prompts import encode_prompt
from .sampling import SamplingParams

EVAL_SEED = 980406


@dataclass
class EvalResult:
    drafter: str
    dataset: str
    temperature: float
    prompts: int = 0
    rounds: int = 0
    tau: float = 0.0
    tokens_per_second: float = 0.0
    accept_rate: list[float] = field(default_factory=list)
    conditional: list[float] = field(default_factory=list)
    calibration: list[dict[str, Any]] = field(default_factory=list)


def evaluate(engine: Engine, drafter_label: str, prompts_source: str, *, temperature: float, max_new_tokens: int,
             limit: int | None, progress: Any = None) -> list[EvalResult]:
    """One EvalResult per dataset (file stem) of ``prompts_source``."""
    by_dataset: dict[str, list[str]] = defaultdict(list)
    for rec in load_prompts(prompts_source):
        if limit is None or len(by_dataset[rec.dataset]) < limit:
            by_dataset[rec.dataset].append(rec.turns[0])
    records_confidences = getattr(getattr(engine.drafter, "model", None), "confidence_head", None) is not None
    results = []
    for dataset, turns in sorted(by_dataset.items()):
        if records_confidences:  # a DSpark drafter: record raw confidences and outcomes per round
            engine.drafter.recording = []
        res = EvalResult(drafter=drafter_label, dataset=dataset, temperature=temperature, prompts=len(turns))
        width = engine.max_draft
        survived, verified = [0] * width, [0] * width
        total_accept, new_tokens, seconds = 0, 0, 0.0
        for i, turn in enumerate(turns):
            ids = encode_prompt(engine.tokenizer, [{"role": "user", "content": turn}])
            params = SamplingParams(temperature=temperature, seed=EVAL_SEED + i, max_new_tokens=max_new_tokens)
            t0 = time.perf_counter()
            out = engine.generate(ids, params)
            seconds += time.perf_counter() - t0
            new_tokens += out.stats.new_tokens
            rounds = out.stats.rounds
            for j, r in enumerate(rounds):
                last = j == len(rounds) - 1
                total_accept += r.accepted + (0 if last and out.finish_reason == "stop" else 1)
                for k in range(min(r.verified, width)):
                    verified[k] += 1
                    survived[k] += r.accepted > k
            res.rounds += len(rounds)
            if progress is not None:
                progress(1)
        res.tau = total_accept / max(res.rounds, 1)
        res.tokens_per_second = new_tokens / max(seconds, 1e-9)
        res.accept_rate = [survived[k] / verified[k] if verified[k] else float("nan") for k in range(width)]
        res.conditional = [res.accept_rate[0]] + [
            res.accept_rate[k] / res.accept_rate[k - 1] if res.accept_rate[k - 1] else float("nan")
            for k in range(1, width)
        ]
        recording: list[ConfidenceRound] | None = engine.drafter.recording if records_confidences else None
        if recording:
            temps = getattr(engine.drafter.model.cfg, "confidence_temperatures", None)
            res.calibration = calibration_report(recording, width, temps)
        results.append(res)
    return results
