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

The SPS table they read is an ``SpsTable``: measured once, robust to a loaded machine, and
refreshed from the rounds' own verify timings (its docstring has the rule).
"""

from __future__ import annotations

import math
import numbers
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heapreplace
from itertools import accumulate, chain

import torch
from torch import Tensor

from .errors import InvalidRequestError


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




def _candidates(confidences: Sequence[Sequence[float]], limit: int) -> list[tuple[float, int, int]]:
    """(survival a_{r,j}, r, j) of every draft token, best first; ties by request, then position, so
    each request's admitted tokens stay a prefix (a_{r,j} never rises with j: c <= 1)."""
    out = []
    for r, cs in enumerate(confidences):
        survival = 1.0
        for j, c in enumerate(cs[:limit], start=1):
            survival *= c
            out.append((-survival, r, j))
    out.sort()  # (-a, r, j) in plain tuple order: the key function cost ~1 us a candidate (x 112 at 16 rows)
    return [(-a, r, j) for a, r, j in out]


RoundTokens = Callable[[int, int, int], int]  # (rows, longest row, total tokens) -> tokens the forward computes


def _total_tokens(rows: int, longest: int, total: int) -> int:
    return total


def choose_lengths(confidences: Sequence[Sequence[float]], steps_per_second: Sequence[float],
                   round_tokens: RoundTokens = _total_tokens, by_longest: Sequence[int] | None = None) -> list[int]:
    """DESIGN.md's Θ rule across R requests: l_r for each, l_r in 0..len(confidences[r]).

    Θ = (Σ_r (1 + Σ_{j<=l_r} a_{r,j})) · SPS(B), with steps_per_second[B-1] the SPS at B tokens in
    the forward (B past the table: never admitted). B is what the forward computes for the chosen
    rows: ``round_tokens(R, 1 + max l_r, Σ_r (1 + l_r))`` (the total by default; a runner that
    pads every row to the longest says so, ModelRunner.round_tokens). Candidates (r, j) are
    admitted in descending a_{r,j}, one at a time, and the first admission that does not raise Θ
    ends the schedule. Whether d_{r,j} is verified then depends only on candidates at least as
    likely, which are d_{r,<j} and other requests' drafts, never on what request r drafted after
    d_{r,j}: the early stop that keeps it lossless. One request: ``choose_length``.

    ``by_longest``: where B does not depend on the total (every row padded to the longest),
    ``by_longest[l]`` is ``round_tokens(R, l, any total)`` for l = 1 .. the longest row
    (``ModelRunner.tokens_by_longest``): a list read instead of a call per candidate (1.6 us each
    on the CPU runner).

    The admission order is ``_candidates``' sort, produced lazily by a heap merge of the rows:
    with every confidence in [0, 1] a row's survival never rises along it, so each row is already
    in order and the rule, stopping at its first admission that does not pay, takes a few heap
    steps instead of building and sorting every candidate (112 at 16 rows of 7 drafts). The heap
    holds (-a, r, j), the sort's own keys, so ties come out as there (request, then position),
    and a row's next survival is its running product in the sort's order: the same floats. A
    confidence outside [0, 1] (NaN included) takes ``choose_lengths_reference``, the sort itself;
    ``tests/test_scheduler_fast_paths.py`` holds the two equal.
    """
    rows = len(confidences)
    lengths = [0] * rows
    every = list(chain.from_iterable(confidences))  # in C: three passes over it beat a check per row
    if not every:
        return lengths  # no candidate: the reference's answer too
    if not (0.0 <= min(every) and max(every) <= 1.0 and (t := sum(every)) == t):  # the sum: NaN, which min/max skip
        return choose_lengths_reference(confidences, steps_per_second, round_tokens)
    total, longest = rows, 1  # the anchors: one token per request is always in the forward
    tokens = round_tokens(rows, longest, total) if by_longest is None else by_longest[longest]
    limit = len(steps_per_second)
    if tokens > limit:
        return lengths
    expected = float(rows)
    best = expected * steps_per_second[tokens - 1]
    heap = [(-cs[0], r, 1) for r, cs in enumerate(confidences) if cs]  # (-a_{r,1}, r, 1): each row's head
    heapify(heap)
    while heap:
        neg, r, j = heap[0]  # the best candidate left: (-a_{r,j}, r, j)
        wider = longest if longest > j else 1 + j  # max(longest, 1 + j), without the call
        after = round_tokens(rows, wider, total + 1) if by_longest is None else by_longest[wider]
        if after > limit:
            break
        throughput = (expected - neg) * steps_per_second[after - 1]  # expected + a_{r,j}
        if throughput <= best:
            break
        expected, best, total, longest = expected - neg, throughput, total + 1, wider
        lengths[r] = j
        cs = confidences[r]
        if j < len(cs) and j < limit:
            heapreplace(heap, (neg * cs[j], r, j + 1))  # -(a_{r,j} c_{r,j+1}): the sort's -a_{r,j+1}, exactly
        else:
            heappop(heap)
    return lengths


