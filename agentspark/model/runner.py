"""ModelRunner: the one object that launches target work, over a KV cache of request slots.

The engine above it keeps requests, rounds and bookkeeping on the host; the runner owns the cache
[L, slots + 1, Hkv, S, D] (the last slot is scratch: padding rows and timing probes write there)
and runs two things:

- ``prefill(slot, ids, start)``: one request's new prompt tokens at positions [start, start+P);
  returns the last position's logits (and the features a learned drafter reads).
- ``round(rows)``: one forward over every row's [x0, d_1..d_l] (plain decoding is l = 0), the
  verifier per row, and one host sync that reads each row's accepted count and emitted token.

``HostRunner`` (here) is the CPU path: row by row, the decoder's row-invariant numpy matmuls, the
reference verifier; exact by construction (README, "Why greedy equality is exact on the CPU").
``DeviceRunner`` (graph_runner.py) runs rounds over device positions and replays CUDA graphs
captured per bucket of (rows, tokens per row) with the fused verifier inside. ``make_runner`` picks
one; the engine does not know which.

What the runner does not know: tokenizers, stop strings, drafters, schedules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..constraints import masked_logits
from ..sampling import SamplingParams, probs_from_logits, sample
from ..verify import Verifier, verify_chain
from .decoder import DecoderModel
from .kv_cache import StaticKVCache
from .linear import cpu_float32_inference


@dataclass
class RowWork:
    """One row of a round: verify ``tokens[1:]`` after the anchor ``tokens[0]``."""

    slot: int
    start: int  # the anchor's position: the slot's cache holds [0, start)
    tokens: list[int]  # [x0, d_1..d_l] (host ints); l = 0 is a plain decoding step
    params: SamplingParams
    generator: torch.Generator | None
    q: Tensor | None = None  # [l, V] the drafter's distributions; None = deterministic (or greedy)
    capture: bool = False  # return the target features of the row's tokens (learned drafters)
    mask: Tensor | None = None  # [l+1, W] int32 grammar bitmasks per row position (constraints.py); None = free
    logits: bool = False  # return the row's logits (a request that reports logprobs)


@dataclass
class RowResult:
    accepted: int  # a: leading draft tokens that survived, 0..l
    token: int  # the one token emitted after them
    hidden: Tensor | None = None  # [l+1, m*H] features of [x0, d_1..d_l]; rows 0..a are committed
    logits: Tensor | None = None  # [l+1, V] the target's raw logits of the row, when RowWork.logits


@dataclass(frozen=True)
class PrefillItem:
    """One slot's prefill among several (``ModelRunner.prefill_rows``)."""

    slot: int
    ids: list[int]  # the tokens to prefill, at positions [start, start + len(ids))
    start: int
    capture: bool = False  # return the target features of these tokens (a learned drafter's)


@dataclass
class PrefillOutput:
    logits: Tensor  # [1, V] the last prompt position's logits
    hidden: Tensor | None  # [P, m*H] features of the prefilled tokens, when asked for


