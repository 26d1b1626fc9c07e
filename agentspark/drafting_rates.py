"""DraftingRates: whether a batched round should draft at all, from how past rounds went.

The batch engine's adaptive schedule (batch.py) drafts only while drafting rounds of as many rows
have committed tokens faster than plain ones; past rounds decide, never this round's drafts, so
the choice changes no output distribution.
"""

from __future__ import annotations

from collections import deque


class DraftingRates:
    """Per row count: committed tokens per second over the last ``WINDOW`` rounds that drafted and
    the last ``WINDOW`` that did not (sums over the window: one round that accepted nothing does
    not flip the choice). ``choose`` drafts while drafting rounds commit faster than plain ones,
    with hysteresis: the first comparison takes the faster mode, later ones keep the standing
    choice unless the other mode is faster by more than ``MARGIN``. Each mode gets ``MIN_ROUNDS``
    rounds before they are compared, and the losing mode one round in ``interval`` (costs change
    as contexts grow, rows come and go, text turns repetitive). Once the loser's window is full,
    every probe that confirms the choice doubles the interval (``PROBE_EVERY`` up to
    ``MAX_PROBE_EVERY``); a flip resets it. Measured on the H200 (runs 20, 21): probing one round
    in 16 forever left adaptive several percent behind plain where plain wins (C = 16, 64);
    backing off before the loser's window was full kept a wrong early choice (from 4 rounds each)
    for hundreds of rounds at C = 1; and a margin in drafting's favour (drafting unless 5% slower)
    kept drafting rounds that verified nothing, 4-9% slower than plain (the n-gram lookups and
    the Θ rule for no verified token), at C = 16 and on the 8B shape."""

    WINDOW, MIN_ROUNDS, PROBE_EVERY, MAX_PROBE_EVERY, MARGIN = 16, 4, 16, 256, 0.02

    def __init__(self) -> None:
        self.rounds: dict[tuple[int, bool], deque[tuple[int, float]]] = {}
        self.since_probe: dict[int, int] = {}
        self.interval: dict[int, int] = {}
        self.choice: dict[int, bool] = {}  # the winning mode at the last comparison

    def observe(self, rows: int, drafted: bool, tokens: int, seconds: float) -> None:
        self.rounds.setdefault((rows, drafted), deque(maxlen=self.WINDOW)).append((tokens, seconds))

    def rate(self, rows: int, drafted: bool) -> float | None:
        window = self.rounds.get((rows, drafted))
        if not window or len(window) < self.MIN_ROUNDS:
            return None
        seconds = sum(s for _, s in window)
        return sum(t for t, _ in window) / seconds if seconds > 0 else None

    def choose(self, rows: int) -> bool:
        spec, plain = self.rate(rows, True), self.rate(rows, False)
        if spec is None:
            return True
        if plain is None:
            return False
        previous = self.choice.get(rows)
        if previous is None:
            drafting = spec >= plain
        elif previous:  # keep drafting unless plain is faster by more than the margin
            drafting = (1.0 + self.MARGIN) * spec >= plain
        else:  # keep plain unless drafting is faster by more than the margin
            drafting = spec > (1.0 + self.MARGIN) * plain
        self.choice[rows] = drafting
        interval = self.interval.get(rows, self.PROBE_EVERY)
        if previous is not None and drafting != previous:  # the probes overturned the choice:
            interval, self.since_probe[rows] = self.PROBE_EVERY, 0  # watch closely again
        n = self.since_probe.get(rows, 0) + 1
        if n < interval:
            self.since_probe[rows], self.interval[rows] = n, interval
            return drafting
        self.since_probe[rows] = 0
        settled = len(self.rounds[(rows, not drafting)]) >= self.WINDOW  # the loser's window is full
        self.interval[rows] = min(2 * interval, self.MAX_PROBE_EVERY) if settled else interval
        return not drafting  # the probe: a round of the losing mode
