"""Engine: plain target decoding (the reference) and speculative decoding (chain), one request at a time.

Both paths share prefill, the request bookkeeping (request.py's ``_Request``: budget, EOS, stop
strings, text deltas, the grammar) and the statistics; they differ only in how a round produces tokens. Plain: one target
step, one token. Speculative (DESIGN.md, "One speculative round"): draft, schedule, one verify
forward over [x0, d_1..d_l], accept a prefix with the verifier, roll the KV cache back to what was
committed. Everything the speculative path emits must equal (greedy) or be distributed as (sampling)
what the plain path emits; the tests and the audit hold it to that.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import torch
from torch import Tensor

from .drafters.base import DeviceDraft, DeviceSchedule, Draft, Drafter
from .errors import InvalidDraftLengthError, InvalidRequestError
from .model.kv_cache import StaticKVCache
from .model.linear import blas_owns_the_cores
from .model.loading import LoadedModel
from .model.runner import ModelRunner, RowWork, make_runner, pick_token
from .prompts import Prompt, encode_prompt
from .sampling import SamplingParams, make_generator
from .scheduler import SpsTable, choose_length, choose_length_no_early_stop, quick_sizes, threshold_length
from .request import (GenerationResult, StreamChunk, _Request, chunk_of, commit_tokens, first_logits, new_request,
                      reusable_prefix)
from .sps_cache import cached_or_measured, save_sps, sps_key
from .stats import RequestStats, RoundStats
from .verify import Verifier, verify_chain

log = logging.getLogger("agentspark")
MAX_DRAFT_LIMIT = 64  # beyond this a verify forward costs more than it can ever win back
# How much of a draft to verify (DESIGN.md, "Scheduling how much to verify"); "no-early-stop" is a
# known-wrong negative control for the equivalence tests, never offered to users.
SCHEDULES = ("adaptive", "threshold", "full", "no-early-stop")
_NEEDS_SPS = ("adaptive", "no-early-stop")
PROBE_AFTER = 32  # rounds cut to no verification before one draft token is verified anyway
RECHECK_AFTER = 12  # such rounds before the SPS table is measured again (once per RECHECK_EVERY rounds)
RECHECK_EVERY = 512


class Engine:
    def __init__(
        self,
        target: LoadedModel,
        drafter: Drafter | None = None,
        *,
        max_draft: int = 8,
        max_seq_len: int = 4096,
        schedule: str = "adaptive",
        verifier: Verifier = verify_chain,
        confidence_threshold: float = 0.5,
        sps_table: list[float] | None = None,
        graphs: bool | None = None,
        exact: bool | str | None = None,
    ) -> None:
        """schedule, how much of each draft is verified (trimmed before the verify forward):
        "adaptive": the causal prefix scheduler over the drafter's confidences and the SPS table
        (scheduler.choose_length); "threshold": DeepSpec's static rule, cut at the first slot whose
        confidence is below ``confidence_threshold`` (0 = verify everything); "full": every draft
        token; "no-early-stop": the paper's Appendix-A variant, biased on purpose, a negative
        control for tests only. Drafts without confidences are verified whole under every schedule.

        sps_table: target steps per second at 1, 2, ... tokens per forward, used instead of
        measuring it (tests, reproducible runs); lengths beyond the table are never verified.

        graphs: run decode and verify steps as CUDA graphs (model/graph_runner.py); None = on CUDA.

        exact: on a CUDA device, compute every decode-phase forward so that a verify row gets the
        bits of the plain step at its position (graph_runner.py, exact mode): greedy speculative
        output equals plain decoding bit for bit in any dtype. True takes the default route ("a",
        row-invariant kernels, where Triton runs; AGENTSPARK_EXACT_ROUTE), "a" or "b" (every step
        at max_draft+1 tokens) names one; False is fast mode; None = the runner's default. The CPU
        in float32 is exact by construction either way.
        """
        if not isinstance(max_draft, int) or not 1 <= max_draft <= MAX_DRAFT_LIMIT:
            raise InvalidDraftLengthError(f"max_draft must be an integer in 1..{MAX_DRAFT_LIMIT}, got {max_draft}")
        if schedule not in SCHEDULES:
            raise InvalidRequestError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
        if (
            isinstance(confidence_threshold, bool)
            or not isinstance(confidence_threshold, (int, float))
            or not 0.0 <= confidence_threshold <= 1.0
        ):
            raise InvalidRequestError(
                f"confidence_threshold must be a number in [0, 1] (0 = verify every draft token), got {confidence_threshold!r}"
            )
        if sps_table is not None:
            sps_table = list(sps_table)
            if not sps_table or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in sps_table
            ):
                raise InvalidRequestError(
                    "sps_table must be a non-empty list of finite positive steps per second "
                    f"(entry t at t+1 tokens per forward), got {sps_table!r}; or pass None to measure it"
                )
        self.target = target
        self.model = target.model
        self.tokenizer = target.tokenizer
        self.drafter = drafter
        self.max_draft = max_draft
        self.verifier = verifier
        self.schedule = schedule
        self.confidence_threshold = float(confidence_threshold)
        self.device = self.model.device
        self._slot = 0  # one request at a time: its KV lives in slot 0
        self._cached_len = 0  # positions [0, _cached_len) of the slot hold K/V of _cached_ids
        # target steps/s at 1..max_draft+1 tokens: given (fixed), or measured on first use and
        # refreshed from every round's own verify timing
        self._sps: SpsTable | None = None if sps_table is None else SpsTable(sps_table, fixed=True)
        self._unverified_rounds = 0  # consecutive rounds whose draft the schedule cut to nothing
        self._rounds_since_recheck = RECHECK_EVERY
        self._cached_ids: list[int] = []  # the tokens whose K/V fill cache positions [0, _cached_len)
        self._attach_runner(make_runner(self.model, capacity=max_seq_len, max_tokens=max_draft + 1,
                                        capture_layers=drafter.capture_layers if drafter else (), graphs=graphs,
                                        exact=exact))

    def _attach_runner(self, runner: ModelRunner) -> None:
        """Drive ``runner``; where it offers a features buffer (the device runner) and the drafter
        can draft on the device, bind them: the draft, its q and the verified length then never
        visit the host before the round's one sync."""
        self.runner = runner
        self._device_sps: torch.Tensor | None = None
        self._device_sps_values: list[float] | None = None
        self._device_drafting = False
        features = getattr(runner, "features", None)
        if self.drafter is not None and features is not None and self.verifier is verify_chain:
            self._device_sps = torch.ones(self.max_draft + 1, device=self.device)
            self._device_sps_host = torch.ones(self.max_draft + 1, pin_memory=self.device.type == "cuda")
            schedule = DeviceSchedule(self.schedule, self.confidence_threshold, self._device_sps)
            self._device_drafting = self.drafter.bind_device(features[0], schedule, graphs=getattr(runner, "graphs", True))
        self.reset()

    @property
    def cache(self) -> StaticKVCache:
        return self.runner.cache

    def reset(self) -> None:
        """Forget what the cache holds (the next request prefills its whole prompt)."""
        self._cached_ids, self._cached_len = [], 0

    def steps_per_second(self) -> list[float]:
        """The SPS table: ``sps_table`` if given; else the cached one of this model, dtype, device
        and machine (sps_cache.py); else measured now, quickly (the runner's probe times rounds of
        1, 2, 3 and max_draft+1 tokens on its scratch slot, so no session is disturbed), logged and
        cached. ``serve`` calls this at start-up so that no request pays for it."""
        if self._sps is None:
            tokens = self.max_draft + 1
            key = self._sps_key = sps_key(self.target.source, self.model.cfg, self.model.dtype, self.device,
                                          self.runner.kind, tokens)
            self._sps = cached_or_measured(key, tokens, "forward", self._measure_sps, SpsTable)
        return self._sps.values()

    def _measure_sps(self, warmup: bool = True) -> SpsTable:
        tokens = self.max_draft + 1
        with torch.inference_mode(), blas_owns_the_cores(self.model.embed.weight):
            return SpsTable.measure(self.runner.probe, tokens, repeats=3, sizes=quick_sizes(tokens), warmup=warmup)

    # ---- public API -------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        chat: bool = False,
        speculative: bool = True,
        reuse_cache: bool = False,
    ) -> GenerationResult:
        """Run one request to the end. ``speculative=False`` (or no drafter) is plain decoding.

        reuse_cache: keep the KV of the longest prefix this prompt shares with what the cache
        holds from the previous request (a multi-turn session then prefills only what was
        appended). Plain and speculative runs compared against each other must agree on it:
        reused K/V were computed by other forwards than a fresh prefill would use.
        """
        for chunk in self.stream(prompt, params, chat=chat, speculative=speculative, reuse_cache=reuse_cache):
            if chunk.result is not None:
                return chunk.result
        raise AssertionError("stream ended without a result")  # pragma: no cover

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        *,
        chat: bool = False,
        speculative: bool = True,
        reuse_cache: bool = False,
    ) -> Iterator[StreamChunk]:
        """Yield text deltas as tokens are committed; the last chunk carries the result."""
        params = params or SamplingParams()
        req = self._new_request(encode_prompt(self.tokenizer, prompt, chat=chat), params)
        drafter = self.drafter if speculative else None
        if drafter is not None and self.schedule in _NEEDS_SPS:
            self.steps_per_second()
        with torch.inference_mode():
            yield from self._run(req, drafter, reuse_cache)

    def check(self, prompt: Prompt, params: SamplingParams | None = None, *, chat: bool = False) -> None:
        """Raise what ``generate`` would raise for this request before it runs (bad token ids, a
        prompt the context cannot hold, stop strings without a tokenizer); touches no state, so
        another thread may call it while the engine serves."""
        self._new_request(encode_prompt(self.tokenizer, prompt, chat=chat), params or SamplingParams())

    # ---- internals --------------------------------------------------------------------------

    def _new_request(self, prompt_ids: list[int], params: SamplingParams) -> _Request:
        return new_request(self.target, self.runner.capacity, prompt_ids, params)

    def _run(self, req: _Request, drafter: Drafter | None, reuse_cache: bool) -> Iterator[StreamChunk]:
        params = req.params
        generator = make_generator(params, self.device)
        capture = drafter.capture_layers if drafter else ()
        stats = RequestStats(prompt_tokens=len(req.prompt_ids), drafter=drafter.name if drafter else "none")
        t_start = time.perf_counter()
        # Torch stays on one thread while we compute (linear.py says why); between chunks the
        # caller's own setting is back in force.
        with blas_owns_the_cores(self.model.embed.weight):
            if drafter:
                drafter.start(req.prompt_ids, params, generator)
            # Prefill what the cache does not already hold, in one forward; its last row gives
            # the first new token. At least one token is fed: its logits are needed.
            keep = self._reusable_prefix(req.prompt_ids) if reuse_cache else 0
            if capture:  # the drafter must hold the features of what is not prefilled again
                keep = min(keep, drafter.reusable_context())
            self.reset()  # until this request ends cleanly, the cache content is unknown
            out = self.runner.prefill(self._slot, req.prompt_ids[keep:], keep, capture=bool(capture))
            first = pick_token(first_logits(req, out.logits), params, generator)  # host sync: the first token
            if drafter and capture:
                drafter.observe(out.hidden, keep)
            stats.prefill_tokens, stats.prefill_s = len(req.prompt_ids) - keep, time.perf_counter() - t_start
            committed, delta = self._commit(req, [first], out.logits)
        yield chunk_of(req, committed, delta)

        plain_rounds = self._plain_rounds(req, generator) if drafter is None else None
        while not req.done:
            with blas_owns_the_cores(self.model.embed.weight):
                if plain_rounds is not None:
                    new, round_stats, logits = next(plain_rounds)
                else:
                    new, round_stats, logits = self._speculative_round(req, drafter, generator, capture)
                t_commit = time.perf_counter()
                committed, delta = self._commit(req, new, logits)
                round_stats.committed = len(committed)
                round_stats.other_s += time.perf_counter() - t_commit
            stats.rounds.append(round_stats)
            yield chunk_of(req, committed, delta)

        if plain_rounds is not None:
            plain_rounds.close()  # ends the runner's stream (and waits for its step in flight)
        if drafter is not None:
            # A learned drafter records the tokens behind its features when it drafts; the last
            # round's commits (up to max_draft + 1 tokens) it never learned, so the session's next
            # request kept its prefix only up to that round: 3-7 tokens prefilled again each turn
            # of the demo, a 128-token prefill chunk instead of 32 on the GPU for some of them.
            drafter.track(req.tokens)
        # The slot holds exactly the committed sequence minus its last token (multi-turn reuse).
        self._cached_len = len(req.tokens) - 1
        self._cached_ids = req.tokens[: self._cached_len]
        stats.new_tokens = req.generated
        stats.finish_reason = req.finish_reason
        stats.total_s = time.perf_counter() - t_start
        result = GenerationResult(
            text=req.tracker.text, token_ids=req.tokens[len(req.prompt_ids) :], prompt_ids=req.prompt_ids, stats=stats,
            logprobs=req.logprobs,
        )
        yield StreamChunk(delta="", token_ids=[], result=result)

    def _reusable_prefix(self, prompt_ids: list[int]) -> int:
        """Length of the longest prefix of prompt_ids whose K/V the cache holds (< len(prompt))."""
        return reusable_prefix(self._cached_ids[: self._cached_len], prompt_ids)

    _commit = staticmethod(commit_tokens)

    def _plain_rounds(self, req: _Request,
                      generator: torch.Generator) -> Iterator[tuple[list[int], RoundStats, Tensor | None]]:
        """The reference: one target step per token on the pending token, one token from its logits.
        The runner streams the steps (on CUDA with the next one in flight); a round's time is the
        time between two tokens. Under a grammar, or reporting logprobs, one round per step."""
        start = len(req.tokens) - 1  # the pending token's position; the cache holds [0, start)
        if req.constraint is not None or req.logprobs is not None:
            steps = self._stepwise(req, generator)
        else:
            steps = _no_logits(self.runner.plain_stream(self._slot, start, req.tokens[-1], req.params, generator,
                                                        req.budget - req.generated))
        observe = self._sps is not None and self.runner.kind == "host"  # one forward per token there
        try:
            t0 = time.perf_counter()
            for token, logits in steps:
                seconds = time.perf_counter() - t0
                if observe:
                    self._sps.observe(1, seconds)
                yield [token], RoundStats(0, 0, 0, 0, 0.0, seconds, 0.0), logits
                t0 = time.perf_counter()
        finally:
            steps.close()

    def _stepwise(self, req: _Request, generator: torch.Generator | None) -> Iterator[tuple[int, Tensor | None]]:
        """Plain decoding one round per token: under a grammar its logits masked at the grammar's
        state after everything committed (which the caller commits before asking for the next);
        reporting logprobs, with the step's logits [1, V]."""
        while True:
            mask = None if req.constraint is None else req.constraint.masks([])
            row = RowWork(self._slot, len(req.tokens) - 1, [req.tokens[-1]], req.params, generator, mask=mask,
                          logits=req.logprobs is not None)
            result = self.runner.round([row], self.verifier)[0]
            yield result.token, result.logits

    def _schedule_length(self, draft: Draft) -> int:
        """How many leading draft tokens to verify under this engine's schedule."""
        confidences = None if self.schedule == "full" or not len(draft) else draft.confidence_list()
        if confidences is None:
            return len(draft)
        if self.schedule == "threshold":
            return threshold_length(confidences, self.confidence_threshold)
        if self.schedule == "no-early-stop":
            return choose_length_no_early_stop(confidences, self.steps_per_second())
        return choose_length(confidences, self.steps_per_second())

    def _recheck_sps(self) -> None:
        self._sps = self._sps.merged(self._measure_sps(warmup=False))
        self._rounds_since_recheck = 0
        save_sps(getattr(self, "_sps_key", None), self._sps.values())  # the next engine starts from the better table
        log.info("the target-speed table cut %d drafts in a row: measured again", RECHECK_AFTER)

    def _sync_device_sps(self) -> None:
        """Keep the device copy of the SPS table current (it changes as rounds refresh it)."""
        values = self.steps_per_second()
        if values != self._device_sps_values:
            # a pinned staging buffer: rewritten only after a round's sync, so its last copy is done
            self._device_sps_host.copy_(torch.tensor(values, dtype=torch.float32))
            self._device_sps.copy_(self._device_sps_host, non_blocking=True)
            self._device_sps_values = values

    def _device_round(
        self, req: _Request, drafter: Drafter, draft: DeviceDraft, generator: torch.Generator, t0: float
    ) -> tuple[list[int], RoundStats, None]:
        """A round whose draft stayed on the device: the drafter's graph drafted and scheduled, the
        runner's graph verifies T = 1 + drafted tokens (the unverified tail is ignored); one sync."""
        start = len(req.tokens) - 1
        t1 = time.perf_counter()
        result, d_tokens = self.runner.round_device(self._slot, start, req.tokens[-1], draft, req.params, generator)
        t2 = time.perf_counter()
        if self._sps is not None:
            self._sps.observe(1 + draft.drafted, t2 - t1)  # the forward ran the whole draft
        a = result.accepted
        drafter.feedback(len(d_tokens), a)
        drafter.observe_round(start, a + 1)
        stats = RoundStats(draft.drafted, len(d_tokens), a, 0, t1 - t0, t2 - t1, time.perf_counter() - t2)
        return d_tokens[:a] + [result.token], stats, None

    def _speculative_round(
        self, req: _Request, drafter: Drafter, generator: torch.Generator, capture: tuple[int, ...]
    ) -> tuple[list[int], RoundStats, Tensor | None]:
        """One round: (committed candidates, stats, their logits [a+1, V] when reporting logprobs)."""
        t0 = time.perf_counter()
        start = len(req.tokens) - 1  # anchor x0's position; the cache holds [0, start)
        # Draft no further than the token budget (the round emits up to l+1) and the cache.
        room = min(self.max_draft, req.budget - req.generated - 1, self.runner.capacity - 1 - start)
        if self._device_drafting and self.schedule in _NEEDS_SPS:
            self._sync_device_sps()
        draft = drafter.propose(req.tokens, room) if room > 0 else Draft.empty(self.device)
        if isinstance(draft, DeviceDraft):
            if req.constraint is None and req.logprobs is None:
                return self._device_round(req, drafter, draft, generator, t0)
            # under a grammar, or reporting logprobs, the round runs eagerly (masks, logits per row):
            # the device draft's tokens and q are verified as host drafts (the device drafter then
            # reads features the eager round did not write: weaker drafts, never a different output)
            draft = Draft(tokens=draft.tokens[: draft.drafted], probs=None if draft.probs is None else draft.probs[: draft.drafted])
        draft = draft.truncate(max(0, min(len(draft), room)))
        # Schedule: trim *before* the verify forward, never after it.
        length = self._schedule_length(draft)  # the confidences are host values here (n-gram's)
        self._rounds_since_recheck += 1
        if len(draft) and not length:
            self._unverified_rounds += 1
            if (self._unverified_rounds == RECHECK_AFTER and self._rounds_since_recheck >= RECHECK_EVERY
                    and self.schedule in _NEEDS_SPS and not self._sps.fixed):
                # A table measured during a slow spell (one 2-token timing inflated by a loaded
                # machine) cuts every draft; measure once more and keep the faster of the two per
                # size, then schedule this draft again. Both depend on past rounds only.
                self._recheck_sps()
                length = self._schedule_length(draft)
            if not length and self._unverified_rounds >= PROBE_AFTER and self.schedule in _NEEDS_SPS and not self._sps.fixed:
                # A table that turned speculation off learns nothing more from the rounds, so after
                # PROBE_AFTER such rounds one draft token is verified anyway. The choice depends on
                # past rounds only, never on this draft: the output distribution is unchanged.
                length = 1
        if length:
            self._unverified_rounds = 0
        verified = draft if length == len(draft) else draft.truncate(length)
        # Host drafts: n-gram's tokens live on the host (no sync); a learned drafter drafts here only
        # on the CPU or in EAGLE-3's eager first round after a prefill (a second sync that round).
        d_tokens = verified.tokens.tolist()
        t1 = time.perf_counter()
        q = None if verified.probs is None else verified.probs.to(self.device)
        mask = None if req.constraint is None else req.constraint.masks(d_tokens)  # [l+1, W]: row k after d_1..d_k
        row = RowWork(self._slot, start, [req.tokens[-1], *d_tokens], req.params, generator, q, capture=bool(capture),
                      mask=mask, logits=req.logprobs is not None)
        result = self.runner.round([row], self.verifier)[0]  # the round's one host sync
        t2 = time.perf_counter()
        if self._sps is not None:
            self._sps.observe(1 + len(verified), t2 - t1)  # refresh the table with this round's cost
        a = result.accepted
        drafter.feedback(len(verified), a)
        if self._device_drafting:
            drafter.observe_round(start, a + 1)  # the drafter's graph reads the runner's features
        elif capture:
            drafter.observe(result.hidden[: a + 1], start)  # x0, d_1..d_a: what was committed
        new = d_tokens[:a] + [result.token]
        stats = RoundStats(len(draft), len(verified), a, 0, t1 - t0, t2 - t1, time.perf_counter() - t2)
        return new, stats, None if result.logits is None else result.logits[: a + 1]


def _no_logits(stream: Iterator[int]) -> Iterator[tuple[int, None]]:
    """The runner's plain stream as (token, no logits) steps; closing it closes the stream at once
    (which waits for the step in flight), not whenever the stream is collected."""
    try:
        for token in stream:
            yield token, None
    finally:
        stream.close()
