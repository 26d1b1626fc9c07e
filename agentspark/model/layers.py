"""Small shared layers of the decoder family: RMSNorm, rotary tables, rotary application.

Numerics follow Hugging Face's Llama/Qwen code on purpose (norm statistics in float32, the
normed activations cast back before the weight multiply, cos/sin computed in float32 and cast to
the activation dtype) so that our logits agree with transformers' within 1e-4 in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:  # one fused op; the same math as below
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # HF order: normalize in float32, cast back, then multiply by the weight in x's dtype
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_inv_freq(cfg: DecoderConfig) -> Tensor:
    """Inverse frequencies [head_dim/2] in float32, with the config's theta and scaling."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the middle band
        # interpolated smoothly between the two.
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(cfg: DecoderConfig, max_len: int) -> tuple[Tensor, Tensor]:
    """cos and signed sin tables [max_len, head_dim] in float32, indexed by absolute position.

    signed_sin = [-sin, sin] over the two halves (see apply_rope)."""
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, rope_inv_freq(cfg))  # [max_len, head_dim/2]
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x [B, T, H, D]; cos, signed_sin [T, 1, D] in x's dtype, signed_sin = [-sin_1, sin_2].

    x*cos + rotate_half(x)*sin with rotate_half(x) = [-x2, x1], written as the half-swap
    [x2, x1] (a flip of the two halves) times the sign-folded sine: one copy op instead of three.
    """
    B, T, H, D = x.shape
    swapped = x.view(B, T, H, 2, D // 2).flip(3).view(B, T, H, D)  # [x2, x1]
    return x * cos + swapped * signed_sin
