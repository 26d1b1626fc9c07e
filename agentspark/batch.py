"""BatchEngine: many requests through one target at once, with continuous batching.

Each request owns a KV slot of the model runner; requests join (their prefill) and leave (their
end) between rounds. One round serves every running request:

  1. each request's own drafter proposes after its committed tokens (its slot's drafter: n-gram,
     or a learned one drafting eagerly from its rows' target features);
  2. the schedule picks every request's verified length together (``schedule="adaptive"``:
     scheduler.choose_lengths, DESIGN.md's Θ rule over SPS at the B the forward computes);
  3. one ``runner.round`` verifies all rows: on CUDA one replay of the (R rows, T tokens) graph
     bucket with the fused verifier per row; on the CPU one row-invariant forward with the rows
     padded to the longest (exact);
  4. each request commits its own tokens, stops on its own EOS, stop strings and budget, and
     streams its own deltas (``BatchRequest.chunks``).

Plain batched decoding is the same round with no drafts (every row is its anchor alone).

Lossless, request by request: a row is verified against the target's distribution with its own
sampling parameters and generator, drawing in the order it draws alone, and its length is chosen
before its verify from candidates at least as likely as its own tokens (the Θ rule's early stop).
So each request's output is distributed as plain decoding of it alone. Greedy it is the very
tokens it gets alone wherever rows are computed independently of each other: the CPU in float32,
and CUDA in exact mode's route a (graph_runner.py: row-invariant kernels, so a row's bits do not
depend on the rows beside it; measured on the H200, 20 eval prompts at 4 and 16 slots, every
drafter: 20/20). Fast mode and route b are not: cuBLAS rounds a row by the launch's shape. With
the ``full`` or ``threshold`` schedule a request's lengths do not depend on the others either, so
even its sampled output for a seed is the one it gets alone; ``adaptive`` trades that for
throughput (the same distribution).

Admission (``first_token_in_round``, on by default on the CUDA graph runner): a joining request
prefills all but its prompt's last token, and that token is its row in the round that follows, a
plain row whose verify gives the first token. So admitting waits for nothing: the prefill graphs
are queued ahead of the round's forward, and the host drafts and schedules the other rows while
they run, where before every admission read its first token through a host sync of its own and
the round's host work waited behind it (run 36, 64 slots under a steady load: 2.0-2.5 ms of
admission a round against a 1.5-1.7 ms forward). The row drafts nothing in that round, so a
sampled request draws what its first token draws alone; its K/V and logits are those of the
prefill it replaces wherever a row's bits do not depend on how the prompt was cut (route a; the
CPU's tests run it too, through ``first_token_in_round=True``).

Prefix reuse (``reuse_prefix=True``, the default): a slot keeps the K/V of the conversation it
served after its request ends, and a new request takes the free slot whose conversation shares
the longest prefix with its prompt, prefilling only the rest; without a match, the free slot used
least recently (its conversation is evicted). An agent that resends its whole conversation every
round through the batch prefills only what it appended, for as many sessions as there are slots.
Its outputs are those of ``Engine.generate(..., reuse_cache=True)`` on the same conversation: the
kept K/V come from the decode steps that produced them, not from one fresh prefill.

Drafters: one per slot, made from the prototype (``Drafter.sibling``: the same weights, its own
state), so a slot's drafter holds the features of the conversation its slot holds; learned
drafters read the target features of their own rows of the batched forward. A learned drafter
drafts eagerly here (the batch-1 engine's device drafting binds one request); with
``batch_drafts`` (the default on CUDA) the DSpark/DFlash drafters of all rows, and the learned half
of the hybrids, draft in one block forward (``DSparkDrafter.propose_rows``) instead of one each.

SPS(B): ``schedule="adaptive"`` without ``sps_table`` measures the table at construction (while
no request holds a slot) and caches it per model and machine (sps_cache.py). B is what a round's
forward computes (``ModelRunner.round_tokens``): on the CPU the rows' own tokens; on CUDA the row
bucket times the longest row (route b: times max_draft + 1), since every row of a graph runs
that many; the Θ rule prices each admission at that B, so in route b, where lengths cost
nothing more, it verifies whatever raises the expected tokens. The table is refreshed from each
round's runner time; whether to draft at all, from whole rounds (``DraftingRates``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .drafters.base import Draft, Drafter, propose_rows
from .drafting_rates import DraftingRates
from .request import (GenerationResult, StreamChunk, _Request, chunk_of, commit_tokens, first_logits, new_request,
                      reusable_prefix)
from .errors import InvalidRequestError
from .model.linear import blas_owns_the_cores
from .model.loading import LoadedModel
from .model.runner import PrefillItem, PrefillOutput, RowWork, make_runner, pick_token
from .prompts import Prompt, encode_prompt
from .sampling import SamplingParams, make_generator
from .scheduler import SpsTable, choose_length, choose_lengths, choose_lengths_no_early_stop, threshold_length
from .sps_cache import cached_or_measured, sps_key
from .stats import EngineClock, RequestStats, RoundStats

BATCH_SCHEDULES = ("adaptive", "threshold", "full", "no-early-stop")  # the last: a negative control for tests
_GREEDY = SamplingParams(temperature=0.0)
MAX_DEVICE_SLOTS = 64  # graph_runner.ROW_BUCKETS[-1] (a test keeps them equal)


@dataclass
class BatchRequest:
    """One request of a batch: its chunks arrive as rounds commit; ``result`` is set at its end
    (or ``cancelled`` / ``error`` instead)."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    speculative: bool = True
    chunks: list[StreamChunk] = field(default_factory=list)
    result: GenerationResult | None = None
    cancelled: bool = False
    error: BaseException | None = None
    _req: _Request | None = None
    _drafter: Drafter | None = None
    _generator: torch.Generator | None = None
    _slot: int = -1
    _stats: RequestStats = field(default_factory=RequestStats)
    _t0: float = 0.0
    _fresh: bool = False  # admitted without its first token: the next round feeds its last prompt token

    @property
    def done(self) -> bool:
        return self.result is not None or self.cancelled or self.error is not None


