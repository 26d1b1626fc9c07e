"""DSparkDeviceDrafting: a DSpark/DFlash drafter's observe and propose as CUDA graphs.

Two graphs per drafter, fixed shapes, every position a device value:

- observe: the target features of the last round (the runner leaves them in a bound buffer
  [Tmax, m*H]) -> fused context -> each draft layer's K/V, written at positions start + row for
  row < count; rows past count go to a trash position that nothing reads.
- propose: the block [anchor, MASK x (B-1)] at positions anchor + [0, B): its K/V are written into
  the drafter's cache after the context, attention reads [0, anchor + B) with no causal mask
  (kernels/decode_attention.py, causal=False), then the base logits, the Markov head left to right
  (its picks drawn with noise the host enqueued before the replay), the confidences, and the
  engine's schedule (scheduler.device_length). Out: tokens [B], q [B, V] when sampling, length [1].

The block's K/V overwrite context positions [anchor, anchor + B): those hold either nothing yet or
rejected drafts' features, and the next observe rewrites every position the next block attends to.
Nothing in either graph reads the host; the host writes a few ints into pinned buffers and
replays. The engine reads the draft with the round's one host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.decode_attention import decode_attention
from ..model.layers import apply_rope
from ..sampling import SamplingParams, probs_rows
from ..scheduler import device_length
from .base import DeviceDraft, DeviceSchedule
from .dspark_model import DSparkModel
from .graphed import GraphedDrafting, parked


class DSparkDeviceDrafting(GraphedDrafting):
    """Owned by a DSparkDrafter on CUDA; shares its context cache (keys/values [L, 1, Hkv, cap+B, D])."""

    def __init__(self, model: DSparkModel, keys: Tensor, values: Tensor, features: Tensor,
                 schedule: DeviceSchedule, *, graphs: bool = True) -> None:
        cfg = model.cfg
        B = cfg.block_size
        # propose inputs [anchor | anchor position | room | top-k]
        super().__init__(keys.device, 4, B, cfg.draft_vocab_size, graphs=graphs)
        self.model, self.keys, self.values, self.features, self.schedule = model, keys, values, features, schedule
        # The cache holds capacity + B positions: the last B are trash (rows past ``count``, and the
        # warm-up replays of a capture, are written there and never read).
        self.trash = keys.shape[3] - B
        self.mask_tail = torch.full((B - 1,), cfg.mask_token_id, dtype=torch.long, device=keys.device)
        self.offsets = torch.arange(B, device=keys.device)
        self.zero_slot = torch.zeros(1, dtype=torch.long, device=keys.device)
        self.last_conf_logits: Tensor | None = None

    # ---- the bodies (what the graphs hold) --------------------------------------------------
    def _observe_body(self) -> None:
        model = self.model
        rows = torch.arange(self.features.shape[0], device=self.keys.device)
        start, count = self.o_ints[0], self.o_ints[1]
        positions = torch.where(rows < count, start + rows, self.trash)  # [Tmax]
        context = model.fuse_context(self.features[None])  # [1, Tmax, H]
        for i, (k, v) in enumerate(model.context_kv(context, positions.clamp(max=model.rope_cos.shape[0] - 1)[None])):
            self.keys[i, 0].index_copy_(1, positions, k[0])  # [Hkv, Tmax, D] at their positions
            self.values[i, 0].index_copy_(1, positions, v[0])

    def _propose_body(self, greedy: bool, filtered: bool) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        model, cfg = self.model, self.model.cfg
        B, D, Hq = cfg.block_size, cfg.head_dim, cfg.num_heads
        anchor, anchor_pos, room = self.p_ints[0:1], self.p_ints[1:2], self.p_ints[2:3]
        block = torch.cat([anchor, self.mask_tail])  # [B]
        positions = anchor_pos + self.offsets  # [B]
        x = model.embed_tokens(block[None], model.fc.weight.dtype)  # [1, B, H]
        cos, sin = model.rope(positions.clamp(max=model.rope_cos.shape[0] - 1)[None], x.dtype)  # [1, B, 1, D]
        for i, layer in enumerate(model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = apply_rope(attn.q_norm(attn.q_proj(h).view(1, B, Hq, D)), cos, sin)  # [1, B, Hq, D]
            k, v = attn.keys_values(h, cos, sin)  # [1, Hkv, B, D]
            self.keys[i, 0].index_copy_(1, positions, k[0])
            self.values[i, 0].index_copy_(1, positions, v[0])
            out = decode_attention(q.contiguous(), self.keys[i], self.values[i], self.zero_slot, anchor_pos,
                                   causal=False)  # [1, B, Hq, D]: context [0, anchor) and the whole block
            x = x + attn.o_proj(out.reshape(1, B, Hq * D))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = model.norm(x)[0]  # [B, H]
        base = model.base_logits(hidden).float()  # [B, Vd]
        temperature, top_p, top_k = self.floats[0:1], self.floats[1:2], self.p_ints[3:4]

        def pick(logits: Tensor, k: int) -> tuple[Tensor, Tensor | None]:  # logits [Vd] -> index [1], q [Vd]
            if greedy:
                return logits.argmax().view(1), None
            q = probs_rows(logits[None, None], temperature, top_k, top_p, filtered=filtered)[0, 0]  # [Vd]
            return (q / self.race[k]).argmax().view(1), q

        head = model.markov_head
        if head is None:  # DFlash: every slot independent
            picks_q = [pick(base[k], k) for k in range(B)]
            prev_feats = None
        else:  # DSpark: left to right from the anchor, each slot biased by the token before it
            prev, state, picks_q, prev_feats = anchor[0], None, [], []
            for k in range(B):
                e_prev = head.prev_features(prev)  # [r]
                bias, state = head.step(e_prev, hidden[k], state)
                picked = pick(base[k] + bias.float(), k)
                picks_q.append(picked)
                # index_select, not tensor[0-d index]: that would read the index on the host
                prev = (model.draft_vocab_ids.index_select(0, picked[0]) if model.reduced_vocab else picked[0]).reshape(())
                prev_feats.append(e_prev)
        picks = torch.cat([p for p, _ in picks_q])  # [B] draft-vocabulary indices
        probs = None if greedy else model.to_target_vocab(torch.stack([q for _, q in picks_q]), fill=0.0)  # [B, V]
        conf_logits = None
        if model.confidence_head is not None:
            conf_logits = model.confidence_head(hidden, torch.stack(prev_feats) if prev_feats is not None else None).float()
            confidences = torch.sigmoid(conf_logits / model.confidence_temperatures[:B])
            length = device_length(confidences, self.schedule.sps, room, self.schedule.name, self.schedule.threshold)
        else:
            length = room.clone()  # no confidences: verify the whole draft, as the host path does
        return model.draft_to_target(picks), probs, length, conf_logits

    def _park(self) -> None:
        parked(self.o_ints, [self.trash, 0])
        parked(self.p_ints, [0, self.trash, 0, 0])

    @torch.inference_mode()
    def propose(self, anchor: int, anchor_pos: int, room: int, params: SamplingParams,
                generator: torch.Generator | None) -> DeviceDraft:
        self.p_ints_host.numpy()[:] = (anchor, anchor_pos, room, params.top_k)
        tokens, probs, length, conf_logits = self._run_propose(params, generator)
        self.last_conf_logits = conf_logits
        return DeviceDraft(tokens=tokens[:room], length=length, probs=None if probs is None else probs[:room], drafted=room)
