"""Map a Hugging Face Llama/Qwen state dict onto DecoderModel (fusing q/k/v and gate/up,
transposing linear weights to [in, out]).

One mapping, ``hf_slots``: where each HF tensor lands in the parameters. ``build_model`` copies a
whole state dict through it (HF folders, tests); gguf_read fills the same slots a chunk of rows at
a time (no second copy of the model). Both go through ``empty_model``, ``place`` and ``finish_model``.
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


def build_model(
    cfg: DecoderConfig,
    hf_state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> DecoderModel:
    """A DecoderModel holding the given HF weights, in ``dtype`` on ``device``: every HF tensor
    copied into its slots of the parameters (``hf_slots``, the mapping the GGUF reader fills too)."""
    model, params = empty_model(cfg, dtype=dtype, device=device)
    for name, slots in hf_slots(cfg).items():
        t = _take(hf_state_dict, name)
        if not torch.is_floating_point(t):
            raise CorruptModelError(f"weight {name!r} has non-float dtype {t.dtype}")
        for slot in slots:
            dst = slot_view(params, slot)
            if t.shape != dst.shape:
                raise CorruptModelError(f"weight {name!r} has shape {tuple(t.shape)}, expected {tuple(dst.shape)}")
            place(dst, t, slot.transposed)
    return finish_model(cfg, model, params)


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


TILE = 128  # a 128 x 128 float32 tile (64 KB) of source and destination stays in the L2 cache


def place(dst: torch.Tensor, src: torch.Tensor, transposed: bool) -> None:
    """dst[...] = src, rounding to dst's dtype and moving to its device. A transposed dst (a view
    of weight_t [in, out] through .t()) is written tile by tile: one strided copy_ of a whole
    chunk misses the cache on every element and ran 2-3x slower on the CPU."""
    if not transposed or dst.device.type != "cpu" or src.dim() != 2:
        dst.copy_(src)
        return
    rows, cols = src.shape
    for r in range(0, rows, TILE):
        for c in range(0, cols, TILE):
            dst[r : r + TILE, c : c + TILE].copy_(src[r : r + TILE, c : c + TILE])


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