class BatchEngine:
    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter | Callable[[], Drafter] | None = None,
        *,
        slots: int = 4,
        max_draft: int = 8,
        max_seq_len: int = 4096,
        schedule: str = "full",
        confidence_threshold: float = 0.5,
        sps_table: Sequence[float] | None = None,
        graphs: bool | None = None,
        exact: bool | str | None = None,
        reuse_prefix: bool = True,
        skip_drafting: bool = True,
        batch_drafts: bool | None = None,
        first_token_in_round: bool | None = None,
    ) -> None:
        """drafter: a prototype (each slot gets a ``sibling`` of it) or a callable that makes one
        drafter per slot; None for plain batched decoding. slots: requests running at once (more
        wait in order). sps_table: target steps per second at B = 1, 2, ... total tokens per
        forward, which ``adaptive`` schedules with (None: measured now, or cached); B past its
        end is never scheduled. reuse_prefix: keep each slot's conversation for the next request
        that shares its prefix (module docstring). skip_drafting: ``adaptive`` may skip drafting
        in a round where rounds of as many rows did better without (``DraftingRates``); False
        drafts every round (tests of the Θ rule itself). batch_drafts: learned drafters draft
        every row in one forward (``Drafter.propose_rows``) instead of one request at a time;
        None = on CUDA, where a forward costs its launches whatever its rows (the batched
        forward rounds differently, so a sampled draft, never the output's distribution, can
        differ from the request's alone; on the CPU each request drafts alone, so a seeded
        sampled request gets its solo output with the full schedule). first_token_in_round: an
        admission prefills all but the prompt's last token and waits for nothing; that token is
        the request's row in the next round, whose verify gives the first token (no draft, so
        the draws of a plain first token). None = on the CUDA graph runner (module docstring,
        "Admission")."""
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise InvalidRequestError(f"slots must be a positive integer, got {slots!r}")
        if not isinstance(max_draft, int) or isinstance(max_draft, bool) or not 0 <= max_draft <= 64:
            raise InvalidRequestError(f"max_draft must be an integer in 0..64, got {max_draft!r}")
        if schedule not in BATCH_SCHEDULES:
            raise InvalidRequestError(f"schedule must be one of {', '.join(map(repr, BATCH_SCHEDULES[:3]))}, got {schedule!r}")
        self.target, self.model = target, target.model
        self.tokenizer = target.tokenizer
        # a prototype's slots get siblings of it; a factory makes each slot's drafter itself
        self._make: Callable[[], Drafter] | None = None
        if drafter is None or isinstance(drafter, Drafter):
            self._prototype = drafter
        else:
            self._prototype, self._make = drafter(), drafter
        self.slot_drafters: list[Drafter | None] = [self._prototype] + [None] * (slots - 1)
        self.capture = self._prototype.capture_layers if self._prototype is not None else ()
        self.max_draft, self.schedule, self.slots = max_draft, schedule, slots
        self.confidence_threshold = float(confidence_threshold)
        self.device = self.model.device
        if (graphs is None and self.device.type == "cuda" or graphs) and slots > MAX_DEVICE_SLOTS:
            raise InvalidRequestError(f"slots must be at most {MAX_DEVICE_SLOTS} on CUDA (the runner's largest row "
                                      f"bucket), got {slots}")
        self.runner = make_runner(self.model, capacity=max_seq_len, slots=slots, max_tokens=max_draft + 1,
                                  capture_layers=self.capture, graphs=graphs, exact=exact)
        self.free = list(range(slots))  # least recently used first
        self.reuse_prefix = reuse_prefix
        self.batch_drafts = self.device.type == "cuda" if batch_drafts is None else bool(batch_drafts)
        self.first_token_in_round = (self.runner.kind.startswith("cuda-graphs") if first_token_in_round is None
                                     else bool(first_token_in_round))
        self.slot_ids: list[list[int]] = [[] for _ in range(slots)]  # tokens whose K/V a free slot holds
        self.waiting: deque[BatchRequest] = deque()
        self.running: list[BatchRequest] = []
        self._ids = 0
        self._rates = DraftingRates()
        self.clock = EngineClock()  # where the rounds' time went (benchmarks read it)
        self.skip_drafting = skip_drafting
        self._table: SpsTable | None = None
        self._can_pay: dict[tuple[int, int, int], bool] = {}  # (rows, table, its version) -> _drafts_can_pay
        self._plain_key: dict[int, int] = {}  # rows -> _rates_key
        self._tokens_of: dict[tuple[int, bool], list[int] | None] = {}  # (rows, grad mode) -> _by_longest
        if sps_table is not None:
            self._table = SpsTable(sps_table, fixed=True)
        elif schedule in ("adaptive", "no-early-stop") and self._prototype is not None:
            self._table = self._sps_table()

    @property
    def sps(self) -> list[float] | None:
        """SPS(B) the adaptive schedule uses now (refreshed by the rounds' own timings), or None."""
        return None if self._table is None else self._table.values()

    @property
    def drafter_name(self) -> str:
        return self._prototype.name if self._prototype is not None else "none"

    # ---- public API -------------------------------------------------------------------------
    def prepare(self, prompt: Prompt, params: SamplingParams | None = None, *, chat: bool = False,
                speculative: bool = True) -> BatchRequest:
        """A request checked against the model and the cache (a bad prompt raises here), not yet
        queued: ``enqueue`` queues it. Touches no engine state, so another thread may call it."""
        params = params or SamplingParams()
        ids = encode_prompt(self.tokenizer, prompt, chat=chat)
        req = new_request(self.target, self.runner.capacity, ids, params)
        speculative = speculative and self._prototype is not None
        stats = RequestStats(prompt_tokens=len(ids), drafter=self.drafter_name if speculative else "none")
        return BatchRequest(-1, ids, params, speculative, _req=req, _stats=stats)

    def enqueue(self, handle: BatchRequest) -> BatchRequest:
        handle.id, self._ids = self._ids, self._ids + 1
        self.waiting.append(handle)
        return handle

    def submit(self, prompt: Prompt, params: SamplingParams | None = None, *, chat: bool = False,
               speculative: bool = True) -> BatchRequest:
        """Queue a request; it joins at the next round with a free slot. Checked now (a bad prompt
        raises here, and nothing of the others is touched)."""
        return self.enqueue(self.prepare(prompt, params, chat=chat, speculative=speculative))

    def cancel(self, handle: BatchRequest) -> None:
        """Drop a request between rounds: a waiting one leaves the queue, a running one its slot
        (which keeps the K/V of what it committed, for prefix reuse). A finished one is left as is."""
        if handle.done:
            return
        if handle in self.waiting:
            self.waiting.remove(handle)
        elif handle in self.running:
            self._release(handle)
        handle.cancelled = True

    def fail_all(self, exc: BaseException) -> list[BatchRequest]:
        """A round failed: every request ends with ``exc`` and every slot forgets its conversation
        (what a failed forward left in the cache is unknown). Returns the requests ended."""
        ended = [*self.running, *self.waiting]
        for h in ended:
            h.error = exc
        self.running, self.waiting = [], deque()
        self.free = list(range(self.slots))
        self.slot_ids = [[] for _ in range(self.slots)]
        return ended

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def step(self) -> list[BatchRequest]:
        """One round: admit waiting requests into free slots (their prefill and first token), then
        one verify forward over every running request. Returns the requests that got chunks."""
        with torch.inference_mode(), blas_owns_the_cores(self.model.embed.weight):
            t0 = time.perf_counter()
            touched = self._admit()
            self.clock.admit_s += time.perf_counter() - t0
            if self.running:
                touched += self._round()
        return touched

    def run(self) -> None:
        while not self.idle:
            self.step()

    def generate_many(self, prompts: Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                      *, chat: bool = False, speculative: bool = True) -> list[GenerationResult]:
        """Every prompt through the batch (at most ``slots`` at a time), results in prompt order."""
        per = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(per) != len(prompts):
            raise InvalidRequestError(f"{len(prompts)} prompts but {len(per)} sampling parameters")
        handles = [self.prepare(p, q, chat=chat, speculative=speculative) for p, q in zip(prompts, per)]
        for h in handles:  # all checked before any is queued
            self.enqueue(h)
        self.run()
        return [h.result for h in handles]

    def steps_per_second(self) -> list[float]:
        """SPS(B) at B = 1 .. the most tokens a round computes (slots x (max_draft + 1), padding
        included on CUDA: ModelRunner.round_tokens): the table in use, else from the cache, else
        measured now (all slots must be free: the probes write into them) and cached."""
        if self._table is None:
            self._table = self._sps_table()
        return self._table.values()

    def _sps_table(self) -> SpsTable:
        """The batch's table as measured (or cached). It is refreshed from every round's runner
        time (fill, forward, verifier, the sync: what the probes time), not the drafting before it,
        which costs a round the same whatever lengths the table chooses (``_round``)."""
        shapes = self.runner.probe_shapes(self.slots)
        tokens = max(shapes)
        # the runner's kind names graphs or not and exact mode; "padded": B as round_tokens counts it;
        # "full": every length timed at the full row bucket (graph_runner.probe_shapes)
        key = sps_key(self.target.source, self.model.cfg, self.model.dtype, self.device,
                      f"{self.runner.kind}-batch{self.slots}-padded-full", tokens)

        def measure() -> SpsTable:
            if not self.idle:
                raise InvalidRequestError("the batch's SPS table is measured while no request runs")
            with torch.inference_mode(), blas_owns_the_cores(self.model.embed.weight):
                table = SpsTable.measure(lambda b: self._probe(*shapes[b]), tokens, repeats=3, sizes=sorted(shapes),
                                         spikes=False)
            self.slot_ids = [[] for _ in range(self.slots)]  # the probes overwrote what the slots held
            return table

        return cached_or_measured(key, tokens, "batched forward", measure, lambda v: SpsTable(v, spikes=False))

    # ---- internals --------------------------------------------------------------------------
    def _probe(self, rows: int, per_row: int) -> None:
        """One greedy round of ``rows`` rows of ``per_row`` tokens at a fixed position (what a round
        of that size runs); synced by the round. Rows past the slots reuse them (timing only)."""
        start = min(64, self.runner.capacity - per_row - 2)
        work = [RowWork(r % self.slots, start, [0] * per_row, _GREEDY, None, capture=bool(self.capture))
                for r in range(rows)]
        self.runner.round(work)

    def _slot_drafter(self, slot: int) -> Drafter:
        d = self.slot_drafters[slot]
        if d is None:
            d = self.slot_drafters[slot] = self._make() if self._make is not None else self._prototype.sibling()
        return d

    def _admit(self) -> list[BatchRequest]:
        """Waiting requests into free slots: each its slot (prefix reuse), its drafter's start,
        then all their prefills together (``runner.prefill_rows``: one forward for the short ones
        on the device runner) and each its first token. Again while a slot freed meanwhile (a
        request that ended at its first token) and a waiting request remain."""
        joined = []
        while self.waiting and self.free:
            batch: list[tuple[BatchRequest, int, bool]] = []  # (request, prompt tokens kept, capture)
            while self.waiting and self.free:
                h = self.waiting.popleft()
                req = h._req
                h._slot, keep = self._pick_slot(req.prompt_ids)
                h._t0 = time.perf_counter()
                self.slot_ids[h._slot] = []  # overwritten from here on, until this request ends
                h._generator = make_generator(h.params, self.device)
                capture = False
                if h.speculative:
                    h._drafter = self._slot_drafter(h._slot)
                    capture = bool(h._drafter.capture_layers)
                    if capture:  # the drafter must hold the features of what is not prefilled again
                        h._drafter.start(req.prompt_ids, h.params, h._generator)
                        keep = min(keep, h._drafter.reusable_context())
                batch.append((h, keep, capture))
            defer = self.first_token_in_round
            items = [PrefillItem(h._slot, h._req.prompt_ids[keep : len(h._req.prompt_ids) - defer], keep, capture)
                     for h, keep, capture in batch]
            todo = [i for i, item in enumerate(items) if item.ids]  # deferring can leave nothing to prefill
            outs: list[PrefillOutput | None] = [None] * len(items)
            for i, out in zip(todo, self.runner.prefill_rows([items[i] for i in todo])):
                outs[i] = out
            # a drafter without features (the n-gram: it indexes the prompt, ~50 us at 100 tokens on the CPU)
            # starts once the prefill is queued, so its host work overlaps the device's
            for h, _, capture in batch:
                if h._drafter is not None and not capture:
                    h._drafter.start(h._req.prompt_ids, h.params, h._generator)
            for (h, keep, capture), out in zip(batch, outs):
                req = h._req
                if capture and out is not None:  # written at its first draft, with the other rows' (one projection)
                    h._drafter.observe_later(out.hidden, keep, owned=True)
                if defer:  # its first token comes from the next round (module docstring, "Admission")
                    h._fresh = True
                    h._stats.prefill_tokens = len(req.prompt_ids) - keep  # its last token is fed by that round
                    self.running.append(h)
                    joined.append(h)
                    self.clock.admissions += 1
                    continue
                first = pick_token(first_logits(req, out.logits), h.params, h._generator)  # host sync: the first token
                h._stats.prefill_tokens, h._stats.prefill_s = len(req.prompt_ids) - keep, time.perf_counter() - h._t0
                self.running.append(h)  # before its first commit, which may already end it (EOS, a budget of 1)
                self._emit(h, *commit_tokens(req, [first], out.logits))
                joined.append(h)
                self.clock.admissions += 1
        return joined

    def _pick_slot(self, prompt_ids: list[int]) -> tuple[int, int]:
        """(free slot, prompt tokens its cache can keep): the longest shared prefix, else the free
        slot used least recently."""
        best, keep = self.free[0], 0
        if self.reuse_prefix:
            for slot in self.free:
                n = reusable_prefix(self.slot_ids[slot], prompt_ids)
                if n > keep:
                    best, keep = slot, n
        self.free.remove(best)
        return best, keep

    def _round(self) -> list[BatchRequest]:
        t0 = time.perf_counter()
        live = list(self.running)
        drafts: list[Draft | None] = [None] * len(live)
        rates_key = self._rates_key(len(live)) if self.schedule == "adaptive" and self._prototype is not None else 0
        # plain batched decoding skips the drafting pass over the rows (~40 us a round at 16 rows
        # on the CPU, every row's room computed for no drafter)
        drafting = self._prototype is not None and self._drafts_can_pay(len(live)) and self._drafting_pays(rates_key)
        drafted = False  # whether any row was asked for a draft (the clock's drafting rounds)
        if drafting:
            wanted, rooms = [], []
            for k, h in enumerate(live):
                req = h._req
                start = len(req.tokens) - 1  # the anchor's position; the slot's cache holds [0, start)
                room = min(self.max_draft, req.budget - req.generated - 1, self.runner.capacity - 1 - start)
                if h._drafter is not None and room > 0 and not h._fresh:
                    wanted.append(k)
                    rooms.append(room)
            drafted = bool(wanted)
            drafters, contexts = [live[k]._drafter for k in wanted], [live[k]._req.tokens for k in wanted]
            proposed = (propose_rows if self.batch_drafts else Drafter.propose_rows)(drafters, contexts, rooms)
            for k, room, draft in zip(wanted, rooms, proposed):
                # a drafter asked for ``room`` drafts no more than that, but one may: slice only then
                drafts[k] = draft if len(draft) <= room else draft.truncate(room)
        lengths = self._lengths(drafts)
        rows, verified = [], []
        longest = total = 0  # the verify forward's longest row and tokens (the SPS table's observation)
        for h, draft, length in zip(live, drafts, lengths):
            # the verified prefix, sliced once (a Draft.truncate per row cost ~4 us of host time: x 64 rows)
            d_tokens = draft.token_list(length) if length else []
            q = None if not length or draft.probs is None else draft.probs[:length].to(self.device)
            req = h._req
            capture = h._drafter is not None and bool(h._drafter.capture_layers)
            if req.constraint is None:
                mask = None
            else:
                tm = time.perf_counter()
                mask = req.constraint.masks(d_tokens)  # [l+1, W]
                self.clock.mask_s += time.perf_counter() - tm
            rows.append(RowWork(h._slot, len(req.tokens) - 1, [req.tokens[-1], *d_tokens], h.params, h._generator, q,
                                capture=capture, mask=mask, logits=req.logprobs is not None))
            verified.append(d_tokens)
            n = 1 + len(d_tokens)
            total += n
            if n > longest:
                longest = n
        t1 = time.perf_counter()
        results = self.runner.round(rows)  # one forward for every request; the round's one host sync
        t2 = time.perf_counter()
        # A round that feeds an admission's last prompt token waits, in its sync, for that
        # admission's prefill, queued just before it (first_token_in_round): its time says nothing
        # about the lengths or the mode, so neither the SPS table nor DraftingRates learns from it
        admitting = any(h._fresh for h in live)
        produced = 0
        committed_features = self._committed_features(rows, results)
        for h, row, draft, d_tokens, res, feats in zip(live, rows, drafts, verified, results, committed_features):
            a = res.accepted
            if h._drafter is not None:
                if draft is not None:  # a row not asked to draft has no round to learn from: in
                    # adaptive's plain rounds the call only decayed the n-gram's last match length
                    # (64 calls a round at C=64, ~1.7 us each on the CPU)
                    h._drafter.feedback(len(d_tokens), a)
                if feats is not None:  # x0, d_1..d_a: what was committed, written when the drafter next drafts
                    # (then for all rows in one projection: DSparkDrafter.propose_rows)
                    h._drafter.observe_later(feats, row.start, owned=True)
            committed, delta = commit_tokens(h._req, d_tokens[:a] + [res.token],
                                             None if res.logits is None else res.logits[: a + 1])
            produced += len(committed)
            if h._fresh:  # its first token, which belongs to no decoding round (RequestStats.mean_accepted_length)
                h._fresh = False
                h._stats.prefill_s = time.perf_counter() - h._t0
            else:
                h._stats.rounds.append(RoundStats(0 if draft is None else len(draft), len(d_tokens), a,
                                                  len(committed), t1 - t0, t2 - t1, 0.0))
            self._emit(h, committed, delta)
        seconds = time.perf_counter() - t0
        if self._table is not None and not self._table.fixed and not admitting:
            # The table prices lengths against each other, so it takes the runner's round alone (as
            # its probes did): the drafting before it costs the same whatever the lengths, and
            # charged to B > 1 only it made every verified token look dearer than a plain step
            # (measured on the H200: adaptive verified 0.5 tokens a round where k7 paid with 3.5).
            # Whether drafting pays at all is DraftingRates', from whole rounds.
            self._table.observe(self.runner.round_tokens(len(rows), longest, total), t2 - t1)
        if self.schedule == "adaptive" and self._prototype is not None and not admitting:
            self._rates.observe(len(live), drafting, produced, seconds, key=rates_key, host_seconds=t1 - t0)
        clock = self.clock
        clock.rounds, clock.rows = clock.rounds + 1, clock.rows + len(live)
        clock.drafting_rounds += drafted
        clock.draft_s, clock.runner_s = clock.draft_s + t1 - t0, clock.runner_s + t2 - t1
        clock.commit_s += time.perf_counter() - t2
        return live

    @staticmethod
    def _committed_features(rows: list[RowWork], results: list) -> list[Tensor | None]:
        """Each capturing row's committed features [a+1, m*H], copied out of the runner's buffer
        (the next round overwrites it) in one copy for all rows, not one per row (16 rows: ~0.4
        ms a round of the H200's host time); None for a row that does not capture."""
        parts = [res.hidden[: res.accepted + 1] for row, res in zip(rows, results) if row.capture]
        if not parts:
            return [None] * len(rows)
        owned = iter(torch.cat(parts).split([p.shape[0] for p in parts]))  # views of one copy
        return [next(owned) if row.capture else None for row in rows]

    def _drafting_pays(self, key: int) -> bool:
        """Whether to draft at all this round, from how rounds of this ``_rates_key`` went: committed
        tokens per second of the rounds that drafted against those that did not (drafting, host
        work and the forward all in). The batch-1 engine's drafters keep their draft on the device;
        here a learned drafter drafts each request eagerly, which at many rows can cost more than
        its tokens bring. Past rounds decide, never this round's drafts: lossless."""
        if self.schedule != "adaptive" or self._prototype is None or not self.skip_drafting:
            return True
        return self._rates.choose(key)

    def _rates_key(self, rows: int) -> int:
        """What a round's cost follows, for DraftingRates: its plain forward's size (the graph
        runner's row bucket, the row count elsewhere). Kept per row count: the runner's
        round_tokens at one token a row is rows whatever the grad mode (the CPU's 1.6 us a call)."""
        key = self._plain_key.get(rows)
        if key is None:
            key = self._plain_key[rows] = self.runner.round_tokens(rows, 1, rows)
        return key

    def _drafts_can_pay(self, rows: int) -> bool:
        """Whether the adaptive schedule could verify anything this round: a draft token is worth
        at most survival 1, so if one such token does not raise Θ at this many rows, no schedule
        verifies one, and drafting is skipped (the round is a plain batched step, at plain's
        cost). Decided from the table and the row count only, never from a draft: lossless."""
        if self.schedule not in ("adaptive", "no-early-stop") or self._table is None:
            return True
        key = (rows, id(self._table), self._table.version)  # changes only with the table (a refit) or the rows
        known = self._can_pay.get(key)
        if known is None:
            sps = self._table.view()
            plain, spec = self.runner.round_tokens(rows, 1, rows), self.runner.round_tokens(rows, 2, rows + 1)
            known = spec <= len(sps) and (rows + 1) * sps[spec - 1] > rows * sps[plain - 1]
            if len(self._can_pay) > 4 * MAX_DEVICE_SLOTS:  # entries of old versions
                self._can_pay.clear()
            self._can_pay[key] = known
        return known

    def _lengths(self, drafts: list[Draft | None]) -> list[int]:
        """Every request's verified length, chosen together before the verify forward."""
        full = [0 if d is None else len(d) for d in drafts]
        if self.schedule == "full" or not any(full):
            return full
        confidences = [[] if d is None else (d.confidence_list() or [1.0] * len(d)) for d in drafts]
        if self.schedule == "threshold":
            return [threshold_length(c, self.confidence_threshold) for c in confidences]
        sps = self._table.view()
        if self.schedule == "adaptive" and len(drafts) == 1:
            # one row (its forward computes its own tokens, padded or not): choose_lengths is
            # choose_length (the candidates are its positions in order), at a third of the host time
            return [choose_length(confidences[0], sps)]
        if self.schedule != "adaptive":
            return choose_lengths_no_early_stop(confidences, sps, self.runner.round_tokens)
        return choose_lengths(confidences, sps, self.runner.round_tokens, self._by_longest(len(drafts)))

    def _by_longest(self, rows: int) -> list[int] | None:
        """The runner's ``tokens_by_longest(rows)``, kept per row count: it follows the runner and
        the grad mode alone (the CPU runner pads rows only in inference mode, which rounds run in)."""
        key = (rows, torch.is_grad_enabled())
        if key not in self._tokens_of:
            self._tokens_of[key] = self.runner.tokens_by_longest(rows)
        return self._tokens_of[key]

    def _release(self, h: BatchRequest) -> None:
        """h leaves its slot, which keeps the K/V of its committed sequence but its last token
        (never fed), for the next request that shares its prefix."""
        self.running = [r for r in self.running if r is not h]
        self.slot_ids[h._slot] = list(h._req.tokens[:-1])
        if h._drafter is not None:
            # the drafter learns which tokens its features belong to only when it drafts (or is
            # told by a hybrid); rounds that did not draft (the adaptive schedule at many rows) left
            # that record short, and the slot's next request then reused no prefix at all (4 CPU
            # chats through serve: 52 of 406 prompt tokens reused at once, 402 one after another)
            h._drafter.track(h._req.tokens)
        self.free.append(h._slot)

    def _emit(self, h: BatchRequest, committed: list[int], delta: str) -> None:
        req = h._req
        if not req.done:
            h.chunks.append(chunk_of(req, committed, delta))
            return
        stats = h._stats
        stats.new_tokens, stats.finish_reason = req.generated, req.finish_reason
        stats.total_s = time.perf_counter() - h._t0
        h.result = GenerationResult(text=req.tracker.text, token_ids=req.tokens[len(req.prompt_ids):],
                                    prompt_ids=req.prompt_ids, stats=stats, logprobs=req.logprobs)
        h.chunks.append(chunk_of(req, committed, delta))
        h.chunks.append(StreamChunk(delta="", token_ids=[], result=h.result))
        self._release(h)
