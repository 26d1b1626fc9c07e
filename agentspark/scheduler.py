"""How much of a draft to verify: DESIGN.md's causal prefix scheduler, reduced to one request.

Survival of prefix j is a_j = prod_{i<=j} c_i (c_i: the drafter's estimate that d_i survives given
d_<i did). With SPS(T) the target's measured forward steps per second at T tokens, the expected
throughput of verifying l tokens is (1 + sum_{j<=l} a_j) * SPS(1+l). We extend l one token at a
time and stop at the first extension that does not raise it. The early stop keeps the rule
causal: whether d_j is verified never depends on anything drafted after d_j.

Three length rules live here, each a pure function of the drafter's per-slot confidences:
- ``choose_length``: the causal prefix scheduler above (the engine's "adaptive" schedule).
- ``threshold_length``: DeepSpec's static rule, cut at the first slot whose c_k is below a
  threshold (the "threshold" schedule). Causal as well: the cut at k looks only at c_<=k.
- ``choose_length_no_early_stop``: the paper's Appendix-A variant, WRONG ON PURPOSE, a negative
  control for the equivalence tests and the audit only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def choose_length(confidences: Sequence[float], steps_per_second: Sequence[float]) -> int:
    """l in 0..len(confidences): steps_per_second[t] is SPS at t+1 tokens per forward."""
    survival, expected = 1.0, 1.0
    best = expected * steps_per_second[0]
    length = 0
    for j, c in enumerate(confidences, start=1):
        if j >= len(steps_per_second):
            break
        survival *= c
        throughput = (expected + survival) * steps_per_second[j]
        if throughput <= best:
            break  # the first admission that does not raise the throughput ends the schedule
        expected += survival
        best = throughput
        length = j
    return length


def threshold_length(confidences: Sequence[float], threshold: float) -> int:
    """DeepSpec's static rule: verify d_1..d_{k-1}, k the first slot with c_k < threshold.

    The test is per slot (c_k itself, not the cumulative survival a_k). Every slot passes a
    threshold of 0, so 0 verifies the whole draft; 1 verifies only slots the drafter is sure of.
    """
    for k, c in enumerate(confidences):
        if c < threshold:
            return k
    return len(confidences)


def choose_length_no_early_stop(confidences: Sequence[float], steps_per_second: Sequence[float]) -> int:
    """NEGATIVE CONTROL ONLY, never a schedule to serve with: the paper's Appendix-A variant.

    Same objective as ``choose_length`` but it scores every prefix length l and returns the
    argmax of (1 + sum_{j<=l} a_j) * SPS(1+l) (the smallest l among ties) instead of stopping at
    the first admission that does not raise it. A high c_{j+1} (which depends on d_j) can then
    pull d_j into verification after a low c_j had ruled it out, so whether d_j is verified
    depends on what was drafted at and after d_j: the output distribution is biased. The
    equivalence tests use it to show their test detects exactly that bug.
    """
    survival, expected = 1.0, 1.0
    best, length = expected * steps_per_second[0], 0
    for j, c in enumerate(confidences, start=1):
        if j >= len(steps_per_second):
            break
        survival *= c
        expected += survival
        throughput = expected * steps_per_second[j]
        if throughput > best:
            best, length = throughput, j
    return length


def measure_sps(step: Callable[[int], None], max_tokens: int, repeats: int = 5) -> list[float]:
    """SPS table: median steps per second of ``step(T)`` for T = 1..max_tokens (after a warm-up).

    The sizes are timed round-robin (1..max, 1..max, ...) rather than one after another, so that a
    slow spell of the machine (another process, a frequency change) spreads over all of them
    instead of skewing one: the scheduler acts on their ratios, and a table whose T=2 entry came
    out low by chance would turn speculation off for a whole session.
    """
    for t in range(1, max_tokens + 1):
        step(t)
    times: list[list[float]] = [[] for _ in range(max_tokens)]
    for _ in range(repeats):
        for t in range(1, max_tokens + 1):
            t0 = time.perf_counter()
            step(t)
            times[t - 1].append(time.perf_counter() - t0)
    table = [1.0 / max(statistics.median(ts), 1e-9) for ts in times]
    # Verifying more tokens never makes a forward faster: enforce that against timing noise.
    for i in range(1, len(table)):
        table[i] = min(table[i], table[i - 1])
    return table
