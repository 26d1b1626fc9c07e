"""The layers learned drafters are built from (DeepSpec's Qwen3 draft layers, deepspec-format.md §1).

DraftAttention takes its queries from the block being drafted and its keys/values from two parts:
the context (the target's fused features of committed positions, projected by the layer's own
k/v weights, k-normed and rotated at their positions) and the block itself. The mask decides
what each query sees: DSpark/DFlash blocks see the context before their anchor and their whole
block (no causal mask inside it); EAGLE-3 is causal. The same code serves training (many blocks,
a mask) and inference (one block, the context from a cache, no mask).

Weights are plain ``nn.Linear`` named as in DeepSpec's state dict, so checkpoints load 1:1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.linear import DenseLinear
from ..model.layers import RMSNorm, apply_rope
from .learned_config import LearnedDrafterConfig


class DraftAttention(nn.Module):
    def __init__(self, cfg: LearnedDrafterConfig, in_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        D, Hq, Hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        self.q_proj = DenseLinear(in_features, Hq * D, bias=False)
        self.k_proj = DenseLinear(in_features, Hkv * D, bias=False)
        self.v_proj = DenseLinear(in_features, Hkv * D, bias=False)
        self.o_proj = DenseLinear(Hq * D, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(D, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(D, cfg.rms_norm_eps)

    def keys_values(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, in] at rotary tables cos/sin [B or 1, T, 1, D] -> k, v [B, Hkv, T, D]."""
        B, T, _ = x.shape
        D, Hkv = self.cfg.head_dim, self.cfg.num_kv_heads
        k = apply_rope(self.k_norm(self.k_proj(x).view(B, T, Hkv, D)), cos, sin)
        v = self.v_proj(x).view(B, T, Hkv, D)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, ctx_k: Tensor, ctx_v: Tensor, mask: Tensor | None
    ) -> Tensor:
        """x [B, N, in] (the block, normed); ctx_k/ctx_v [B, Hkv, S, D]; mask [B, 1, N, S+N] bool
        (True = may attend) or None (everything) -> [B, N, H]."""
        B, N, _ = x.shape
        D, Hq = self.cfg.head_dim, self.cfg.num_heads
        q = apply_rope(self.q_norm(self.q_proj(x).view(B, N, Hq, D)), cos, sin).transpose(1, 2)  # [B, Hq, N, D]
        k, v = self.keys_values(x, cos, sin)  # [B, Hkv, N, D]
        keys = torch.cat([ctx_k, k], dim=2)  # [B, Hkv, S+N, D]
        values = torch.cat([ctx_v, v], dim=2)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=D**-0.5, enable_gqa=Hq != self.cfg.num_kv_heads
        )  # [B, Hq, N, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, N, Hq * D))


class DraftMLP(nn.Module):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        self.gate_proj = DenseLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = DenseLinear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = DenseLinear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BlockLayer(nn.Module):
    """DSpark/DFlash decoder layer: x += Attn(norm(x), context); x += MLP(norm(x)).
    The context does not pass through input_layernorm (DeepSpec: C is normed once, by hidden_norm)."""

    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DraftAttention(cfg, cfg.hidden_size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DraftMLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ctx_k: Tensor, ctx_v: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx_k, ctx_v, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def rope_at(cos_table: Tensor, sin_table: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables [P, D] gathered at positions [B, T] -> [B, T, 1, D] in ``dtype``."""
    return cos_table[positions].unsqueeze(-2).to(dtype), sin_table[positions].unsqueeze(-2).to(dtype)
