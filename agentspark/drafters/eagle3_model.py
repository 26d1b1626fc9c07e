"""Eagle3Model: DeepSpec's EAGLE-3-style drafter, one autoregressive layer (deepspec-format.md §1.4).

Input pairs: at position i the layer reads (g_i, e_{i+1}), where g_i is a hidden of size H and
e_{i+1} the (frozen, target) embedding of the token at i+1, at RoPE position i. For committed
positions g_i = fc(concat of the target's raw layer outputs at i) (``fuse_features``); when
drafting, g is the layer's own previous output (the recurrent draft hidden).

Layer (names as in DeepSpec's state dict, ``layers.0.*``):
    x  = [input_layernorm(e) ; hidden_norm(g)]          [.., 2H], the embedding first
    g' = g + o_proj(attn(q_proj x, k_proj x, v_proj x))  per-head q_norm/k_norm, RoPE, causal
    g''= g' + mlp(post_attention_layernorm(g'))
The returned hidden g'' is pre-norm (it is the next step's g); logits = lm_head(norm(g'')) predict
the token at i+2. Attention is causal over the drafter's own K/V cache (positions < i, then i).

The embedding and LM head are the target's, frozen and not stored with our checkpoints; with a
reduced draft vocabulary the head is the target head's rows for those tokens (``to_target_vocab``
maps back). Only one layer is supported, as in DeepSpec's evaluator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from ..model.linear import DenseLinear
from ..model.layers import RMSNorm, apply_rope
from .draft_layers import DraftAttention, DraftMLP
from .target_shared import TargetSharedDrafter
from .learned_config import LearnedDrafterConfig


class Eagle3Layer(nn.Module):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.cfg = cfg
        self.hidden_norm = RMSNorm(H, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(H, cfg.rms_norm_eps)
        self.self_attn = DraftAttention(cfg, 2 * H)
        self.post_attention_layernorm = RMSNorm(H, cfg.rms_norm_eps)
        self.mlp = DraftMLP(cfg)

    def forward(
        self,
        e: Tensor,
        g: Tensor,
        cos: Tensor,
        sin: Tensor,
        past_k: Tensor | None,
        past_v: Tensor | None,
        mask: Tensor | None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """e, g [B, T, H]; cos/sin [B or 1, T, 1, D]; past_k/past_v [B, Hkv, S, D] or None;
        mask [B or 1, 1, Tq, S+T] bool (True = may attend) or None (causal) -> g_out [B, Tq, H]
        and the new rows' k, v [B, Hkv, T, D]. Tq = 1 with last_only (only the last row's output),
        else T."""
        attn, c = self.self_attn, self.cfg
        B, T, _ = e.shape
        D, Hq = c.head_dim, c.num_heads
        x = torch.cat([self.input_layernorm(e), self.hidden_norm(g)], dim=-1)  # [B, T, 2H]
        k, v = attn.keys_values(x, cos, sin)  # [B, Hkv, T, D]
        if last_only:
            x, g, cos, sin = x[:, -1:], g[:, -1:], cos[:, -1:], sin[:, -1:]
        Tq = x.shape[1]
        q = apply_rope(attn.q_norm(attn.q_proj(x).view(B, Tq, Hq, D)), cos, sin).transpose(1, 2)  # [B, Hq, Tq, D]
        keys, values = k, v
        if past_k is not None and past_k.shape[2]:
            keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # [B, Hkv, S+T, D]
        if mask is None and Tq > 1:  # causal: row t sees the past and new rows <= t
            S = keys.shape[2] - T
            cols = torch.arange(S + T, device=x.device)
            rows = torch.arange(T, device=x.device)[:, None] + S
            mask = (cols[None, :] <= rows)[None, None]  # [1, 1, T, S+T]
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=D**-0.5, enable_gqa=Hq != c.num_kv_heads
        )  # [B, Hq, Tq, D]
        h = g + attn.o_proj(out.transpose(1, 2).reshape(B, Tq, Hq * D))
        return h + self.mlp(self.post_attention_layernorm(h)), k, v


class Eagle3Model(TargetSharedDrafter):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        if cfg.method != "eagle3":
            raise ValueError(f"Eagle3Model builds eagle3 drafters, not {cfg.method}")
        if cfg.num_layers != 1:
            raise UnsupportedModelError(
                f"EAGLE-3 drafters with {cfg.num_layers} layers are not supported: only "
                "draft_num_hidden_layers == 1 (as in DeepSpec's evaluator)"
            )
        super().__init__(cfg)
        H = cfg.hidden_size
        self.fc = DenseLinear(cfg.num_features * H, H, bias=False)
        self.layers = nn.ModuleList([Eagle3Layer(cfg)])
        self.norm = RMSNorm(H, cfg.rms_norm_eps)

    @property
    def layer(self) -> Eagle3Layer:
        return self.layers[0]

    # ---- pieces shared by training and inference --------------------------------------------
    def fuse_features(self, features: Tensor) -> Tensor:
        """Target features [B, T, m*H] (raw outputs of target_layer_ids, concatenated) -> g [B, T, H]."""
        return self.fc(features.to(self.fc.weight.dtype))

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids [B, T] -> e [B, T, H] (the target's frozen embedding)."""
        return self.embed_tokens(ids, self.fc.weight.dtype)

    def step(
        self,
        e: Tensor,
        g: Tensor,
        positions: Tensor,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One pass of the draft layer over T input pairs.

        e [B, T, H]: embeddings of the tokens at positions+1; g [B, T, H]: fused target features
        (``fuse_features``) or the previous step's output; positions [B, T] long (RoPE);
        past_k/past_v [B, Hkv, S, D]: earlier rows' keys/values (None = none); mask
        [B or 1, 1, T, S+T] bool, True = may attend (None = causal: every past row, new rows up to
        their own); last_only: compute only the last row's output (the same as causal for it).
        Returns g_out [B, T (1 with last_only), H] pre-norm (logits from ``logits``), and the new
        rows' k, v [B, Hkv, T, D] (RoPE'd, k-normed) for the caller's cache."""
        cos, sin = self.rope(positions, g.dtype)
        return self.layer(e, g, cos, sin, past_k, past_v, mask, last_only)

    def logits(self, g: Tensor) -> Tensor:
        """Pre-norm layer output g [..., H] -> logits [..., Vd] = lm_head(norm(g))."""
        return self.base_logits(self.norm(g))