def choose_lengths_reference(confidences: Sequence[Sequence[float]], steps_per_second: Sequence[float],
                             round_tokens: RoundTokens = _total_tokens) -> list[int]:
    """``choose_lengths`` as first written: every candidate built and sorted (``_candidates``), then
    admitted in that order. The reference the fast path is held equal to (tests), and the path it
    takes where a confidence lies outside [0, 1]."""
    rows = len(confidences)
    lengths = [0] * rows
    if not confidences:
        return lengths
    total, longest = rows, 1  # the anchors: one token per request is always in the forward
    tokens = round_tokens(rows, longest, total)
    if tokens > len(steps_per_second):
        return lengths
    expected = float(rows)
    best = expected * steps_per_second[tokens - 1]
    limit = len(steps_per_second)
    for survival, r, j in _candidates(confidences, limit):
        wider = longest if longest > j else 1 + j  # max(longest, 1 + j), without the call
        after = round_tokens(rows, wider, total + 1)
        if after > limit:
            break
        throughput = (expected + survival) * steps_per_second[after - 1]
        if throughput <= best:
            break
        expected, best, total, longest = expected + survival, throughput, total + 1, wider
        lengths[r] = j
    return lengths


def choose_lengths_no_early_stop(confidences: Sequence[Sequence[float]], steps_per_second: Sequence[float],
                                 round_tokens: RoundTokens = _total_tokens) -> list[int]:
    """NEGATIVE CONTROL ONLY: the Appendix-A variant across requests. It walks the same admission
    order to its end and keeps the prefix of it with the best Θ, so a likely d_{r,j+1} (whose
    confidence depends on d_{r,j}) can pull d_{r,j} in after the rule had stopped: biased."""
    rows = len(confidences)
    lengths = [0] * rows
    if not confidences:
        return lengths
    total, longest = rows, 1
    tokens = round_tokens(rows, longest, total)
    if tokens > len(steps_per_second):
        return lengths
    expected = float(rows)
    best, best_lengths = expected * steps_per_second[tokens - 1], list(lengths)
    for survival, r, j in _candidates(confidences, len(steps_per_second)):
        after = round_tokens(rows, max(longest, 1 + j), total + 1)
        if after > len(steps_per_second):
            break
        expected, total, longest = expected + survival, total + 1, max(longest, 1 + j)
        lengths[r] = j
        throughput = expected * steps_per_second[after - 1]
        if throughput > best:
            best, best_lengths = throughput, list(lengths)
    return best_lengths


# ---- the SPS table -------------------------------------------------------------------------------

_LOW_QUANTILE = 0.2  # per size, this quantile of its timings (the minimum of 5): load only adds time
_SPIKE = 1.10  # an entry more than 10% above the robust line through the others is a spike
_WINDOW = 32  # rounds kept per size
_RECENT = 512  # ...and only while they are among the last 512 observed (costs drift as contexts grow)
_MIN_ROUNDS = 4  # a size's own rounds replace its measured entry once it has this many recent ones
_REFIT_EVERY = 16  # observe() refits once per this many calls: a fit costs tens of microseconds
_TINY, _HUGE = 1e-9, 1e9  # seconds: bounds against a coarse clock reading 0, and overflow


