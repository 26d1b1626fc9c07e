"""DSparkDrafter: a DSpark (or DFlash) model behind the Drafter interface.

The drafter keeps its own small KV cache: per draft layer, the projected keys/values of the
context features of every committed position. The engine hands it the target's hidden states
from each forward it already makes (prefill, verify) through ``observe``; they are written at
their positions, which is also the rollback (a verify observes only x0 and the accepted tokens,
so the cache ends right before the next anchor). ``propose`` runs one block forward and the
Markov head's left-to-right sampling; ``propose_rows`` one block forward for the drafts of many
requests at once (the batched engine). Nothing of the block itself is cached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..calibration import ConfidenceRound
from ..sampling import SamplingParams, draw
from .base import DeviceDraft, DeviceSchedule, Draft, Drafter
from .dspark_graph import DSparkDeviceDrafting
from .dspark_model import DSparkModel


class DSparkDrafter(Drafter):
    PENDING_LIMIT = 256  # observe_later keeps at most this many positions before it writes them

    def __init__(self, model: DSparkModel, capacity: int = 4096) -> None:
        cfg = model.cfg
        self.model = model.eval()
        self.name = cfg.method
        self.capture_layers = tuple(cfg.target_layer_ids)
        self.capacity = min(capacity, cfg.max_position_embeddings)
        dev, dt = model.fc.weight.device, model.fc.weight.dtype
        # B positions past the capacity: scratch for the device path's parked writes (dspark_graph.py)
        shape = (cfg.num_layers, 1, cfg.num_kv_heads, self.capacity + cfg.block_size, cfg.head_dim)
        self.keys = torch.zeros(shape, device=dev, dtype=dt)  # [L, 1, Hkv, cap+B, D]
        self.values = torch.zeros(shape, device=dev, dtype=dt)
        self.length = 0  # positions [0, length) hold context K/V
        self.seen: list[int] = []  # the tokens at those positions (as of the last propose)
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None
        self._reusable = 0
        # Set to a list to record every round's raw confidence logits and outcome (calibration, eval).
        self.recording: list[ConfidenceRound] | None = None
        self._last_logits: Tensor | None = None
        mask_id = cfg.mask_token_id
        self._mask_tail = torch.full((cfg.block_size - 1,), mask_id, dtype=torch.long, device=dev)  # [B-1]
        self._offsets = torch.arange(cfg.block_size, device=dev)  # [B]
        self.device_drafting: DSparkDeviceDrafting | None = None  # set by bind_device (a CUDA graph runner)
        # observe_later's features not yet turned into K/V: [T_i, m*H] each, of the contiguous
        # positions [_pending_start, length); written by _flush before anything reads the cache
        self._pending: list[Tensor] = []
        self._pending_start = 0

    def bind_device(self, features: Tensor, schedule: DeviceSchedule, *, graphs: bool = True) -> bool:
        if self.keys.device.type != "cuda" and graphs:
            return False
        self.device_drafting = DSparkDeviceDrafting(self.model, self.keys, self.values, features, schedule, graphs=graphs)
        return True

    def observe_round(self, start: int, count: int) -> None:
        end = min(start + count, self.capacity)
        if self.device_drafting is None or end <= start:
            return
        self._flush()
        self.device_drafting.observe(start, end - start)
        self.length = end

    def sibling(self) -> DSparkDrafter:
        return DSparkDrafter(self.model, self.capacity)

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        self.params, self.generator = params, generator
        held = self.seen[: self.length]
        n, limit = 0, min(len(held), len(prompt_ids))
        while n < limit and held[n] == prompt_ids[n]:
            n += 1
        self._reusable = n

    def reusable_context(self) -> int:
        return self._reusable

    def feedback(self, verified: int, accepted: int) -> None:
        logits = self._last_logits if self.device_drafting is None else getattr(self, "_device_conf", None)
        if self.recording is not None and logits is not None and verified:
            # a host sync on the device path: recording is for evaluation and calibration runs only
            self.recording.append(ConfidenceRound(tuple(logits[:verified].tolist()), accepted))
        self._last_logits = self._device_conf = None

    def track(self, tokens: list[int]) -> None:
        # features of every position before the anchor; more when a stop (EOS, a stop string) cut
        # the last round's accepted block short, whose features past the cut are of drafts the
        # sequence does not hold: the record stops at the anchor, so no reuse reaches them
        if self.length >= len(tokens) - 1:
            self.seen = tokens[: len(tokens) - 1]

    @torch.inference_mode()
    def observe(self, hidden: Tensor, start: int) -> None:
        """Target features [T, m*H] of positions [start, start+T) -> context K/V at those positions."""
        self._flush()
        self._write(hidden, start)

    @torch.inference_mode()
    def observe_later(self, hidden: Tensor, start: int, *, owned: bool = False) -> None:
        """``observe`` deferred to the next draft (or read of the cache): in a batch round that did
        not draft (the adaptive schedule's plain rounds), the eager K/V projection cost about 0.7
        ms a row on the H200 (run 29), for features no draft may ever need before the next
        one. Only contiguous positions are kept; anything else writes what is pending first."""
        end = min(start + hidden.shape[0], self.capacity)
        if end <= start:
            return
        if self._pending and start != self.length:
            self._flush()
        if not self._pending:
            self._pending_start = start
        piece = hidden[: end - start]
        self._pending.append(piece if owned else piece.clone())  # the runner's buffer is the next round's
        self.length = end
        if end - self._pending_start >= self.PENDING_LIMIT:
            self._flush()

    def _flush(self) -> None:
        DSparkDrafter._flush_rows([self])

    def _write(self, hidden: Tensor, start: int) -> None:
        end = min(start + hidden.shape[0], self.capacity)
        if end > start:
            DSparkDrafter._write_pieces(self.model, [(self, hidden[: end - start], start)])

    @staticmethod
    def _flush_rows(drafters: list[DSparkDrafter]) -> None:
        """Every drafter's pending features (observe_later) written, all in one projection
        (siblings over one model: ``propose_rows`` checks)."""
        waiting = [d for d in drafters if d._pending]
        if not waiting:
            return
        pieces = [(d, torch.cat(d._pending), d._pending_start) for d in waiting]
        for d in waiting:
            d._pending = []
        DSparkDrafter._write_pieces(waiting[0].model, pieces)

    @staticmethod
    def _write_pieces(model: DSparkModel, pieces: list[tuple[DSparkDrafter, Tensor, int]]) -> None:
        """(drafter, features [T, m*H], start) pieces -> context K/V at positions [start, start+T)
        of each drafter's cache (inside its capacity), through one projection: it is per position,
        so the pieces' positions go through it together and each drafter gets its own slice back."""
        hidden = torch.cat([x for _, x, _ in pieces])[None]  # [1, sum T, m*H]
        positions = torch.cat([torch.arange(start, start + x.shape[0]) for _, x, start in pieces])
        context = model.fuse_context(hidden)  # [1, sum T, H]
        kv = model.context_kv(context, positions.to(context.device)[None])  # per layer [1, Hkv, sum T, D]
        at = 0
        for d, x, start in pieces:
            T = x.shape[0]
            for layer, (k, v) in enumerate(kv):
                d.keys[layer, :, :, start : start + T] = k[:, :, at : at + T]
                d.values[layer, :, :, start : start + T] = v[:, :, at : at + T]
            at += T
            d.length = start + T

    def _can_draft(self, tokens: list[int], max_tokens: int) -> int:
        """How many tokens a draft after ``tokens`` may hold (0: no room, or features missing)."""
        cfg = self.model.cfg
        anchor_pos = len(tokens) - 1
        room = min(max_tokens, cfg.block_size)
        fits = anchor_pos < self.capacity and anchor_pos + cfg.block_size <= self.model.rope_cos.shape[0]
        return room if room > 0 and fits and self.length == anchor_pos else 0

    @torch.inference_mode()
    def propose(self, tokens: list[int], max_tokens: int) -> Draft | DeviceDraft:
        cfg, model = self.model.cfg, self.model
        anchor_pos = len(tokens) - 1
        self._last_logits = None
        self._flush()
        device = self.keys.device
        room = self._can_draft(tokens, max_tokens)
        if not room:
            return Draft.empty(device)
        self.seen = tokens[:anchor_pos]
        if self.device_drafting is not None:  # the graph: tokens, q and the length stay on the device
            draft = self.device_drafting.propose(tokens[-1], anchor_pos, room, self.params, self.generator)
            self._device_conf = self.device_drafting.last_conf_logits
            return draft
        anchor = torch.tensor([tokens[-1]], dtype=torch.long, device=device)
        block = torch.cat([anchor, self._mask_tail])[None]  # [1, B]
        positions = (anchor_pos + self._offsets)[None]  # [1, B]
        ctx = [(self.keys[i, :, :, :anchor_pos], self.values[i, :, :, :anchor_pos]) for i in range(cfg.num_layers)]
        h = model.block_hidden(block, positions, ctx, None)[0, :room]  # [g, H]
        return self._sample_block(anchor[0], h, model.base_logits(h).float())

    @staticmethod
    @torch.inference_mode()
    def propose_rows(drafters: list[DSparkDrafter], tokens: list[list[int]], rooms: list[int]) -> list[Draft]:
        """One block forward for the drafts of several requests (the batched engine's rows), each
        drafter a sibling over the same model with its own context cache: row r's block [anchor,
        MASK x (B-1)] at its own positions attends to its own context (padded to the longest, the
        rest masked) and its whole block. The Markov head then samples each row as ``propose``
        does, with the row's own parameters and generator; greedy rows (no generator to keep
        apart) go through it together, slot by slot, in one pass for all of them (the per-row
        passes cost ~1.2 ms a row on the H200 at 16 rows, run 29). Pending features
        (``observe_later``) are written first, all rows in one projection. A row that cannot
        draft gets an empty draft; with fewer than two rows that can, each drafts alone."""
        if any(d.model is not drafters[0].model for d in drafters):  # siblings of different models
            return Drafter.propose_rows(drafters, tokens, rooms)
        drafts: list[Draft | None] = [None] * len(drafters)
        live = []
        DSparkDrafter._flush_rows(drafters)
        for i, (d, toks, room) in enumerate(zip(drafters, tokens, rooms)):
            d._last_logits = None
            room = d._can_draft(toks, room) if d.device_drafting is None else 0
            if room:
                live.append((i, room))
            elif d.device_drafting is not None:
                drafts[i] = d.propose(toks, rooms[i])
            else:
                drafts[i] = Draft.empty(d.keys.device)
        if len(live) < 2:
            for i, _ in live:
                drafts[i] = drafters[i].propose(tokens[i], rooms[i])
            return drafts
        first = drafters[live[0][0]]
        model, cfg, device = first.model, first.model.cfg, first.keys.device
        B = cfg.block_size
        anchors = [len(tokens[i]) - 1 for i, _ in live]  # each row's anchor position
        S = max(anchors)
        block = torch.tensor([[tokens[i][-1]] for i, _ in live], device=device)  # [R, 1]: the anchors
        block = torch.cat([block, first._mask_tail.expand(len(live), -1)], dim=1)  # [R, B]
        positions = torch.tensor(anchors, device=device)[:, None] + first._offsets  # [R, B]
        ctx = [(torch.cat([drafters[i].keys[layer, :, :, :S] for i, _ in live]),
                torch.cat([drafters[i].values[layer, :, :, :S] for i, _ in live]))
               for layer in range(cfg.num_layers)]  # per layer [R, Hkv, S, D]
        seen = torch.arange(S + B, device=device)[None, :] < torch.tensor(anchors, device=device)[:, None]
        seen[:, S:] = True  # the whole block
        mask = seen[:, None, None, :].expand(len(live), 1, B, S + B)  # [R, 1, B, S+B]
        h = model.block_hidden(block, positions, ctx, mask)  # [R, B, H]
        base = model.base_logits(h).float()  # [R, B, Vd]
        greedy = [r for r, (i, _) in enumerate(live) if drafters[i].params.greedy]
        if len(greedy) > 1:  # one Markov pass over all greedy rows: no generator, so nothing is per row
            g = max(live[r][1] for r in greedy)
            rows = torch.tensor(greedy, device=device)
            tokens_out, conf = first._greedy_rows(block[rows, 0], h[rows, :g], base[rows, :g])  # [G, g] each
            # on the host in one copy each: the schedule reads every row's confidences, the verify its tokens
            tokens_out, calibrated = tokens_out.cpu(), None if conf is None else first._calibrated(conf).cpu()
            for k, r in enumerate(greedy):
                i, room = live[r]
                d = drafters[i]
                d.seen = tokens[i][: anchors[r]]
                if conf is not None:
                    d._last_logits = conf[k, :room]
                drafts[i] = Draft(tokens=tokens_out[k, :room],
                                  confidences=None if calibrated is None else calibrated[k, :room])
        for r, (i, room) in enumerate(live):
            if drafts[i] is not None:
                continue
            d = drafters[i]
            d.seen = tokens[i][: anchors[r]]
            drafts[i] = d._sample_block(block[r, 0], h[r, :room], base[r, :room])
        return drafts

    def _greedy_rows(self, anchors: Tensor, h: Tensor, base: Tensor) -> tuple[Tensor, Tensor | None]:
        """Greedy drafts of G rows at once: anchors [G], h [G, g, H], base [G, g, Vd] -> target ids
        [G, g] and raw confidence logits [G, g] (None without a head): ``_sample_block`` with every
        row's argmax taken together, slot by slot."""
        model = self.model
        if model.markov_head is None:  # DFlash
            picks, prev_feats = base.argmax(dim=-1), None  # [G, g]
        else:
            prev, state, picks, feats = anchors, None, [], []
            for k in range(h.shape[1]):
                e_prev = model.markov_head.prev_features(prev)  # [G, r]
                bias, state = model.markov_head.step(e_prev, h[:, k], state)  # [G, Vd]
                pick = (base[:, k] + bias.float()).argmax(dim=-1)  # [G]
                prev = model.draft_to_target(pick)
                picks.append(pick)
                feats.append(e_prev)
            picks, prev_feats = torch.stack(picks, dim=1), torch.stack(feats, dim=1)  # [G, g], [G, g, r]
        head = model.confidence_head
        logits = None if head is None else head(h, prev_feats).float()  # [G, g]
        return model.draft_to_target(picks), logits

    def _calibrated(self, logits: Tensor) -> Tensor:
        """Raw confidence logits [..., g] -> c_k = sigmoid(logit_k / T_k)."""
        return torch.sigmoid(logits / self.model.confidence_temperatures[: logits.shape[-1]])

    def _sample_block(self, anchor: Tensor, h: Tensor, base: Tensor) -> Draft:
        """A block's hidden states h [g, H] and base logits [g, Vd] -> the draft: the Markov head's
        left-to-right sampling from the anchor (DSpark), or every slot on its own (DFlash)."""
        model = self.model
        # Work in the draft vocabulary and map to target ids at the end: softmax, top-k and top-p
        # over Vd logits give the same q as over V logits with -inf outside Vd, at a fraction of
        # the cost. Greedy drafts are deterministic (q = None, one-hot at the token).
        if model.markov_head is None:  # DFlash: every slot independent
            picked, q = draw(base, self.params, self.generator)  # [g] draft-vocab indices, [g, Vd] | None
            return self._draft(picked, q, self._confidences(h, None))
        # DSpark: left to right from the anchor, each slot biased by the token before it.
        prev, state = anchor, None
        picks, probs, prev_feats = [], [], []
        for k in range(h.shape[0]):
            e_prev = model.markov_head.prev_features(prev)  # [r]
            bias, state = model.markov_head.step(e_prev, h[k], state)
            pick, q_k = draw((base[k] + bias.float())[None], self.params, self.generator)  # [1], [1, Vd] | None
            if q_k is not None:
                probs.append(q_k)
            prev = model.draft_to_target(pick[0])
            picks.append(pick[0])
            prev_feats.append(e_prev)
        q = torch.cat(probs) if probs else None  # [g, Vd]
        return self._draft(torch.stack(picks), q, self._confidences(h, prev_feats))

    def _draft(self, picks: Tensor, q: Tensor | None, confidences: Tensor | None) -> Draft:
        """Draft-vocabulary picks [g] and q [g, Vd] (None when greedy) -> a Draft over target ids."""
        model = self.model
        return Draft(tokens=model.draft_to_target(picks), probs=None if q is None else model.to_target_vocab(q, fill=0.0),
                     confidences=confidences)

    def _confidences(self, h: Tensor, prev_feats: list[Tensor] | None) -> Tensor | None:
        """c_k [g] = sigmoid(logit_k / T_k) from the confidence head (None without one)."""
        head = self.model.confidence_head
        if head is None:
            return None
        e_prev = torch.stack(prev_feats) if prev_feats is not None else None  # [g, r]
        logits = head(h, e_prev).float()  # [g]
        self._last_logits = logits
        return self._calibrated(logits)
