"""Map a Hugging Face Llama/Qwen state dict onto DecoderModel (fusing q/k/v and gate/up,
transposing linear weights to [in, out]).

Two ways in: ``build_model`` from a whole state dict (HF folders, tests), and ``hf_slots`` with
``empty_model``/``finish_model`` for a reader that writes each HF tensor, a chunk of rows at a
time, straight into the parameter buffers (gguf_read: no second copy of the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    return finish_model(cfg, model, {n: t.to(device=device, dtype=dtype).contiguous() for n, t in ours.items()})


@dataclass(frozen=True)
class Slot:
    """Where one HF tensor lands: rows [start, start + rows) of ``param`` seen in HF's [out, in]
    layout (``transposed``: a LinearT weight_t [in, out], seen through .t())."""

    param: str
    start: int
    rows: int
    transposed: bool = False


def hf_slots(cfg: DecoderConfig) -> dict[str, tuple[Slot, ...]]:
    """{HF name: its slots} for every weight ``cfg`` needs: the same mapping as ``hf_to_ours``."""
    H, V = cfg.hidden_size, cfg.vocab_size
    q, kv, I2 = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    head = Slot("lm_head.weight_t", 0, V, transposed=True)
    plan: dict[str, tuple[Slot, ...]] = {
        "model.embed_tokens.weight": (Slot("embed.weight", 0, V),) + ((head,) if cfg.tie_word_embeddings else ()),
        "model.norm.weight": (Slot("norm.weight", 0, H),),
    }
    if not cfg.tie_word_embeddings:
        plan["lm_head.weight"] = (head,)
    for i in range(cfg.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        plan[p + "input_layernorm.weight"] = (Slot(o + "input_norm.weight", 0, H),)
        plan[p + "post_attention_layernorm.weight"] = (Slot(o + "post_norm.weight", 0, H),)
        for n, start, rows in (("q", 0, q), ("k", q, kv), ("v", q + kv, kv)):  # fused [q | k | v]
            plan[p + f"self_attn.{n}_proj.weight"] = (Slot(o + "attn.qkv.weight_t", start, rows, True),)
            if cfg.qkv_bias:
                plan[p + f"self_attn.{n}_proj.bias"] = (Slot(o + "attn.qkv.bias", start, rows),)
        plan[p + "self_attn.o_proj.weight"] = (Slot(o + "attn.o.weight_t", 0, H, True),)
        if cfg.o_bias:
            plan[p + "self_attn.o_proj.bias"] = (Slot(o + "attn.o.bias", 0, H),)
        if cfg.qk_norm:
            plan[p + "self_attn.q_norm.weight"] = (Slot(o + "attn.q_norm.weight", 0, cfg.head_dim),)
            plan[p + "self_attn.k_norm.weight"] = (Slot(o + "attn.k_norm.weight", 0, cfg.head_dim),)
        for n, start in (("gate", 0), ("up", I2)):  # fused [gate | up]
            plan[p + f"mlp.{n}_proj.weight"] = (Slot(o + "mlp.gate_up.weight_t", start, I2, True),)
            if cfg.mlp_bias:
                plan[p + f"mlp.{n}_proj.bias"] = (Slot(o + "mlp.gate_up.bias", start, I2),)
        plan[p + "mlp.down_proj.weight"] = (Slot(o + "mlp.down.weight_t", 0, H, True),)
        if cfg.mlp_bias:
            plan[p + "mlp.down_proj.bias"] = (Slot(o + "mlp.down.bias", 0, H),)
    return plan


def slot_view(params: Mapping[str, Tensor], slot: Slot) -> Tensor:
    """The part of a parameter a slot fills, shaped like the HF tensor [rows, ...] (a view)."""
    p = params[slot.param]
    return (p.t() if slot.transposed else p)[slot.start : slot.start + slot.rows]


def hf_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """{HF name: the shape ``cfg`` implies for it}."""
    with torch.device("meta"):
        params = DecoderModel(cfg).state_dict()
    return {name: tuple(slot_view(params, slots[0]).shape) for name, slots in hf_slots(cfg).items()}


def empty_model(
    cfg: DecoderConfig, *, dtype: torch.dtype, device: torch.device | str
) -> tuple[DecoderModel, dict[str, Tensor]]:
    """A DecoderModel skeleton (no memory) and uninitialized buffers for its parameters, which the
    caller fills completely through ``hf_slots`` (they cover every parameter exactly once)."""
    with torch.device("meta"):
        model = DecoderModel(cfg)
    return model, {n: torch.empty(p.shape, dtype=dtype, device=device) for n, p in model.state_dict().items()}


def finish_model(cfg: DecoderConfig, model: DecoderModel, params: Mapping[str, Tensor]) -> DecoderModel:
    """Give the skeleton its filled parameters and RoPE tables; eval mode, no grad."""
    device = next(iter(params.values())).device
    model.load_state_dict(dict(params), strict=True, assign=True)
    cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
    model.rope_cos = cos.to(device)
    model.rope_sin = sin.to(device)
    return model.eval().requires_grad_(False)
