"""Calibration of the confidence head: metrics (ECE, AUROC) and sequential temperature scaling.

What is calibrated is what the scheduler uses: the survival of prefix k, a_k = prod_{i<=k} c_i,
against the observed event "d_1..d_k all survived" in real verification rounds. Sequential
temperature scaling (DESIGN.md, "Drafters") fixes one temperature per position, left to right:
with T_1..T_{k-1} already chosen, T_k is the value on a log grid that minimises the ECE of a_k,
c_i = sigmoid(logit_i / T_i).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ECE_BINS = 20  # DeepSpec's ConfidenceHeadRecorder uses 20 equal-width bins
TEMPERATURE_GRID = tuple(math.exp(math.log(0.2) + i * (math.log(10.0) - math.log(0.2)) / 79) for i in range(80))


@dataclass(frozen=True)
class ConfidenceRound:
    """One verification round: the raw confidence logits of the verified slots, and how many survived."""

    logits: tuple[float, ...]
    accepted: int


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ece(predicted: Sequence[float], observed: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over equal-width bins of |mean predicted - frequency| x share."""
    n = len(predicted)
    if n == 0:
        return float("nan")
    total = [0.0] * bins
    hits = [0.0] * bins
    count = [0] * bins
    for p, y in zip(predicted, observed):
        b = min(int(p * bins), bins - 1)
        total[b] += p
        hits[b] += float(y)
        count[b] += 1
    return sum(abs(total[b] - hits[b]) for b in range(bins)) / n


def auroc(predicted: Sequence[float], observed: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); nan if one class is absent."""
    pos = sum(1 for y in observed if y)
    neg = len(observed) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = sorted(range(len(predicted)), key=lambda i: predicted[i])
    ranks = [0.0] * len(predicted)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and predicted[order[j + 1]] == predicted[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, observed) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def prefix_survival(rounds: Sequence[ConfidenceRound], k: int, temps: Sequence[float]) -> tuple[list[float], list[bool]]:
    """For rounds that verified slot k (0-based): a_k = prod_{i<=k} sigmoid(l_i / T_i), and whether d_1..d_{k+1} survived."""
    predicted, observed = [], []
    for r in rounds:
        if len(r.logits) > k:
            a = 1.0
            for i in range(k + 1):
                a *= sigmoid(r.logits[i] / temps[i])
            predicted.append(a)
            observed.append(r.accepted > k)
    return predicted, observed


def fit_temperatures(rounds: Sequence[ConfidenceRound], positions: int) -> list[float]:
    """Sequential temperature scaling: one temperature per position, left to right."""
    temps: list[float] = []
    for k in range(positions):
        best_t, best_e = 1.0, float("inf")
        for t in TEMPERATURE_GRID:
            predicted, observed = prefix_survival(rounds, k, [*temps, t])
            if not predicted:
                break
            e = ece(predicted, observed)
            if e < best_e - 1e-12:
                best_t, best_e = t, e
        temps.append(best_t)
    return temps


def calibration_report(rounds: Sequence[ConfidenceRound], positions: int, temps: Sequence[float] | None) -> list[dict]:
    """Per position: samples, observed survival, ECE and AUROC of a_k before (T = 1) and after (temps)."""
    ones = [1.0] * positions
    out = []
    for k in range(positions):
        raw_p, observed = prefix_survival(rounds, k, ones)
        if not raw_p:
            break
        row = {"position": k + 1, "rounds": len(raw_p), "survival": sum(observed) / len(observed),
               "ece_raw": ece(raw_p, observed), "auc": auroc(raw_p, observed)}
        if temps is not None:
            cal_p, _ = prefix_survival(rounds, k, temps)
            row["ece_calibrated"] = ece(cal_p, observed)
            row["auc_calibrated"] = auroc(cal_p, observed)
            row["temperature"] = temps[k]
        out.append(row)
    return out