class ModelRunner:
    """What the engine drives. Subclasses: HostRunner (CPU, any device eagerly), DeviceRunner."""

    kind = "base"

    def __init__(self, model: DecoderModel, *, capacity: int, slots: int = 1, max_tokens: int = 9,
                 capture_layers: tuple[int, ...] = ()) -> None:
        self.model = model
        self.device = model.device
        self.slots = slots
        self.scratch = slots  # the extra slot: padding rows and probes write here, never a request's
        self.max_tokens = max_tokens  # tokens per row in a round: 1 + the longest draft
        self.capture_layers = tuple(capture_layers)
        self.cache: StaticKVCache = model.new_cache(capacity, batch_size=slots + 1)

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def prefill(self, slot: int, ids: list[int], start: int, *, capture: bool = False) -> PrefillOutput:
        """ids at positions [start, start+len(ids)) of ``slot``; eager (the length varies)."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, P]
        out = self.model(x, self.cache, start, num_logits=1, slot=slot,
                         capture_layers=self.capture_layers if capture else ())
        return PrefillOutput(logits=out.logits[0], hidden=None if out.hidden is None else out.hidden[0])

    def prefill_rows(self, items: list[PrefillItem]) -> list[PrefillOutput]:
        """Several slots' prefills (the batch engine's admissions of one step), each what
        ``prefill`` gives it; here one after another (the device runner batches them)."""
        return [self.prefill(i.slot, i.ids, i.start, capture=i.capture) for i in items]

    def round(self, rows: list[RowWork], verifier: Verifier = verify_chain) -> list[RowResult]:
        raise NotImplementedError

    def plain_stream(self, slot: int, start: int, token: int, params: SamplingParams,
                     generator: torch.Generator | None, max_steps: int) -> Iterator[int]:
        """Plain decoding from ``token`` at position ``start``: up to ``max_steps`` tokens, one round
        each (the device runner keeps one step in flight instead). Stop iterating to stop."""
        for k in range(max_steps):
            token = self.round([RowWork(slot, start + k, [token], params, generator)])[0].token
            yield token

    def probe(self, tokens: int) -> None:
        """One forward of ``tokens`` tokens per row as a real round would run it (on the scratch
        slot, at a fixed position), waited for: what the SPS table times."""
        raise NotImplementedError

    def round_tokens(self, rows: int, longest: int, total: int) -> int:
        """Tokens a round's forward computes for ``rows`` rows of ``total`` tokens, the longest
        ``longest``: what its cost follows (the batch scheduler's B). On the CPU in float32 every
        row is padded to the longest (``row_forwards``); elsewhere each row runs its own."""
        return rows * longest if shares_forwards(self, rows) else total

    def tokens_by_longest(self, rows: int) -> list[int] | None:
        """``round_tokens(rows, l, total)`` for l = 0 .. max_tokens where it does not depend on the
        total (every row padded to the longest: [max_tokens + 1], entry 0 unused), else None. The
        Θ rule reads it instead of calling round_tokens once a candidate (choose_lengths)."""
        return [rows * t for t in range(self.max_tokens + 1)] if shares_forwards(self, rows) else None

    def probe_shapes(self, rows: int) -> dict[int, tuple[int, int]]:
        """For a batch SPS(B) table over up to ``rows`` rows: B -> (rows, tokens per row) of a
        round whose ``round_tokens`` is B, for the sizes worth timing (1 and the largest among
        them; the rest is interpolated). Here 1, 2, 3, the powers of two and rows x max_tokens,
        each as even rows as it goes."""
        return {b: (min(rows, b), -(-b // min(rows, b))) for b in batch_sizes(rows * self.max_tokens)}

    def capture_lengths(self) -> int:
        """Make ready every round length of the round shapes met so far (the CUDA graph runner
        captures them: DeviceRunner.capture_lengths); nothing to make elsewhere. Returns how many."""
        return 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def batch_sizes(largest: int) -> list[int]:
    """The total token counts a batch SPS(B) measurement times: 1, 2, 3, the powers of two below
    the largest, and the largest (the rest is interpolated between them)."""
    sizes = {1, min(2, largest), min(3, largest), largest}
    b = 4
    while b < largest:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def pick_token(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The plain decoding rule: one token from the last row of logits [K, V] (a host sync)."""
    last = logits[-1:]
    if params.greedy:
        return int(last.argmax(-1).item())
    return int(sample(probs_from_logits(last, params), generator).item())


def greedy_verdict(logits: Tensor, tokens: list[int]) -> tuple[int, int]:
    """verify_chain's verdict on a greedy row with a deterministic draft, read off the argmaxes of
    logits [l+1, V] for tokens [x0, d_1..d_l]: p is one-hot at each row's argmax, so d_k survives
    iff it is that argmax, and the token emitted after the a survivors is row a's argmax (the
    residual p_a - onehot(d_a) is p_a's one-hot). The same (a, token) without building [l+1, V]
    one-hots and the race: ~14 ms of a 9-row round at V = 151,936 on one CPU thread. Greedy rows
    draw no random numbers, as in plain decoding (pick_token)."""
    best = logits.float().argmax(dim=-1).tolist()  # [l+1] host ints (one host sync)
    draft = tokens[1:]
    accepted = 0
    while accepted < len(draft) and draft[accepted] == best[accepted]:
        accepted += 1
    return accepted, best[accepted]


def shares_forwards(runner: ModelRunner, rows: int) -> bool:
    """Whether ``row_forwards`` runs these rows as one padded forward (the CPU in float32)."""
    return rows > 1 and cpu_float32_inference(runner.model.embed.weight)


def row_forwards(runner: ModelRunner, rows: list[RowWork]) -> list[tuple[Tensor, Tensor | None]]:
    """(logits [l+1, V], features [l+1, m*H] | None) of every row's tokens. On the CPU in float32
    the rows share one forward through ``forward_host_rows``, each padded to the longest row
    (padding after a row's tokens changes none of its results: causal attention, row-invariant
    matmuls; its K/V land past the row's end, where a rejected draft's would, and are written
    again before they are read), so the weights are read once for all: a batch of plain steps
    costs about one step. A row that cannot be padded inside the cache, or rows that want
    features when others do not, get forwards of their own. Elsewhere one forward per row."""
    model = runner.model
    out: list[tuple[Tensor, Tensor | None] | None] = [None] * len(rows)
    groups: dict[tuple[int, bool], list[int]] = {}
    shared = shares_forwards(runner, len(rows))
    longest = max(len(r.tokens) for r in rows)
    for i, row in enumerate(rows):
        fits = row.start + longest <= runner.capacity
        groups.setdefault((-1 if shared and fits else i, row.capture), []).append(i)
    for (_, capture), members in groups.items():
        layers = runner.capture_layers if capture else ()
        if len(members) == 1:
            row = rows[members[0]]
            x = torch.tensor([row.tokens], dtype=torch.long, device=runner.device)  # [1, l+1]
            fwd = model(x, runner.cache, row.start, slot=row.slot, row_invariant=True, capture_layers=layers)
        else:
            width = max(len(rows[i].tokens) for i in members)
            x = torch.tensor([rows[i].tokens + [0] * (width - len(rows[i].tokens)) for i in members],
                             dtype=torch.long, device=runner.device)  # [R, T] padded
            fwd = model.forward_host_rows(x, runner.cache, [rows[i].slot for i in members],
                                          [rows[i].start for i in members], capture_layers=layers)
        for k, i in enumerate(members):
            n = len(rows[i].tokens)
            out[i] = (fwd.logits[k, :n], None if fwd.hidden is None else fwd.hidden[k, :n])
    return out


def eager_round(runner: ModelRunner, rows: list[RowWork], verifier: Verifier) -> list[RowResult]:
    """A round with the reference rules: the rows' forwards (``row_forwards``: row-invariant on the
    CPU), then per row ``probs_from_logits`` and ``verifier`` (greedy rows with deterministic
    drafts: their verdict, ``greedy_verdict``); one host sync per row."""
    results = []
    for row, (raw, hidden) in zip(rows, row_forwards(runner, rows)):
        logits = masked_logits(raw, row.mask)  # the grammar's mask, as plain decoding applies it
        results.append(eager_verdict(runner, row, logits, hidden, verifier))
        if row.logits:
            results[-1].logits = raw
    return results


def eager_verdict(runner: ModelRunner, row: RowWork, logits: Tensor, hidden: Tensor | None,
                   verifier: Verifier) -> RowResult:
    """One row's verdict by the reference rules (``eager_round``)."""
    if len(row.tokens) == 1 and row.q is None and verifier is verify_chain:
        # plain decoding: the reference rule (the same draws as verify_chain with l = 0)
        return RowResult(0, pick_token(logits, row.params, row.generator), hidden)
    if row.params.greedy and row.q is None and verifier is verify_chain:
        return RowResult(*greedy_verdict(logits, row.tokens), hidden)
    p = probs_from_logits(logits, row.params)  # [l+1, V]
    draft = torch.tensor(row.tokens[1:], dtype=torch.long, device=runner.device)  # [l]
    verdict = verifier(draft, row.q, p, row.generator)  # host sync
    return RowResult(verdict.accepted, verdict.token, hidden)


class HostRunner(ModelRunner):
    """Row by row, eagerly: the CPU path (row-invariant, exact), and CUDA without graphs."""

    kind = "host"

    def round(self, rows: list[RowWork], verifier: Verifier = verify_chain) -> list[RowResult]:
        return eager_round(self, rows, verifier)

    def probe(self, tokens: int) -> None:
        start = min(64, self.capacity - tokens)
        x = torch.randint(0, self.model.cfg.vocab_size, (1, tokens), device=self.device)
        self.model(x, self.cache, start, slot=self.scratch, row_invariant=True)
        self.sync()


def make_runner(model: DecoderModel, *, capacity: int, slots: int = 1, max_tokens: int = 9,
                capture_layers: tuple[int, ...] = (), graphs: bool | None = None,
                exact: bool | str | None = None) -> ModelRunner:
    """The device runner with CUDA graphs on CUDA (unless ``graphs=False``), else the host runner.
    ``exact``: the device runner's exact mode (graph_runner.py): True (its default route), "a" or
    "b" (that route), False (fast mode); None = ``EXACT_BY_DEFAULT``. The host runner is exact by
    construction on the CPU in float32 and ignores it."""
    if exact not in (None, True, False, "a", "b"):
        raise ValueError(f"exact must be True, False, 'a', 'b' or None, got {exact!r}")
    if graphs is None:
        graphs = model.device.type == "cuda"
    if graphs:
        from .graph_runner import EXACT_BY_DEFAULT, DeviceRunner

        exact = EXACT_BY_DEFAULT if exact is None else exact
        route = exact if isinstance(exact, str) else None
        return DeviceRunner(model, capacity=capacity, slots=slots, max_tokens=max_tokens,
                            capture_layers=capture_layers, exact=bool(exact), exact_route=route)
    return HostRunner(model, capacity=capacity, slots=slots, max_tokens=max_tokens, capture_layers=capture_layers)
