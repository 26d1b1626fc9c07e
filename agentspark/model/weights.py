"""Map a Hugging Face Llama/Qwen state dict onto DecoderModel (fusing q/k/v and gate/up,
transposing linear weights to [in, out])."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import CorruptModelError
from .config import DecoderConfig
from .decoder import DecoderModel
from .layers import rope_tables


def _take(sd: Mapping[str, Tensor], name: str) -> Tensor:
    try:
        return sd[name]
    except KeyError:
        raise CorruptModelError(f"weight {name!r} is missing from the checkpoint") from None


def hf_to_ours(cfg: DecoderConfig, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and fuse) HF tensor names into DecoderModel's state-dict names."""
    embed = _take(sd, "model.embed_tokens.weight")
    out: dict[str, Tensor] = {
        "embed.weight": embed,
        "norm.weight": _take(sd, "model.norm.weight"),
        "lm_head.weight_t": (embed if cfg.tie_word_embeddings else _take(sd, "lm_head.weight")).t(),
    }
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        q = f"layers.{i}."
        out[q + "input_norm.weight"] = _take(sd, p + "input_layernorm.weight")
        out[q + "post_norm.weight"] = _take(sd, p + "post_attention_layernorm.weight")
        out[q + "attn.qkv.weight_t"] = torch.cat([_take(sd, p + f"self_attn.{n}_proj.weight") for n in "qkv"]).t()
        if cfg.qkv_bias:
            out[q + "attn.qkv.bias"] = torch.cat([_take(sd, p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        out[q + "attn.o.weight_t"] = _take(sd, p + "self_attn.o_proj.weight").t()
        if cfg.o_bias:
            out[q + "attn.o.bias"] = _take(sd, p + "self_attn.o_proj.bias")
        if cfg.qk_norm:
            out[q + "attn.q_norm.weight"] = _take(sd, p + "self_attn.q_norm.weight")
            out[q + "attn.k_norm.weight"] = _take(sd, p + "self_attn.k_norm.weight")
        out[q + "mlp.gate_up.weight_t"] = torch.cat(
            [_take(sd, p + "mlp.gate_proj.weight"), _take(sd, p + "mlp.up_proj.weight")]
        ).t()
        out[q + "mlp.down.weight_t"] = _take(sd, p + "mlp.down_proj.weight").t()
        if cfg.mlp_bias:
            out[q + "mlp.gate_up.bias"] = torch.cat(
                [_take(sd, p + "mlp.gate_proj.bias"), _take(sd, p + "mlp.up_proj.bias")]
            )
            out[q + "mlp.down.bias"] = _take(sd, p + "mlp.down_proj.bias")
    return out


def build_model(
    cfg: DecoderConfig,
    hf_state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> DecoderModel:
    """A DecoderModel holding the given HF weights, in ``dtype`` on ``device``."""
    ours = hf_to_ours(cfg, hf_state_dict)
    for name, t in ours.items():
        if not torch.is_floating_point(t):
            raise CorruptModelError(f"weight {name!r} has non-float dtype {t.dtype}")
    with torch.device("meta"):  # no random init of weights we are about to overwrite
        model = DecoderModel(cfg)
    expected = {n: p.shape for n, p in model.state_dict().items()}
    for name, shape in expected.items():
        if name not in ours:
            raise CorruptModelError(f"weight {name!r} is missing from the checkpoint")
        if ours[name].shape != shape:
            raise CorruptModelError(f"weight {name!r} has shape {tuple(ours[name].shape)}, expected {tuple(shape)}")
    model.load_state_dict(
        {n: t.to(device=device, dtype=dtype).contiguous() for n, t in ours.items()}, strict=True, assign=True
    )
    cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
    model.rope_cos = cos.to(device)
    model.rope_sin = sin.to(device)
    return model.eval().requires_grad_(False)
