"""DraftingRates: whether a batched round should draft at all, from how past rounds went.

The batch engine's adaptive schedule (batch.py) drafts only while drafting rounds of as many rows
commit tokens faster than plain ones; past rounds decide, never this round's drafts, so the
choice changes no output distribution.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque


class DraftingRates:
    """Committed tokens per second of rounds that draft and of rounds that do not, per key (what a
    round's cost follows: the batch engine's plain forward size, so one graph bucket's row counts
    share theirs), as (tokens per row) / (seconds per round):

    - seconds per round: the median of the last ``WINDOW`` rounds of that mode under that key
      (a garbage collection or a late wake-up in one round does not move it; a round's time is
      nearly the same from one round to the next, so few rounds measure it well);
    - tokens per row: a plain round commits one per row; a drafting round one plus what it
      accepted, which varies a lot from round to round (0 to 7 at one row), so it is pooled over
      the latest drafting rounds of any row count until they hold ``GAIN_ROWS`` rows (at most
      ``GAIN_ROUNDS`` rounds): 256 rounds at C = 1, four rounds at C = 64. (64 rows were too few at
      C = 1 on the H200, run 32: with the 1.5B shape's bursty n-gram acceptance, 36 of 58 drafting
      rounds accepting nothing and a few accepting 7, the pool's mean fell under the margin often
      enough that adaptive drafted in 48% of rounds where k3 was 10% faster than plain.)

    ``choose`` drafts while drafting is the faster mode, with hysteresis: the first comparison
    takes the faster one, later ones keep the standing choice unless the other is faster by more
    than ``MARGIN``. Each mode gets ``MIN_ROUNDS`` rounds under a key before they are compared
    there, and the losing mode one round in ``interval`` (costs change as contexts grow, rows come
    and go, text turns repetitive). Once the loser has ``WINDOW`` rounds, every probe that confirms
    the choice doubles the interval (``PROBE_EVERY`` up to ``MAX_PROBE_EVERY``); a flip resets it.

    Where drafting's own host work is cheap (``cheap``: the drafting rounds' host time before the
    forward exceeds the plain rounds' by at most ``HOST_SHARE`` of a plain round), the comparison is
    skipped and every round drafts: what drafting then costs beyond that host time is verification,
    which the Θ rule prices per token against the SPS table, so the gate has nothing left to guard
    and its noisy gain estimate could only overrule Θ. On the H200 (run 35, the 1.5B shape at C=1)
    the comparison chose plain, judging drafting rounds at 1.03 tokens a row from a few probes
    among plain rounds, where every fixed length beat plain by 10-13% and the n-gram's host work
    was 1% of a round. A simulation of that case (examples/drafting_gate_sim.py: bursty acceptance,
    drafting about 8% faster in expectation) had the comparison leave 52% of 200 seeded runs
    mostly plain.

    Measured on the H200 (runs 20-22): probing one round in 16 forever left adaptive several
    percent behind plain where plain wins (C = 16, 64); a margin in drafting's favour kept drafting
    rounds that verified nothing, 4-9% slower than plain; and rates from sums over 16 rounds of
    one row (tokens and seconds both) chose plain at C = 1, where every fixed length beat it by
    15-22%: 16 rounds of one row hold too few accepted tokens to tell."""

    WINDOW, MIN_ROUNDS, PROBE_EVERY, MAX_PROBE_EVERY, MARGIN = 16, 4, 16, 256, 0.02
    GAIN_ROWS, GAIN_ROUNDS = 256, 256
    HOST_SHARE = 0.03  # drafting's host work at most this share of a plain round: cheap, always draft

    def __init__(self) -> None:
        self.seconds: dict[tuple[int, bool], deque[float]] = {}
        self.gains: deque[tuple[int, int]] = deque(maxlen=self.GAIN_ROUNDS)  # drafting rounds: (tokens, rows)
        # the latest drafting rounds that hold GAIN_ROWS rows (tokens_per_row's pool), with its sums,
        # kept as rounds come: the walk over up to 64 rounds cost ~10 us a round in Python
        self._pool: deque[tuple[int, int]] = deque()
        self._pool_tokens = self._pool_rows = 0
        # kept up to date by observe, so that choose (every round, before the round's work) only
        # compares two numbers: the medians and the pooled gain cost tens of us a round in Python
        self._median: dict[tuple[int, bool], float] = {}
        self._per_row: float | None = None
        self.since_probe: dict[int, int] = {}
        self.interval: dict[int, int] = {}
        self.choice: dict[int, bool] = {}  # the winning mode at the last comparison
        # per (key, drafted): the rounds' host seconds before the forward, and their medians
        self.host: dict[tuple[int, bool], deque[float]] = {}
        self._host_median: dict[tuple[int, bool], float] = {}
        # each window's values sorted, kept as they come and go (_keep): the medians read from them
        self._sorted: dict[tuple[int, bool], list[float]] = {}
        self._host_sorted: dict[tuple[int, bool], list[float]] = {}

    def observe(self, rows: int, drafted: bool, tokens: int, seconds: float, key: int | None = None,
                host_seconds: float | None = None) -> None:
        """A round of ``rows`` rows that committed ``tokens`` in ``seconds``, ``host_seconds`` of
        them on the host before the forward (drafting, the rows' inputs; None: not measured, and
        then ``cheap`` never holds). ``key`` (default
        ``rows``) is what its cost follows, under which its time is kept and ``choose`` is asked:
        the batch engine passes the plain round's forward size, so the rows of one graph bucket
        (33 to 64 rows all run a 64-row forward) share one comparison instead of each row count
        learning its own from scratch as requests finish."""
        key = rows if key is None else key
        mode = (key, drafted)
        self._keep(self.seconds, self._sorted, self._median, mode, seconds)
        if host_seconds is not None:
            self._keep(self.host, self._host_sorted, self._host_median, mode, host_seconds)
        if drafted:
            self.gains.append((tokens, rows))
            pool = self._pool
            pool.append((tokens, rows))
            self._pool_tokens, self._pool_rows = self._pool_tokens + tokens, self._pool_rows + rows
            # drop the oldest while the rest still holds GAIN_ROWS rows (or past GAIN_ROUNDS rounds):
            # what is left is the newest rounds up to the first that reaches GAIN_ROWS, as the walk finds
            while len(pool) > self.GAIN_ROUNDS or (len(pool) > 1 and self._pool_rows - pool[0][1] >= self.GAIN_ROWS):
                t, r = pool.popleft()
                self._pool_tokens, self._pool_rows = self._pool_tokens - t, self._pool_rows - r
            self._per_row = self._pool_tokens / self._pool_rows if self._pool_rows else None

    def _keep(self, windows: dict, sorted_of: dict, medians: dict, mode: tuple[int, bool], x: float) -> None:
        """x into the mode's window (the last WINDOW) and into its sorted copy, in place of the value
        it pushes out: the median is then read from the copy, where it was two sorts of 16 and
        their deques made (and dropped) every round, ~10 us of a round's host time in the engine.
        The copy holds the window's values in sorted's order (times are finite: no NaN), so the
        medians are the floats ``_median`` gives (``tests/test_scheduler_fast_paths.py``)."""
        window = windows.get(mode)
        if window is None:
            window = windows[mode] = deque(maxlen=self.WINDOW)
            sorted_of[mode] = []
        s = sorted_of[mode]
        if len(window) == window.maxlen:
            del s[bisect_left(s, window[0])]  # the oldest, about to leave the window
        window.append(x)
        insort(s, x)
        n = len(s)
        if n >= self.MIN_ROUNDS:
            m = n // 2
            medians[mode] = s[m] if n % 2 else (s[m - 1] + s[m]) / 2

    def tokens_per_row(self) -> float | None:
        """Committed tokens per row of the latest drafting rounds (``GAIN_ROWS`` rows of them): the
        reference walk, which ``observe`` keeps current incrementally (a test holds them equal)."""
        tokens = rows = 0
        for t, r in reversed(self.gains):
            tokens, rows = tokens + t, rows + r
            if rows >= self.GAIN_ROWS:
                break
        return tokens / rows if rows else None

    def rate(self, key: int, drafted: bool) -> float | None:
        """Committed tokens per second per row of the rounds kept under ``key`` (both modes are
        compared under one key, so a common factor of rows would change nothing)."""
        seconds = self._median.get((key, drafted))  # set once the mode has MIN_ROUNDS rounds here
        per_row = self._per_row if drafted else 1.0
        return None if seconds is None or per_row is None or seconds <= 0 else per_row / seconds

    def cheap(self, key: int) -> bool:
        """Whether drafting's host work under ``key`` is at most ``HOST_SHARE`` of a plain round:
        the drafting rounds' median host time before the forward over the plain rounds'."""
        draft, plain = self._host_median.get((key, True)), self._host_median.get((key, False))
        round_s = self._median.get((key, False))
        return draft is not None and plain is not None and round_s is not None \
            and draft - plain <= self.HOST_SHARE * round_s

    def summary(self) -> dict[str, dict[str, float | bool | None]]:
        """Per key: each mode's median seconds a round (and host seconds before the forward), the
        pooled tokens per row of drafting rounds, whether drafting is cheap and the standing
        choice (benchmarks record it beside their figures)."""
        keys = sorted({k for k, _ in self.seconds})

        def ms(table: dict, k: int, drafted: bool) -> float | None:
            return 1e3 * table[(k, drafted)] if (k, drafted) in table else None

        return {str(k): {"draft_ms": ms(self._median, k, True), "plain_ms": ms(self._median, k, False),
                         "draft_host_ms": ms(self._host_median, k, True), "plain_host_ms": ms(self._host_median, k, False),
                         "tokens_per_row": self._per_row, "cheap": self.cheap(k), "drafts": self.choice.get(k)}
                for k in keys}

    def choose(self, key: int) -> bool:
        """Whether the next round of this key (``observe``'s; the row count by default) drafts."""
        spec, plain = self.rate(key, True), self.rate(key, False)
        if spec is None:
            return True
        if plain is None:
            return False
        if self.cheap(key):  # nothing for the gate to guard: Θ prices what drafting costs beyond
            self.choice[key] = True
            return True
        previous = self.choice.get(key)
        if previous is None:
            drafting = spec >= plain
        elif previous:  # keep drafting unless plain is faster by more than the margin
            drafting = (1.0 + self.MARGIN) * spec >= plain
        else:  # keep plain unless drafting is faster by more than the margin
            drafting = spec > (1.0 + self.MARGIN) * plain
        self.choice[key] = drafting
        interval = self.interval.get(key, self.PROBE_EVERY)
        if previous is not None and drafting != previous:  # the probes overturned the choice:
            interval, self.since_probe[key] = self.PROBE_EVERY, 0  # watch closely again
        n = self.since_probe.get(key, 0) + 1
        if n < interval:
            self.since_probe[key], self.interval[key] = n, interval
            return drafting
        self.since_probe[key] = 0
        settled = len(self.seconds[(key, not drafting)]) >= self.WINDOW  # the loser's window is full
        self.interval[key] = min(2 * interval, self.MAX_PROBE_EVERY) if settled else interval
        return not drafting  # the probe: a round of the losing mode


def _median(xs: deque[float]) -> float:
    """statistics.median's value (the mean of the middle two of an even count), a third of its cost."""
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2
