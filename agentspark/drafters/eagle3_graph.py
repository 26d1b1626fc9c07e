"""Eagle3DeviceDrafting: an EAGLE-3 drafter's observe and propose as CUDA graphs.

Fixed shapes, positions as device values (the same scheme as dspark_graph.py):

- observe: the last round's target features (rows [0, count) of the runner's features buffer)
  are fused by ``fc`` and written at positions start + row; rows past count go to trash positions.
- propose: pair the positions [lo, anchor) not paired yet (up to Tmax of them, the rest padding),
  feature i with token i+1, in one causal pass whose K/V are written at lo + row; take the output of
  the last real pair; then draft B tokens autoregressively, each step one row attending to the
  cache up to its own position (kernels/decode_attention.py). The draft, its q (sampled) and the
  length (room: EAGLE-3 has no confidence head) stay on the device.

A proposal whose pairing span is longer than Tmax (the first one after a prefill pairs the whole
prompt) runs eagerly (``Eagle3Drafter``'s own path) and the graphs take over from the next round.
Padding rows' K/V land at positions at or past the anchor: the drafted steps overwrite them, and
nothing before the next anchor is ever read from there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.decode_attention import decode_attention
from ..model.layers import apply_rope
from ..sampling import SamplingParams, probs_rows
from .base import DeviceDraft, DeviceSchedule
from .eagle3_model import Eagle3Model
from .graphed import GraphedDrafting, parked


class Eagle3DeviceDrafting(GraphedDrafting):
    """Owned by an Eagle3Drafter on CUDA; shares its cache (keys/values [1, Hkv, cap+pad, D]) and its
    fused-feature buffer [cap+pad, H]."""

    def __init__(self, model: Eagle3Model, keys: Tensor, values: Tensor, fused: Tensor, features: Tensor,
                 schedule: DeviceSchedule, capacity: int, *, graphs: bool = True) -> None:
        cfg = model.cfg
        R = features.shape[0]  # Tmax: rows of one round's features, and the pairing span
        # propose inputs [lo | pairs | anchor | top-k | tokens lo+1.. (R)]
        super().__init__(keys.device, 4 + R, cfg.block_size, cfg.draft_vocab_size, graphs=graphs)
        self.model, self.keys, self.values, self.fused, self.features = model, keys, values, fused, features
        self.schedule, self.rows = schedule, R
        self.trash = capacity  # positions [capacity, capacity + pad) are written, never read
        self.rows_idx = torch.arange(R, device=keys.device)
        self.zero_slot = torch.zeros(1, dtype=torch.long, device=keys.device)
        self._lengths = torch.arange(cfg.block_size + 1, device=keys.device)  # room -> [1] without a copy

    # ---- one layer pass over rows at device positions ----------------------------------------
    def _layer(self, e: Tensor, g: Tensor, positions: Tensor, write_at: Tensor, start: Tensor) -> Tensor:
        """e, g [1, T, H] at RoPE positions [T]; K/V written at write_at [T]; row t attends to the
        cache [0, start + t] (causal) -> the layer's output [1, T, H] (pre-norm)."""
        model, cfg = self.model, self.model.cfg
        layer, attn = model.layer, model.layer.self_attn
        T, D, Hq = e.shape[1], cfg.head_dim, cfg.num_heads
        cos, sin = model.rope(positions.clamp(max=model.rope_cos.shape[0] - 1)[None], g.dtype)  # [1, T, 1, D]
        x = torch.cat([layer.input_layernorm(e), layer.hidden_norm(g)], dim=-1)  # [1, T, 2H]
        k, v = attn.keys_values(x, cos, sin)  # [1, Hkv, T, D]
        self.keys[0].index_copy_(1, write_at, k[0])
        self.values[0].index_copy_(1, write_at, v[0])
        q = apply_rope(attn.q_norm(attn.q_proj(x).view(1, T, Hq, D)), cos, sin)  # [1, T, Hq, D]
        out = decode_attention(q.contiguous(), self.keys, self.values, self.zero_slot, start)  # [1, T, Hq, D]
        h = g + attn.o_proj(out.reshape(1, T, Hq * D))
        return h + layer.mlp(layer.post_attention_layernorm(h))

    # ---- the bodies -----------------------------------------------------------------------
    def _observe_body(self) -> None:
        start, count = self.o_ints[0], self.o_ints[1]
        positions = torch.where(self.rows_idx < count, start + self.rows_idx, self.trash + self.rows_idx)  # [R]
        self.fused.index_copy_(0, positions, self.model.fuse_features(self.features[None])[0])

    def _propose_body(self, greedy: bool, filtered: bool) -> tuple[Tensor, Tensor | None]:
        model, cfg = self.model, self.model.cfg
        B = cfg.block_size
        lo, pairs, anchor = self.p_ints[0:1], self.p_ints[1:2], self.p_ints[2]
        top_k, tokens = self.p_ints[3:4], self.p_ints[4:]  # tokens [R]: those at lo+1 .. lo+pairs
        real = self.rows_idx < pairs  # [R]
        positions = lo + self.rows_idx  # [R] RoPE positions of the pairs
        write_at = torch.where(real, positions, self.trash + self.rows_idx)
        g = self.fused.index_select(0, write_at)[None]  # [1, R, H] features at lo.. (padding: trash rows)
        e = model.embed(tokens[None])  # [1, R, H]
        out = self._layer(e, g, positions, write_at, lo)  # [1, R, H]
        g = out[:, (pairs - 1).clamp(min=0)]  # [1, 1, H] the last real pair's output
        temperature, top_p = self.floats[0:1], self.floats[1:2]
        picks, qs = [], []
        for k in range(B):
            logits = model.logits(g[0, -1]).float()  # [Vd]
            if greedy:
                pick, q = logits.argmax().view(1), None
            else:
                q = probs_rows(logits[None, None], temperature, top_k, top_p, filtered=filtered)[0, 0]
                pick = (q / self.race[k]).argmax().view(1)
            picks.append(pick)
            qs.append(q)
            if k + 1 == B:
                break
            token = model.draft_vocab_ids.index_select(0, pick) if model.reduced_vocab else pick  # [1]
            pos = (anchor + k).view(1)  # the step at position anchor + k reads (its g, the token at +1)
            g = self._layer(model.embed(token[None]), g, pos, pos, pos)
        picks_t = torch.cat(picks)  # [B]
        probs = None if greedy else model.to_target_vocab(torch.stack(qs), fill=0.0)  # [B, V]
        return model.draft_to_target(picks_t), probs

    def _park(self) -> None:
        parked(self.o_ints, [self.trash, 0])
        parked(self.p_ints, [self.trash, 0, self.trash])

    @torch.inference_mode()
    def propose(self, tokens: list[int], lo: int, room: int, params: SamplingParams,
                generator: torch.Generator | None) -> DeviceDraft:
        """Pairs [lo, anchor) with tokens[lo+1 .. anchor] (anchor - lo <= Tmax), then drafts."""
        anchor = len(tokens) - 1
        pairs = anchor - lo
        host = self.p_ints_host.numpy()
        host[:] = 0
        host[0], host[1], host[2], host[3] = lo, pairs, anchor, params.top_k
        host[4 : 4 + pairs] = tokens[lo + 1 : anchor + 1]
        draft_tokens, probs = self._run_propose(params, generator)
        # no confidence head: verify the whole draft (the length, from a table made once)
        return DeviceDraft(tokens=draft_tokens[:room], length=self._lengths[room : room + 1],
                           probs=None if probs is None else probs[:room], drafted=room)
