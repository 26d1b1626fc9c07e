"""Eagle3Drafter: an EAGLE-3-style model (one autoregressive layer) behind the Drafter interface.

Pairing (deepspec-format.md §1.4, §4.4): the target feature at position i goes with the token at
i+1, at RoPE position i. ``observe`` gets the features of a forward before the next token is known
(after a verify, the last observed position is the one before the new anchor), so it only keeps
them, fused by ``fc``, in a per-position buffer. ``propose(tokens)`` then pairs every position not
yet paired, [committed, anchor), with tokens[i+1] (the last pair is (feature before the anchor,
anchor)), and writes their K/V into the drafter's own cache: the committed part. One causal pass
with only the last row's output suffices (one layer: K/V depend on their own inputs only). From
that last output it drafts: logits -> q (the request's sampling params) -> token, then feeds
(previous output, token) at the next position. Drafted K/V are written after the committed part
and overwritten next round; only ``committed`` counts.

Multi-turn: ``start`` matches the new prompt against the tokens of the held positions (the last
proposal's tokens plus the drafts the verifier accepted, from ``feedback``) and keeps the features
and pairs that still hold; the prefill's ``observe`` overwrites the rest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sampling import SamplingParams, draw
from .base import DeviceDraft, DeviceSchedule, Draft, Drafter
from .eagle3_graph import Eagle3DeviceDrafting
from .eagle3_model import Eagle3Model

TRASH_ROWS = 64  # device path: the most rows of one round (max_draft + 1) its trash positions hold


class Eagle3Drafter(Drafter):
    def __init__(self, model: Eagle3Model, capacity: int = 4096) -> None:
        cfg = model.cfg
        self.model = model.eval()
        self.name = "eagle3"
        self.capture_layers = tuple(cfg.target_layer_ids)
        self.capacity = min(capacity, cfg.max_position_embeddings)
        dev, dt = model.fc.weight.device, model.fc.weight.dtype
        pad = TRASH_ROWS + cfg.block_size  # positions past the capacity: the device path's trash
        shape = (1, cfg.num_kv_heads, self.capacity + pad, cfg.head_dim)
        self.keys = torch.zeros(shape, device=dev, dtype=dt)  # [1, Hkv, cap+pad, D], the single layer's
        self.values = torch.zeros(shape, device=dev, dtype=dt)
        self.features = torch.zeros(self.capacity + pad, cfg.hidden_size, device=dev, dtype=dt)  # [cap+pad, H] fc(target)
        self.length = 0  # positions [0, length) hold fused target features
        self.committed = 0  # positions [0, committed) hold paired K/V (feature i with token i+1)
        self.last_hidden: Tensor | None = None  # [1, 1, H] layer output at committed-1
        self.seen: list[int] = []  # the tokens at the held positions (as far as known)
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None
        self._drafted: Tensor | None = None  # [g] the last proposal
        self._reusable = 0
        self.device_drafting: Eagle3DeviceDrafting | None = None  # set by bind_device (a CUDA graph runner)

    def bind_device(self, features: Tensor, schedule: DeviceSchedule, *, graphs: bool = True) -> bool:
        if (self.keys.device.type != "cuda" and graphs) or features.shape[0] > TRASH_ROWS:
            return False
        self.device_drafting = Eagle3DeviceDrafting(self.model, self.keys, self.values, self.features, features,
                                                    schedule, self.capacity, graphs=graphs)
        return True

    def observe_round(self, start: int, count: int) -> None:
        """Device path: the features of [start, start+count) are rows of the bound buffer."""
        if self.device_drafting is None:
            return
        if start > self.length:  # a gap, as in observe
            self.length = self.committed = 0
            self.last_hidden = None
            return
        end = min(start + count, self.capacity)
        if end <= start:
            return
        self.device_drafting.observe(start, end - start)
        self.length = end
        if self.committed > start:
            self.committed, self.last_hidden = start, None

    def sibling(self) -> Eagle3Drafter:
        return Eagle3Drafter(self.model, self.capacity)

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        self.params, self.generator = params, generator
        held = self.seen[: self.length]
        n, limit = 0, min(len(held), len(prompt_ids))
        while n < limit and held[n] == prompt_ids[n]:
            n += 1
        self.length = n  # features of positions [0, n) depend on matching tokens only
        pairs = max(n - 1, 0)  # a pair at i also needs token i+1 to match
        if self.committed > pairs:
            self.committed, self.last_hidden = pairs, None
        self.seen = list(prompt_ids)  # the prefill brings the features of the rest of the prompt
        self._drafted = None
        self._reusable = n

    def reusable_context(self) -> int:
        return self._reusable

    @torch.inference_mode()
    def observe(self, hidden: Tensor, start: int) -> None:
        """Target features [T, m*H] of positions [start, start+T) -> fused, kept until paired."""
        if start > self.length:  # a gap: what we hold no longer lines up; draft nothing until refilled
            self.length = self.committed = 0
            self.last_hidden = None
            return
        end = min(start + hidden.shape[0], self.capacity)
        if end <= start:
            return
        self.features[start:end] = self.model.fuse_features(hidden[None, : end - start])[0]
        self.length = end
        if self.committed > start:
            self.committed, self.last_hidden = start, None

    def feedback(self, verified: int, accepted: int) -> None:
        # The accepted drafts are the tokens of the positions the next observe brings (multi-turn
        # reuse). On the device path they would need a host read: the next propose records them
        # anyway (``seen = tokens``), so only a session's last round is not kept for reuse.
        if accepted and self._drafted is not None and self.device_drafting is None and len(self.seen) == self.length + 1:
            self.seen = self.seen + self._drafted[:accepted].tolist()
        self._drafted = None

    @torch.inference_mode()
    def propose(self, tokens: list[int], max_tokens: int) -> Draft | DeviceDraft:
        cfg, model = self.model.cfg, self.model
        anchor_pos = len(tokens) - 1
        device = self.keys.device
        room = min(max_tokens, cfg.block_size, self.capacity - anchor_pos + 1, model.rope_cos.shape[0] - anchor_pos + 1)
        if room <= 0 or anchor_pos < 1 or self.length != anchor_pos:  # no room, or features missing
            return Draft.empty(device)
        # Pair what is not paired yet: features [lo, anchor) with tokens [lo+1, anchor].
        lo = self.committed
        span = anchor_pos - min(lo, anchor_pos - 1)
        if self.device_drafting is not None and span <= self.device_drafting.rows:
            # the graphs: a round's new pairs (re-pairing the last one if nothing is new), then the draft
            lo = min(lo, anchor_pos - 1)
            self.seen = list(tokens)
            draft = self.device_drafting.propose(tokens, lo, room, self.params, self.generator)
            self.committed, self.last_hidden = anchor_pos, None
            self._drafted = None
            return draft
        if lo == anchor_pos and (self.last_hidden is None or self.seen[anchor_pos : anchor_pos + 1] != tokens[-1:]):
            lo -= 1  # the last pair is missing its output, or was made with another anchor
        self.seen = list(tokens)
        if lo < anchor_pos:
            g = self.features[lo:anchor_pos][None]  # [1, T, H]
            e = model.embed(torch.tensor([tokens[lo + 1 :]], dtype=torch.long, device=device))  # [1, T, H]
            positions = torch.arange(lo, anchor_pos, device=device)[None]  # [1, T]
            out, k, v = model.step(e, g, positions, self.keys[:, :, :lo], self.values[:, :, :lo], last_only=True)
            self.keys[:, :, lo:anchor_pos] = k
            self.values[:, :, lo:anchor_pos] = v
            self.committed, self.last_hidden = anchor_pos, out  # out [1, 1, H]
        # Draft autoregressively from the last committed output.
        g, pos = self.last_hidden, anchor_pos
        out_tokens, out_probs = [], []
        for step in range(room):
            # In the draft vocabulary (same q as over V with -inf outside it); greedy: q = None.
            pick, q = draw(model.logits(g[0, -1]).float()[None], self.params, self.generator)  # [1], [1, Vd] | None
            if q is not None:
                out_probs.append(q)
            token = model.draft_to_target(pick[0])
            out_tokens.append(token)
            if step + 1 == room:
                break
            e = model.embed(token.view(1, 1))  # [1, 1, H]
            positions = torch.tensor([[pos]], device=device)
            g, k, v = model.step(e, g, positions, self.keys[:, :, :pos], self.values[:, :, :pos])
            self.keys[:, :, pos : pos + 1] = k  # scratch: overwritten by the next round's pairs
            self.values[:, :, pos : pos + 1] = v
            pos += 1
        drafted = torch.stack(out_tokens)  # [g]
        self._drafted = drafted
        q = model.to_target_vocab(torch.cat(out_probs), fill=0.0) if out_probs else None  # [g, V]
        return Draft(tokens=drafted, probs=q, confidences=None)