def _low(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[int(_LOW_QUANTILE * (len(s) - 1))]


def _line(costs: Sequence[float], first: int) -> tuple[float, float]:
    """Theil-Sen line cost(t) = alpha + beta * t through (t, costs[t - first]): beta is the median
    pairwise slope (clamped >= 0), alpha the median intercept. Up to about 29% of the points can be
    anything without moving it far, where least squares follows every spike."""
    pts = list(enumerate(costs, start=first))
    slopes = [(cj - ci) / (j - i) for k, (i, ci) in enumerate(pts) for j, cj in pts[k + 1 :]]
    beta = max(0.0, statistics.median(slopes))
    alpha = statistics.median(c - beta * t for t, c in pts)
    return alpha, beta


def _between(low: dict[int, float], t: int) -> float:
    """Cost at an untimed size t, linear between the nearest timed sizes below and above it."""
    below = max(s for s in low if s < t)
    above = min(s for s in low if s > t)
    return low[below] + (low[above] - low[below]) * (t - below) / (above - below)


def quick_sizes(max_tokens: int) -> list[int]:
    """The sizes a quick measurement times: 1, 2, 3 (where the cost's step and slope show) and the
    largest; 12 forwards at 3 repeats instead of 5 x max_tokens."""
    return sorted({1, min(2, max_tokens), min(3, max_tokens), max_tokens})


def _monotone_costs(raw: Sequence[float], spikes: bool = True) -> list[float]:
    """Seconds per forward at 1..n tokens from per-size estimates ``raw`` (the rule in SpsTable);
    ``spikes=False`` skips the line that corrects spikes (a batch table's curve is not a line)."""
    # clamped by comparisons, not min(max()): the batch table's 512 sizes are refitted as rounds come
    costs = [_TINY if c < _TINY else _HUGE if c > _HUGE else c for c in map(float, raw)]
    if spikes and len(costs) >= 4:  # a line needs 3 sizes >= 2 to out-vote one spike
        alpha, beta = _line(costs[1:], first=2)
        for t in range(2, len(costs) + 1):
            fit = alpha + beta * t
            if fit > 0 and costs[t - 1] > _SPIKE * fit:
                costs[t - 1] = fit
    # A forward of more tokens never costs less: a size that looks slower than a larger one was
    # slowed down by something else. Take the largest non-decreasing curve below the estimates
    # (cost_t = min over s >= t), so such an entry drops to the larger size's, instead of the old
    # running minimum over SPS, which passed one slow T=2 entry on to every larger size.
    costs.reverse()  # the running minimum from the largest size down, in C (accumulate)
    costs = list(accumulate(costs, min))
    costs.reverse()
    return costs


class SpsTable:
    """Target steps per second at 1..n tokens per forward: measured once, refreshed by the rounds.

    The scheduler acts on the ratios SPS(1+l) / SPS(1): one entry for T=2 that comes out slow by
    chance (a loaded machine) switches speculation off for a whole session. So:

    - ``measure`` times every size ``repeats`` times after a warm-up, interleaved (each pass over
      the sizes starts one size later, so a periodic load does not always hit the same size), and
      keeps per size the 20% quantile of its timings (the minimum of 5): load only ever adds time.
    - Those per-size costs go through one monotone rule: a Theil-Sen line cost = alpha + beta*T
      (beta >= 0) through the sizes T >= 2 replaces any of them that lies more than 10% above it
      (a spike); then cost_T = min over S >= T of cost_S (more tokens never cost less). T = 1 is
      kept out of the line: a one-token forward often runs another kernel (a matrix-vector
      product) and a real step between T=1 and T=2 must not be smoothed away. Only spikes upwards
      are corrected; nothing makes a forward faster than it is.
    - ``observe(tokens, seconds)`` takes each round's own verify timing. Per size the last 32
      timings among the last 512 observations count; a size with at least 4 uses their 20%
      quantile, a size with fewer its measured cost times the load factor (the median ratio of
      observed to measured cost over the sizes that have enough: a table measured in a slow spell
      speeds up as a whole, even at sizes the rounds never verify); then the same monotone rule.
      The table is refitted once per 16 observations (a fit costs tens of microseconds, an
      observation well under one).

    ``fixed=True`` keeps the given values (made non-increasing) whatever is observed: tests and
    reproducible runs. Values given to the constructor are used as they are (made non-increasing)
    until rounds are observed; from the first refit the whole rule applies to the mix.
    """

    def __init__(self, values: Sequence[float], *, fixed: bool = False, spikes: bool = True) -> None:
        vals = list(values)
        if not vals or any(
            isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0 for v in vals
        ):
            raise InvalidRequestError(
                f"an SPS table needs one finite positive steps/s value per tokens-per-forward 1..n, got {vals!r}"
            )
        self.fixed, self.spikes = fixed, spikes
        self._measured = [1.0 / float(v) for v in vals]  # seconds per forward at 1..n tokens
        costs = list(self._measured)
        for i in range(len(costs) - 2, -1, -1):  # non-increasing SPS, as the scheduler assumes
            costs[i] = min(costs[i], costs[i + 1])
        self._values = [1.0 / c for c in costs]
        self._rounds: list[deque[tuple[int, float]]] = [deque(maxlen=_WINDOW) for _ in vals]  # (index, seconds)
        # kept by observe and _refit so that a refit touches only the sizes that changed (a full
        # pass over 128-512 sizes cost 17-58 us a round, amortized, in the batch engine's host time)
        self._held: set[int] = set()  # sizes whose window holds timings
        self._dirty: set[int] = set()  # sizes observed since the last refit
        self._low_of: dict[int, float] = {}  # size -> its recent timings' low quantile (>= _MIN_ROUNDS of them)
        self._count = 0  # observations so far
        self.version = 0  # bumped whenever the values change (callers cache what they derive from them)

    @classmethod
    def measure(
        cls,
        step: Callable[[int], None],
        max_tokens: int,
        *,
        repeats: int = 5,
        clock: Callable[[], float] = time.perf_counter,
        warmup: bool = True,
        sizes: Sequence[int] | None = None,
        spikes: bool = True,
        fixed: bool = False,
    ) -> SpsTable:
        """Time ``step(T)`` (one forward of T tokens, synced) for T in ``sizes`` (default all of
        1..max_tokens); sizes not timed are interpolated linearly between their timed neighbours
        (the cost is close to linear in T past T = 1, and the rounds' own timings refine it).
        ``clock`` is injectable so that tests run on a synthetic clock. ``spikes=False``: no
        spike line (for costs that are flat, then rise, as a batch forward's over its total
        tokens); ``fixed``: the table keeps these values (no refresh from rounds)."""
        if max_tokens < 1 or repeats < 1:
            raise InvalidRequestError(f"need max_tokens >= 1 and repeats >= 1, got {max_tokens}, {repeats}")
        timed = sorted(set(sizes) & set(range(1, max_tokens + 1))) if sizes is not None else list(range(1, max_tokens + 1))
        if not timed or timed[0] != 1 or timed[-1] != max_tokens:
            raise InvalidRequestError(f"the timed sizes must include 1 and {max_tokens}, got {sizes!r}")
        for t in timed if warmup else ():  # warm-up: first calls allocate and pick kernels
            step(t)
        times: dict[int, list[float]] = {t: [] for t in timed}
        for r in range(repeats):
            for t in timed[r % len(timed) :] + timed[: r % len(timed)]:
                t0 = clock()
                step(t)
                times[t].append(clock() - t0)
        low = {t: _low(ts) for t, ts in times.items()}
        raw = [low[t] if t in low else _between(low, t) for t in range(1, max_tokens + 1)]
        return cls([1.0 / c for c in _monotone_costs(raw, spikes)], fixed=fixed, spikes=spikes)

    def merged(self, other: SpsTable) -> SpsTable:
        """Two measurements of the same machine as one: per size the faster (load only ever adds
        time, so the lower cost is the better estimate). Observations start afresh."""
        return SpsTable([max(a, b) for a, b in zip(self.values(), other.values())], fixed=self.fixed, spikes=self.spikes)

    def values(self) -> list[float]:
        """Steps per second at 1..n tokens per forward: positive, finite, non-increasing."""
        return list(self._values)

    def view(self) -> Sequence[float]:
        """``values()`` without the copy (a round's scheduling reads it; 512 entries at 64 slots): the
        table's own list, replaced (never changed in place) by a refit. Read it, never write it."""
        return self._values

    def observe(self, tokens: int, seconds: float) -> None:
        """One real forward of ``tokens`` tokens (a round's verify: the anchor and the verified
        drafts) took ``seconds``. Sizes beyond the table and timings that are not finite and
        positive are ignored (a coarse clock, a round that drafted past the table)."""
        if self.fixed or not 1 <= tokens <= len(self._rounds) or not 0 < seconds < math.inf:
            return
        self._count += 1
        self._rounds[tokens - 1].append((self._count, seconds))
        self._held.add(tokens - 1)
        self._dirty.add(tokens - 1)
        if self._count % _REFIT_EVERY == 0:
            self._refit()

    def _refit(self) -> None:
        """The rule of the class docstring over every size's recent timings, recomputing only the
        sizes observed since the last refit or holding a timing that fell out of the last
        _RECENT (dropped from their windows now: indices only grow, so once out, always out).
        ``tests/test_scheduler_fast_paths.py`` holds it equal to the pass over all sizes."""
        oldest = self._count - _RECENT
        rounds, low_of = self._rounds, self._low_of
        changed = self._dirty | {t for t in self._held if rounds[t][0][0] <= oldest}
        for t in changed:
            w = rounds[t]
            while w and w[0][0] <= oldest:
                w.popleft()
            if not w:
                self._held.discard(t)
            if len(w) >= _MIN_ROUNDS:
                low_of[t] = _low([s for _, s in w])
            else:
                low_of.pop(t, None)
        self._dirty.clear()
        if not low_of:
            return
        measured = self._measured
        load = statistics.median([o / measured[t] for t, o in low_of.items()])
        raw = [m * load for m in measured]
        for t, o in low_of.items():
            raw[t] = o
        self._values = [1.0 / c for c in _monotone_costs(raw, self.spikes)]
        self.version += 1


def measure_sps(step: Callable[[int], None], max_tokens: int, repeats: int = 5) -> list[float]:
    """SPS table of ``step(T)`` for T = 1..max_tokens: ``SpsTable.measure(...).values()``."""
    return SpsTable.measure(step, max_tokens, repeats=repeats).values()


def device_length(confidences: Tensor, sps: Tensor, room: Tensor, schedule: str, threshold: float) -> Tensor:
    """The engine's schedules on the device (no host sync; captured in a drafter's graph).

    confidences [g] (float), sps [>= g+1] steps/s at 1.. tokens per forward, room [1] long (the most
    that may be verified) -> [1] long, how many leading draft tokens to verify. The same rules as
    ``choose_length`` / ``threshold_length`` / ``choose_length_no_early_stop`` (float32 here, so a
    decision exactly at a tie may differ from the host's float64; both are causal)."""
    g = min(confidences.shape[0], sps.shape[0] - 1)  # lengths past the table are never verified
    c = confidences[:g].float()
    if schedule == "full":
        length = torch.full((1,), g, dtype=torch.long, device=c.device)
    elif schedule == "threshold":
        length = torch.cumprod((c >= threshold).long(), 0).sum().view(1)
    else:
        expected = 1.0 + torch.cumsum(torch.cumprod(c, 0), 0)  # [g] 1 + sum_{i<=j} a_i
        throughput = torch.cat([sps[:1].float(), expected * sps[1 : g + 1].float()])  # [g+1], l = 0..g
        if schedule == "no-early-stop":  # the Appendix-A control: the argmax over all prefixes
            length = throughput.argmax().view(1)
        else:  # extend while each admission raises the throughput; the first that does not stops it
            length = torch.cumprod((throughput[1:] > throughput[:-1]).long(), 0).sum().view(1)
    return torch.minimum(length, room)
