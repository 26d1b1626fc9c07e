"""DSparkModel: the parallel drafter backbone (DFlash) with DSpark's Markov and confidence heads.

Backbone (deepspec-format.md §1.1): the target's context features (raw outputs of the layers in
``target_layer_ids``, concatenated) are fused once, C = hidden_norm(fc(features)), and injected as
extra keys/values into every draft layer. A block [anchor, MASK x (B-1)] at positions
[a, a+B) attends to the context before a and to its whole block (no causal mask inside it); slot
k's final-normed hidden h_k gives base logits U_k = LM_head(h_k) for the token at a+k+1. One
forward drafts the whole block.

Markov head (DSpark): z_k = U_k + W2 W1[x_{k-1}], sampled left to right from the anchor; q_k is
softmax of z_k (after the request's sampling parameters). The ``rnn`` variant carries a state.
Confidence head: c_k = sigmoid(w . [h_k; W1[x_{k-1}]] + b) estimates P(d_k survives | d_<k did),
divided by a per-position temperature after calibration.

The embedding and LM head are the target's, frozen and not stored with our checkpoints; with a
reduced draft vocabulary the head is the target head's rows for those tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.linear import DenseLinear
from ..model.layers import RMSNorm
from .draft_layers import BlockLayer
from .target_shared import TargetSharedDrafter
from .learned_config import LearnedDrafterConfig


class MarkovHead(nn.Module):
    """Low-rank bias from the previous token: b = W2 W1[prev] (vanilla) or through a gated state (rnn)."""

    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        r = cfg.markov_rank
        self.kind = cfg.markov_head_type
        self.markov_w1 = nn.Embedding(cfg.vocab_size, r)  # indexed by any target token
        self.markov_w2 = DenseLinear(r, cfg.draft_vocab_size, bias=False)
        if self.kind == "rnn":
            self.joint_proj = DenseLinear(2 * r + cfg.hidden_size, 3 * r, bias=True)

    def prev_features(self, prev: Tensor) -> Tensor:
        """prev [...] token ids -> W1[prev] [..., r]."""
        return self.markov_w1(prev)

    def step(self, e_prev: Tensor, h: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One slot: e_prev = W1[prev] [..., r], h [..., H] -> bias [..., Vd], next state."""
        if self.kind == "vanilla":
            return self.markov_w2(e_prev), None
        if state is None:
            state = torch.zeros_like(e_prev)
        gate, cand, out = self.joint_proj(torch.cat([state, e_prev, h], dim=-1)).chunk(3, dim=-1)
        g = torch.sigmoid(gate)
        state = g * state + (1 - g) * torch.tanh(cand)
        return self.markov_w2(torch.tanh(out)), state

    def block_bias(self, e_prev: Tensor, h: Tensor) -> Tensor:
        """Teacher-forced biases for whole blocks: e_prev [B, nb, K, r], h [B, nb, K, H] -> [B, nb, K, Vd]."""
        if self.kind == "vanilla":
            return self.markov_w2(e_prev)
        state, out = None, []
        for k in range(e_prev.shape[-2]):
            b, state = self.step(e_prev[..., k, :], h[..., k, :], state)
            out.append(b)
        return torch.stack(out, dim=-2)


class ConfidenceHead(nn.Module):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        width = cfg.hidden_size + (cfg.markov_rank if cfg.confidence_head_with_markov and cfg.markov_rank else 0)
        self.with_markov = width > cfg.hidden_size
        self.proj = DenseLinear(width, 1, bias=True)

    def forward(self, h: Tensor, e_prev: Tensor | None) -> Tensor:
        """h [..., H], e_prev [..., r] -> logits [...]."""
        x = torch.cat([h, e_prev], dim=-1) if self.with_markov else h
        return self.proj(x).squeeze(-1)


class DSparkModel(TargetSharedDrafter):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        if cfg.method not in ("dspark", "dflash"):
            raise ValueError(f"DSparkModel builds dspark/dflash drafters, not {cfg.method}")
        super().__init__(cfg)
        H = cfg.hidden_size
        self.fc = DenseLinear(cfg.num_features * H, H, bias=False)
        self.hidden_norm = RMSNorm(H, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(BlockLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.markov_head = MarkovHead(cfg) if cfg.markov_rank else None
        self.confidence_head = ConfidenceHead(cfg) if cfg.enable_confidence_head else None
        temps = torch.tensor(cfg.confidence_temperatures or [1.0] * cfg.block_size, dtype=torch.float32)
        self.register_buffer("confidence_temperatures", temps, persistent=False)  # [block_size]

    # ---- pieces shared by training and inference --------------------------------------------
    def fuse_context(self, features: Tensor) -> Tensor:
        """Target features [B, S, m*H] -> C [B, S, H]."""
        return self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))

    def context_kv(self, context: Tensor, positions: Tensor) -> list[tuple[Tensor, Tensor]]:
        """C [B, S, H] at positions [B, S] -> per layer (k, v) [B, Hkv, S, D]."""
        cos, sin = self.rope(positions, context.dtype)
        return [layer.self_attn.keys_values(context, cos, sin) for layer in self.layers]

    def block_hidden(
        self, block_ids: Tensor, positions: Tensor, ctx: list[tuple[Tensor, Tensor]], mask: Tensor | None
    ) -> Tensor:
        """Blocks block_ids [B, N] at positions [B, N] over context K/V -> final-normed h [B, N, H]."""
        x = self.embed_tokens(block_ids, self.fc.weight.dtype)  # [B, N, H]
        cos, sin = self.rope(positions, x.dtype)
        for layer, (k, v) in zip(self.layers, ctx):
            x = layer(x, cos, sin, k, v, mask)
        return self.norm(x)
