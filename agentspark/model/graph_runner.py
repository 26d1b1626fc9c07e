"""DeviceRunner: the target's decode and verify steps over device positions, as CUDA graphs, one
per bucket (``graphs=False`` runs the same body eagerly: on the CPU, that is how its logic is tested).

A bucket is (R rows, T tokens per row, how tokens are picked). Its graph holds the whole round:
the decoder over device positions (``DecoderModel.forward_rows``), the probabilities, and the fused
verifier (kernels/verify.py), ending in one [R, 2] tensor of (accepted, token). Replaying it costs
one launch instead of ~25 per layer, and nothing in it depends on a host value, so one graph
serves every position and every length. A round is:

  host: write slots, starts, draft counts, top-k, token ids into one pinned buffer (no sync)
  H2D : one copy into the bucket's device inputs                                  (async)
  RNG : per sampled row, its uniforms and exponential race, drawn from its own generator (async)
  graph replay                                                                    (async)
  D2H : (accepted, token) per row into pinned memory, then THE host sync of the round

Rows are padded up to the bucket (rows 1, 2, 4, ..., 64); padding rows write into the scratch
slot and are ignored. Graphs are captured lazily, on a bucket's first use, into one shared memory
pool (rounds never run concurrently).

Prefill runs in chunks of a fixed number of tokens (``PREFILL_TOKENS``), each a captured graph
too: the prompt's tokens are padded up to the chunk, the padding writes K/V past the prompt
(positions nothing reads before a later step writes them) and the logits are taken at the last
real token, a device index. An eager prefill launches ~20 ops per layer from Python (16 ms for
the 135M model on the H200, whatever the prompt); a chunk costs one replay. A chunk's attention
reads a window of the cache that holds its context (256, 512, ... positions, part of the bucket),
not the whole capacity (except in exact mode's route a, below: the decode attention kernel, which
reads each row only up to its own length anyway). Where the padding would run past the cache's capacity, the rest of the
prompt is prefilled eagerly.

Exact mode (``exact=True``): greedy speculative output equals plain in bf16 too, because a verify
row gets the bits the plain step at its position gets. Two routes (DESIGN.md), ``exact_route``:

- ``"a"`` (where the Triton kernels run): every forward is row-invariant
  (``DecoderModel.forward_rows(row_invariant=True)``): the products go through kernels/gemv.py in
  fixed 16-row tiles, attention computes every query in 16-row tiles whatever T is, and the norms,
  activation, RoPE and verifier are one program per row. A row's bits then depend neither on T nor
  on how many rows, of how many requests, share the launch: exact at batch 1 and under batching,
  with each forward at its own size. Prefill chunks too (through the decode attention kernel over
  the whole cache, not SDPA over a key window): a prompt's K/V and first logits are those of
  one-token steps however it was cut, so a request that reuses another conversation's prefix
  (prefix reuse prefills only the rest, from wherever the reuse ends) gets the bits it gets alone.
  Rows under a grammar (its bitmask applied in the graph) and rows reporting logprobs (the graph
  keeps the raw logits) run in the same graphs.
- ``"b"`` (batch 1 only): every decode-phase forward runs at one shape, T = γ+1 tokens per row,
  plain steps and verifies alike, through cuBLAS; the rows past a round's own tokens are padding
  (their K/V land past the sequence, where a later step overwrites them before anything reads
  them; their logits are ignored). The products, norms and attention then see the same launch
  shapes in plain and speculative decoding. Its price is T(γ+1)/T(1) - 1 of plain decoding, and
  the cache keeps γ positions of headroom for the padding, which ``capacity`` does not offer to
  requests. Under batching the row bucket still changes cuBLAS's shapes, so it is not exact there.

Host syncs, all of them: ``round`` (one, reading the results), ``prefill`` callers reading the
first token, and ``probe`` (timing, on purpose).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..constraints import apply_masks_rows, mask_words
from ..drafters.base import DeviceDraft
from ..kernels.support import kernels_run_on
from ..kernels.verify import verify_rows
from ..sampling import SamplingParams, probs_rows
from ..verify import Verifier, verify_chain
from .decoder import DecoderModel
from .prefill_rows import prefill_rows
from .runner import ModelRunner, PrefillItem, PrefillOutput, RowResult, RowWork, eager_round

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# The device runner's mode when the engine does not say (module docstring): exact. Measured on the
# H200 (examples/results/gpu_runtime_h200.json, exact_mode) it costs plain decoding 3.8% at the 8B
# shape, under the 10% at which issue 15 makes it the default, and the GPU suite passes with it as
# the default (examples/results/gpu_runtime_runs/run14_gpu_tests_exact_default.log). Fast mode
# (each forward at its own size: bf16 greedy output may differ from plain at near-ties) is the
# option: Engine(exact=False), --gpu-mode fast, or AGENTSPARK_GPU_MODE=fast for a process.
_MODE = os.environ.get("AGENTSPARK_GPU_MODE", "exact").strip().lower()
if _MODE not in ("exact", "fast"):
    raise ValueError(f"AGENTSPARK_GPU_MODE must be 'exact' or 'fast', got {_MODE!r}")
EXACT_BY_DEFAULT = _MODE == "exact"
# Exact mode's route where the engine does not say (module docstring): a where the kernels run.
_ROUTE = os.environ.get("AGENTSPARK_EXACT_ROUTE", "a").strip().lower()
if _ROUTE not in ("a", "b"):
    raise ValueError(f"AGENTSPARK_EXACT_ROUTE must be 'a' or 'b', got {_ROUTE!r}")


def exact_route_for(device: torch.device, route: str | None = None) -> str:
    """The route exact mode takes on ``device``: ``route`` (or AGENTSPARK_EXACT_ROUTE, default a),
    except that route a needs the Triton kernels (CUDA, or the interpreter on the CPU): else b."""
    route = _ROUTE if route is None else route
    if route not in ("a", "b"):
        raise ValueError(f"exact_route must be 'a' or 'b', got {route!r}")
    probe = torch.empty(0, device=device)
    return route if route == "b" or kernels_run_on(probe) else "b"
PREFILL_TOKENS = (32, 128)  # tokens per prefill chunk: a session's appended turn, and a prompt's bulk


def row_bucket(rows: int) -> int:
    """The smallest row bucket that holds ``rows``."""
    for b in ROW_BUCKETS:
        if b >= rows:
            return b
    raise ValueError(f"{rows} rows exceed the largest bucket {ROW_BUCKETS[-1]}")


@dataclass(frozen=True)
class BucketKey:
    rows: int  # R, padded
    tokens: int  # T = 1 + verified draft tokens per row
    greedy: bool  # every row greedy: argmax on the logits, no probabilities, no random numbers
    has_q: bool  # sampled rows verify against the drafter's q (else q is one-hot at the draft)
    filtered: bool  # some row uses top-k or top-p (a sort over the vocabulary)
    capture: bool  # the graph also returns the target features for a learned drafter
    chained: bool = False  # plain steps fed by the previous replay's token, on the device (plain_stream)
    masked: bool = False  # some row is under a grammar: its bitmask per position is applied to the logits
    logits: bool = False  # some row reports logprobs: the graph keeps the raw logits for the host


class _Bucket:
    """The static buffers of one bucket and its graph."""

    def __init__(self, key: BucketKey, vocab: int, device: torch.device) -> None:
        R, T = key.rows, key.tokens
        self.key = key
        # ints, one buffer so one H2D copy fills them: [slots R | starts R | n R | top_k R | ids R*T]
        self.ints = torch.zeros(4 * R + R * T, dtype=torch.long, device=device)
        pin = device.type == "cuda"  # page-locked host buffers: the copies are truly asynchronous
        self.ints_host = torch.zeros(4 * R + R * T, dtype=torch.long, pin_memory=pin)
        self.slots, self.starts, self.n = self.ints[:R], self.ints[R : 2 * R], self.ints[2 * R : 3 * R]
        self.top_k = self.ints[3 * R : 4 * R]  # sampled rows' top-k (0 = off)
        self.ids = self.ints[4 * R :].view(R, T)  # [R, T] anchor + drafts
        if not key.greedy:
            self.floats = torch.zeros(2 * R, device=device)  # [temperature R | top_p R]
            self.floats_host = torch.zeros(2 * R, pin_memory=pin)
            self.temperature, self.top_p = self.floats[:R], self.floats[R:]
            self.u = torch.zeros(R, max(T - 1, 1), device=device)  # [R, T-1] uniforms
            self.race = torch.ones(R, vocab, device=device)  # [R, V] exponential race
            self.q = torch.zeros(R, max(T - 1, 1), vocab, device=device) if key.has_q else None
        self.out_host = torch.zeros(R, 2, dtype=torch.long, pin_memory=pin)
        if key.masked:  # [R, T, W] int32 grammar bitmasks (constraints.py); -1 = every token allowed
            words = mask_words(vocab)
            self.mask = torch.full((R, T, words), -1, dtype=torch.int32, device=device)
            self.mask_host = torch.full((R, T, words), -1, dtype=torch.int32, pin_memory=pin)
        self.device_draft_host = torch.zeros(R, T, dtype=torch.long, pin_memory=pin)  # [drafts T-1 | length]
        # chained plain steps: [token R | start R], written by each replay for the next one
        self.chain = torch.zeros(2, R, dtype=torch.long, device=device) if key.chained else None
        self.chain_host = torch.zeros(2, R, dtype=torch.long, pin_memory=pin) if key.chained else None
        self.out_ring = [torch.zeros(R, 2, dtype=torch.long, pin_memory=pin) for _ in range(2)] if key.chained else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.packed: Tensor | None = None  # [R, 2] (accepted, token), written by the graph
        self.hidden: Tensor | None = None  # [R, T, m*H] when key.capture
        self.raw: Tensor | None = None  # [R, T, V] the forward's logits, when key.logits


MIN_KEY_WINDOW = 256  # the smallest key window of a prefill chunk (then doubling up to the capacity)


@dataclass(frozen=True)
class PrefillKey:
    tokens: int  # C, the chunk's tokens (padded)
    keys: int  # W, the key window the chunk's attention reads: [0, W) holds every position it sees
    capture: bool  # the graph also returns the target features of the chunk


def key_window(end: int, capacity: int) -> int:
    """The smallest window (MIN_KEY_WINDOW doubled, at most the capacity) holding [0, end): the
    attention of a chunk costs what its context needs, not the whole cache, at log2 graphs."""
    window = MIN_KEY_WINDOW
    while window < end:
        window *= 2
    return min(window, capacity)


class _PrefillBucket:
    """The static buffers of one prefill chunk and its graph."""

    def __init__(self, key: PrefillKey, device: torch.device) -> None:
        self.key = key
        self.ints = torch.zeros(3 + key.tokens, dtype=torch.long, device=device)  # [slot | start | last | ids C]
        self.slots, self.starts, self.last = self.ints[0:1], self.ints[1:2], self.ints[2:3]
        self.ids = self.ints[3:].view(1, key.tokens)  # [1, C]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None  # [1, V] at the chunk's last real token, written by the graph
        self.hidden: Tensor | None = None  # [C, m*H] when key.capture


def prefill_chunks(n: int) -> list[int]:
    """The chunk sizes that cover ``n`` prompt tokens: the largest chunk while more than it is
    left, then the smallest chunk that holds the rest."""
    sizes = []
    while n > 0:
        size = next((c for c in PREFILL_TOKENS if c >= n), PREFILL_TOKENS[-1])
        sizes.append(size)
        n -= size
    return sizes


class DeviceRunner(ModelRunner):
    def __init__(self, model: DecoderModel, *, graphs: bool = True, exact: bool = False, capacity: int,
                 max_tokens: int = 9, exact_route: str | None = None, **kwargs) -> None:
        # exact mode's route (module docstring); None when not exact
        self.route = exact_route_for(model.device, exact_route) if exact else None
        headroom = max_tokens - 1 if self.route == "b" else 0  # route b's padding rows write past the sequence
        super().__init__(model, capacity=capacity + headroom, max_tokens=max_tokens, **kwargs)
        self._capacity = self.cache.capacity - headroom
        if self._capacity < 1:
            raise ValueError(f"a cache of {self.cache.capacity} positions leaves no room beside exact mode's padding")
        if graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device; pass graphs=False")
        self.graphs = graphs
        self.exact = exact
        self.kind = ("cuda-graphs" if graphs else "device-eager") + (f"-exact-{self.route}" if exact else "")
        self.buckets: dict[BucketKey, _Bucket] = {}
        self.prefill_buckets: dict[PrefillKey, _PrefillBucket] = {}
        self.prefill_row_buckets: dict = {}  # prefill_rows.RowsKey -> its bucket: admissions batched
        # Where every round leaves its rows' target features (one buffer for all buckets, so a
        # device drafter's observe graph reads one place): [rows, Tmax, m*H].
        self.features: Tensor | None = None
        if self.capture_layers:
            width = len(self.capture_layers) * model.cfg.hidden_size
            self.features = torch.zeros(ROW_BUCKETS[-1], self.max_tokens, width, dtype=model.dtype, device=self.device)
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.done = torch.cuda.Event() if self.device.type == "cuda" else None

    @property
    def capacity(self) -> int:
        """Positions a request may use (route b keeps its padding's headroom out of it)."""
        return self._capacity

    def _tokens(self, T: int) -> int:
        """Tokens per row of a decode-phase forward that needs ``T``: route b runs them all at one shape."""
        return self.max_tokens if self.route == "b" else T

    # ---- capture --------------------------------------------------------------------------
    def _bucket(self, key: BucketKey) -> _Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(key, self.model.cfg.vocab_size, self.device)
            if self.graphs:
                self._capture(bucket)
        return bucket

    def capture_lengths(self) -> int:
        """Capture every round length (1 .. max_tokens tokens a row) of each bucket key met so far
        (same rows, sampling, features, mask and logits), so that a verified length never met
        before captures nothing later: a capture costs tens of ms, charged to the round that
        meets it. Chained buckets (plain steps) have one length. Returns the graphs captured.
        Callers: a rehearsal before timed work (the demo), where the drafters' confidence
        estimates have moved and will choose lengths the rehearsal did not."""
        if self.route == "b":  # every decode-phase forward already runs max_tokens a row
            return 0
        keys = [k for k in self.buckets if not k.chained]
        n = 0
        for key in keys:
            for t in range(1, self.max_tokens + 1):
                other = replace(key, tokens=t)
                if other not in self.buckets:
                    self._bucket(other)
                    n += 1
        return n

    def _replay(self, b: _Bucket) -> None:
        if self.graphs:
            b.graph.replay()
        else:
            with torch.inference_mode():
                b.packed, b.hidden = self._round_body(b)

    def _round_body(self, b: _Bucket) -> tuple[Tensor, Tensor | None]:
        """What the graph holds: forward over the bucket's rows, probabilities, the fused verifier."""
        key = b.key
        if key.chained:  # this step's input is the last step's output, without the host
            b.ids[:, 0].copy_(b.chain[0])
            b.starts.copy_(b.chain[1])
        out = self.model.forward_rows(b.ids, self.cache, b.slots, b.starts,
                                      capture_layers=self.capture_layers if key.capture else (),
                                      row_invariant=self.route == "a")
        draft = b.ids[:, 1:]  # [R, T-1]
        if key.logits:
            b.raw = out.logits  # [R, T, V] the graph's own output buffer: read before the next replay
        # the grammar's mask, as plain decoding applies it: on the logits, before any probability
        logits = apply_masks_rows(out.logits, b.mask) if key.masked else out.logits  # [R, T, V]
        if key.greedy:
            accepted, token = verify_rows(logits, draft, b.n, greedy=True)
        else:
            p = probs_rows(logits, b.temperature, b.top_k, b.top_p, filtered=key.filtered)  # [R, T, V]
            accepted, token = verify_rows(p, draft, b.n, b.q, b.u, b.race, greedy=False)
        if key.chained:
            b.chain[0].copy_(token)
            b.chain[1].copy_(b.starts + 1)
        hidden = None
        if out.hidden is not None:
            hidden = self.features[: key.rows, : key.tokens]
            hidden.copy_(out.hidden)
        return torch.stack([accepted, token], dim=1), hidden  # [R, 2], [R, T, m*H] | None

    def _capture(self, b: _Bucket) -> None:
        b.slots.fill_(self.scratch)  # warm-up runs write into the scratch slot only
        b.starts.zero_()
        if b.chain is not None:
            b.chain.zero_()
        b.graph, (b.packed, b.hidden) = self._capture_body(lambda: self._round_body(b))

    def _capture_body(self, body):  # noqa: ANN001, ANN202 (a callable; its outputs)
        """Warm ``body`` up twice on a side stream (Triton compiles, cuBLAS picks its algorithms),
        then capture it into a graph in the shared pool: (graph, the outputs it writes)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode():
            out = body()
        return graph, out

    # ---- prefill --------------------------------------------------------------------------
    def _prefill_bucket(self, key: PrefillKey) -> _PrefillBucket:
        b = self.prefill_buckets.get(key)
        if b is None:
            b = self.prefill_buckets[key] = _PrefillBucket(key, self.device)
            if self.graphs:
                b.slots.fill_(self.scratch)  # warm-up and capture write into the scratch slot only
                b.graph, (b.logits, b.hidden) = self._capture_body(lambda: self._prefill_body(b))
        return b

    def _prefill_body(self, b: _PrefillBucket) -> tuple[Tensor, Tensor | None]:
        invariant = self.route == "a"  # module docstring: route a's chunks are row-invariant steps
        out = self.model.forward_rows(b.ids, self.cache, b.slots, b.starts, logit_index=b.last,
                                      key_window=None if invariant else b.key.keys, row_invariant=invariant,
                                      capture_layers=self.capture_layers if b.key.capture else ())
        return out.logits[:, 0], None if out.hidden is None else out.hidden[0]  # [1, V], [C, m*H] | None

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int], start: int, *, capture: bool = False) -> PrefillOutput:
        """ids at positions [start, start+P) of ``slot``, in chunks of PREFILL_TOKENS (module
        docstring). One H2D copy carries every chunk's inputs; nothing here waits for the device."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        sizes = prefill_chunks(len(ids))
        fits = 0  # chunks whose padding stays inside the cache
        end = start
        for size in sizes:
            if end + size > self.capacity:
                break
            fits, end = fits + 1, end + size
        chunks, pos, o = [], 0, 0  # (offset in the staged inputs, chunk size, real tokens, first position)
        host = torch.zeros(sum(3 + c for c in sizes[:fits]), dtype=torch.long,
                           pin_memory=self.device.type == "cuda")  # the caching host allocator keeps it
        view = host.numpy()  # alive until its copy is done
        for size in sizes[:fits]:
            n = min(size, len(ids) - pos)
            view[o : o + 3] = (slot, start + pos, n - 1)
            view[o + 3 : o + 3 + n] = ids[pos : pos + n]
            chunks.append((o, size, n, start + pos))
            pos, o = pos + n, o + 3 + size
        staged = host.to(self.device, non_blocking=True)
        logits, hidden = None, []
        for o, size, n, first in chunks:
            # route a attends over the whole cache (decode attention): one bucket per chunk size
            keys = self.cache.capacity if self.route == "a" else key_window(first + size, self.capacity)
            b = self._prefill_bucket(PrefillKey(size, keys, capture))
            b.ints.copy_(staged[o : o + 3 + size])  # device to device, ordered behind the H2D copy
            if self.graphs:
                b.graph.replay()
            else:
                b.logits, b.hidden = self._prefill_body(b)
            logits = b.logits
            if b.hidden is not None:
                hidden.append(b.hidden[:n].clone())  # the next chunk's replay overwrites the buffer
        if pos < len(ids):  # the padding would pass the capacity: the rest eagerly, exact length
            rest = (self._invariant_prefill if self.route == "a" else super().prefill)(
                slot, ids[pos:], start + pos, capture=capture)
            logits = rest.logits
            if rest.hidden is not None:
                hidden.append(rest.hidden)
        self.cache.length = start + len(ids)
        return PrefillOutput(logits=logits.clone(), hidden=torch.cat(hidden) if hidden else None)

    @torch.inference_mode()
    def prefill_rows(self, items: list[PrefillItem]) -> list[PrefillOutput]:
        """Several slots' prefills, the short ones in one forward per chunk size (prefill_rows.py)."""
        return prefill_rows(self, items)

    def _invariant_prefill(self, slot: int, ids: list[int], start: int, *, capture: bool = False) -> PrefillOutput:
        """Route a's eager prefill (the tail no chunk's padding fits): the chunks' row-invariant
        forward at the exact length."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, P]
        where = torch.tensor([slot, start, len(ids) - 1], dtype=torch.long, device=self.device)
        out = self.model.forward_rows(x, self.cache, where[0:1], where[1:2], logit_index=where[2:3], row_invariant=True,
                                      capture_layers=self.capture_layers if capture else ())
        return PrefillOutput(logits=out.logits[:, 0], hidden=None if out.hidden is None else out.hidden[0])

    # ---- rounds ---------------------------------------------------------------------------
    @torch.inference_mode()
    def round(self, rows: list[RowWork], verifier: Verifier = verify_chain) -> list[RowResult]:
        if verifier is not verify_chain:  # the tests' negative controls: the reference rules, eagerly
            return eager_round(self, rows, verifier)
        T = self._tokens(max(len(r.tokens) for r in rows))
        greedy = all(r.params.greedy for r in rows)
        key = BucketKey(
            rows=row_bucket(len(rows)), tokens=T, greedy=greedy,
            has_q=not greedy and any(r.q is not None for r in rows),
            filtered=not greedy and any(r.params.top_k > 0 or r.params.top_p < 1.0 for r in rows),
            capture=any(r.capture for r in rows),
            # Rows under a grammar and rows reporting logprobs run in the graphs too: their bits are
            # then those of the forward every other round runs (route a: of their own plain steps),
            # whatever runs beside them. Run eagerly (one forward per row, other kernels), a grammar
            # row put 72 of 72 tokens off their plain steps on the H200 (run 25).
            masked=any(r.mask is not None for r in rows),
            logits=any(r.logits for r in rows),
        )
        b = self._bucket(key)
        self._fill(b, rows)
        self._replay(b)
        b.out_host.copy_(b.packed, non_blocking=True)
        if self.done is not None:
            self.done.record()
            self.done.synchronize()  # THE host sync of the round: (accepted, token) per row
        out = b.out_host.tolist()
        results = []
        for i, r in enumerate(rows):
            n = len(r.tokens)
            result = RowResult(out[i][0], out[i][1], None if b.hidden is None else b.hidden[i, :n])
            if r.logits:  # a copy: the next replay overwrites the buffer
                result.logits = b.raw[i, :n].clone()
            results.append(result)
        return results

    @torch.inference_mode()
    def round_device(self, slot: int, start: int, anchor: int, draft: DeviceDraft, params: SamplingParams,
                     generator: torch.Generator | None) -> tuple[RowResult, list[int]]:
        """A round whose draft never left the device (a drafter's graph): its tokens, q and the
        length to verify are copied into the bucket on the device. The bucket has T = 1 + drafted
        tokens per row; rows past the scheduled length are computed and ignored (the causal mask
        keeps them out of the verified rows). The one host sync reads (accepted, token), the length
        and the draft. Returns the row's result and the verified draft tokens."""
        T = self._tokens(1 + draft.drafted)
        greedy = params.greedy
        key = BucketKey(1, T, greedy, not greedy and draft.probs is not None,
                        not greedy and (params.top_k > 0 or params.top_p < 1.0), True)
        b = self._bucket(key)
        row = RowWork(slot, start, [anchor] + [0] * draft.drafted, params, generator, draft.probs, capture=True)
        self._fill(b, [row])  # slot, start, top-k, the anchor; noise for T-1 slots; q
        b.ids[0, 1 : 1 + draft.drafted].copy_(draft.tokens)  # device to device (exact mode: padding after)
        b.n[:1].copy_(draft.length)
        self._replay(b)
        b.out_host.copy_(b.packed, non_blocking=True)
        b.device_draft_host[0, : T - 1].copy_(b.ids[0, 1:], non_blocking=True)
        b.device_draft_host[0, T - 1 : T].copy_(b.n[:1], non_blocking=True)
        if self.done is not None:
            self.done.record()
            self.done.synchronize()  # THE host sync of the round
        accepted, token = b.out_host[0].tolist()
        report = b.device_draft_host[0].tolist()
        verified = report[T - 1]
        return RowResult(accepted, token, b.hidden[0] if b.hidden is not None else None), report[:verified]

    def _fill(self, b: _Bucket, rows: list[RowWork], noise: bool = True) -> None:
        R, T = b.key.rows, b.key.tokens
        ints = b.ints_host  # safe to overwrite: the last round's copy finished at its sync
        ints.zero_()
        ints[:R] = self.scratch  # padding rows: the scratch slot, position 0, nothing verified
        view = ints.numpy()
        for i, r in enumerate(rows):
            view[i], view[R + i], view[2 * R + i] = r.slot, r.start, len(r.tokens) - 1
            view[3 * R + i] = r.params.top_k
            view[4 * R + i * T : 4 * R + i * T + len(r.tokens)] = r.tokens
        b.ints.copy_(ints, non_blocking=True)
        if b.key.masked:
            self._fill_masks(b, rows)
        if b.key.greedy:
            return
        self._fill_params(b, rows)
        if noise:
            self._fill_noise(b, rows)

    def _fill_masks(self, b: _Bucket, rows: list[RowWork]) -> None:
        """Each row's bitmasks [l+1, W] at its positions; every other position allows every token."""
        host = b.mask_host  # safe to overwrite: the last round's copy finished at its sync
        host.fill_(-1)
        for i, r in enumerate(rows):
            if r.mask is not None:
                host[i, : r.mask.shape[0]] = r.mask
        b.mask.copy_(host, non_blocking=True)

    def _fill_params(self, b: _Bucket, rows: list[RowWork]) -> None:
        R = b.key.rows
        fl = b.floats_host.numpy()
        fl[:] = 1.0
        for i, r in enumerate(rows):
            fl[i], fl[R + i] = r.params.temperature, r.params.top_p
        b.floats.copy_(b.floats_host, non_blocking=True)

    def _fill_noise(self, b: _Bucket, rows: list[RowWork]) -> None:
        for i, r in enumerate(rows):
            l = len(r.tokens) - 1
            # verify_noise's order: the uniforms, then the race, from the row's own generator
            if l:
                b.u[i, :l].uniform_(generator=r.generator)
            b.race[i].exponential_(generator=r.generator).clamp_min_(1e-30)
            if b.q is not None:
                if r.q is not None:
                    b.q[i, :l].copy_(r.q, non_blocking=True)
                else:  # a deterministic draft beside sampled ones: q one-hot at the draft
                    b.q[i].zero_()
                    if l:
                        b.q[i, torch.arange(l, device=self.device), b.ids[i, 1 : l + 1]] = 1.0

    def plain_stream(self, slot: int, start: int, token: int, params: SamplingParams,
                     generator: torch.Generator | None, max_steps: int) -> Iterator[int]:
        """Plain decoding with one step in flight: each replay of the chained bucket reads its input
        token and position from the previous replay's output on the device, so the next step is
        launched before the host has read this one. The host reads step k (the one sync per token)
        while step k+1 runs; when the caller stops early (EOS, a stop string), the step in flight
        wrote K/V past the committed sequence, which nothing reads, and drew its noise after the
        last token used: the output is the same as one step at a time."""
        if not self.graphs:
            yield from super().plain_stream(slot, start, token, params, generator, max_steps)
            return
        with torch.inference_mode():
            key = BucketKey(1, self._tokens(1), params.greedy, False,
                            not params.greedy and (params.top_k > 0 or params.top_p < 1.0), False, chained=True)
            b = self._bucket(key)
            row = [RowWork(slot, start, [token], params, generator)]
            self._fill(b, row, noise=False)  # slot, n = 0, top-k, sampling parameters: fixed for the stream
            b.chain_host[0, 0], b.chain_host[1, 0] = token, start
            b.chain.copy_(b.chain_host, non_blocking=True)
            events = [torch.cuda.Event(), torch.cuda.Event()]

            def launch(k: int) -> None:
                if not key.greedy:
                    self._fill_noise(b, row)
                b.graph.replay()
                b.out_ring[k % 2].copy_(b.packed, non_blocking=True)
                events[k % 2].record()

            launch(0)
            try:
                for k in range(max_steps):
                    if k + 1 < max_steps:
                        launch(k + 1)  # enqueued behind step k: the GPU never waits for the host
                    events[k % 2].synchronize()  # the one host sync per token: step k's result
                    yield int(b.out_ring[k % 2][0, 1])
            finally:
                torch.cuda.current_stream(self.device).synchronize()  # the step in flight, if any

    def round_tokens(self, rows: int, longest: int, total: int) -> int:
        """Every row of a bucket runs the longest row's tokens (route b: max_tokens), padding rows too.
        Integers only, so no inference-mode decorator: entering one cost 1.3 us a call on the CPU,
        and the Θ rule calls this once a candidate (28 a round at 4 rows of 7 drafts)."""
        return row_bucket(rows) * self._tokens(longest)

    def tokens_by_longest(self, rows: int) -> list[int]:
        """``round_tokens`` by the longest row alone: every row of a bucket is padded (ModelRunner's)."""
        bucket = row_bucket(rows)
        return [bucket * self._tokens(t) for t in range(self.max_tokens + 1)]

    def probe_shapes(self, rows: int) -> dict[int, tuple[int, int]]:
        """The row buckets below ``rows`` x 1, 2, 3 and max_tokens per row, and ``rows`` itself x
        every length 1 .. max_tokens (route b: max_tokens only); where two shapes give one B, the
        one with more rows (a round of a full batch is the one the Θ rule prices most). B = 1
        maps to the smallest round (in route b it computes max_tokens). A round's cost follows
        its tokens per row, not only B: at 4 slots (H200, run 38) B = 16 was timed as 2 rows x 8
        tokens, 10% dearer than B = 8 (4 x 2), while k3's rounds of 4 x 4 cost within 1% of k1's 4 x 2,
        and the rule, told that a third draft token cost 10%, verified 0.89 tokens a round against
        k3's 1.69."""
        counts = sorted({b for b in ROW_BUCKETS if b < rows} | {rows})
        fewer = sorted({self._tokens(t) for t in (1, 2, 3, self.max_tokens) if t <= self.max_tokens})
        every = sorted({self._tokens(t) for t in range(1, self.max_tokens + 1)})
        shapes = {self.round_tokens(r, t, r * t): (r, t) for r in counts for t in (every if r == rows else fewer)}
        shapes.setdefault(1, (1, 1))
        return dict(sorted(shapes.items()))

    def probe(self, tokens: int) -> None:
        """A greedy round of ``tokens`` tokens on the scratch slot, as real rounds replay it."""
        b = self._bucket(BucketKey(1, self._tokens(tokens), True, False, False, bool(self.capture_layers)))
        view = b.ints_host.numpy()
        view[:] = 0
        view[0], view[1], view[2] = self.scratch, min(64, self.capacity - tokens), tokens - 1
        b.ints.copy_(b.ints_host, non_blocking=True)
        self._replay(b)
        self.sync()
