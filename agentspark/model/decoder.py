"""DecoderModel: our compact Llama/Qwen2/Qwen3 decoder over an explicit static KV cache.

One forward step takes token ids at absolute positions [start, start+T), writes their K/V into the
cache by index, attends to [0, start+T) and returns logits (optionally only the last rows) and, on
request, the raw residual-stream outputs of chosen layers (for learned drafters: no second pass).

What it does not know: tokenizers, sampling, files. Shapes are fixed by the cache; ``start`` is a
host integer, so a step has no host sync and no branch on device data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig
from .kv_cache import StaticKVCache
from .layers import RMSNorm, apply_rope, rope_tables
from .linear import LinearT, blas_owns_the_cores, cpu_float32_inference


@dataclass
class ForwardOutput:
    logits: Tensor  # [B, K, V] for the last K positions (K = num_logits or T)
    hidden: Tensor | None = None  # [B, T, m*H] captured layer outputs, concatenated in request order


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # q, k, v fused into one matmul: one weight read per step instead of three launches.
        self.qkv = LinearT(cfg.hidden_size, cfg.qkv_size, bias=cfg.qkv_bias)
        self.o = LinearT(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: StaticKVCache,
        layer: int,
        start: int,
        mask: Tensor | None,
        row_invariant: bool,
    ) -> Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        D, Hq, Hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        qkv = self.qkv(x, row_invariant).view(B, T, Hq + 2 * Hkv, D)  # [B, T, Hq+2Hkv, D]
        qk, v = qkv.split([Hq + Hkv, Hkv], dim=2)  # [B, T, Hq+Hkv, D], [B, T, Hkv, D]
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            qk = torch.cat([self.q_norm(qk[:, :, :Hq]), self.k_norm(qk[:, :, Hq:])], dim=2)
        qk = apply_rope(qk, cos, sin)  # q and k rotated in one pass
        q = qk[:, :, :Hq].transpose(1, 2)  # [B, Hq, T, D]
        k = qk[:, :, Hq:].transpose(1, 2)  # [B, Hkv, T, D]
        v = v.transpose(1, 2)  # [B, Hkv, T, D]
        keys, values = cache.write(layer, start, k, v)  # [B, Hkv, start+T, D]
        gqa = Hq != Hkv
        if row_invariant and T > 1:
            # Row i attends to exactly the keys plain decoding would give it, in a call of the
            # same shape: its result cannot depend on the other rows (see linear.py).
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[:, :, i : i + 1], keys[:, :, : start + i + 1], values[:, :, : start + i + 1],
                        scale=D**-0.5, enable_gqa=gqa,
                    )
                    for i in range(T)
                ],
                dim=2,
            )  # [B, Hq, T, D]
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=D**-0.5, enable_gqa=gqa
            )  # [B, Hq, T, D]
        return self.o(out.transpose(1, 2).reshape(B, T, Hq * D), row_invariant)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up = LinearT(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = LinearT(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor, row_invariant: bool) -> Tensor:
        gate, up = self.gate_up(x, row_invariant).split(self.intermediate, dim=-1)  # [B, T, I] x2
        return self.down(F.silu(gate) * up, row_invariant)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, layer, start, mask, row_invariant):  # type: ignore[no-untyped-def]
        x = x + self.attn(self.input_norm(x), cos, sin, cache, layer, start, mask, row_invariant)
        return x + self.mlp(self.post_norm(x), row_invariant)


class DecoderModel(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # The LM head is stored transposed even when tied (a copy of the embedding): the lookup
        # wants rows of [V, H], the head's matmul wants [H, V] (see linear.py).
        self.lm_head = LinearT(cfg.hidden_size, cfg.vocab_size)
        cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)  # [P, D] float32
        self.register_buffer("rope_sin", sin, persistent=False)  # [P, D] float32

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, capacity: int, batch_size: int = 1) -> StaticKVCache:
        capacity = min(capacity, self.cfg.max_position_embeddings)
        return StaticKVCache(self.cfg, capacity, batch_size=batch_size, dtype=self.dtype, device=self.device)

    def forward(
        self,
        input_ids: Tensor,
        cache: StaticKVCache,
        start: int,
        *,
        num_logits: int | None = None,
        capture_layers: tuple[int, ...] = (),
        row_invariant: bool = False,
    ) -> ForwardOutput:
        """input_ids [B, T] at positions [start, start+T); cache must hold [0, start).

        capture_layers: layer indices whose raw output (residual stream after the layer) is
        returned; -1 means the embedding output. Sets ``cache.length = start + T``.
        row_invariant: compute every row exactly as a one-row call would (CPU float32; other
        devices and dtypes compute as usual until their batch-invariant kernels exist). Decode
        and verify steps use it so that greedy speculative output equals plain bit for bit.
        """
        B, T = input_ids.shape
        end = start + T
        if end > cache.capacity:
            raise ValueError(f"positions [{start}, {end}) exceed the cache capacity {cache.capacity}")
        with blas_owns_the_cores(self.embed.weight):
            return self._forward(input_ids, cache, start, num_logits, capture_layers, row_invariant)

    def _forward(
        self,
        input_ids: Tensor,
        cache: StaticKVCache,
        start: int,
        num_logits: int | None,
        capture_layers: tuple[int, ...],
        row_invariant: bool,
    ) -> ForwardOutput:
        T = input_ids.shape[1]
        end = start + T
        x = self.embed(input_ids)  # [B, T, H]
        row_invariant = row_invariant and cpu_float32_inference(x)
        cos = self.rope_cos[start:end, None].to(x.dtype)  # [T, 1, D]
        sin = self.rope_sin[start:end, None].to(x.dtype)  # [T, 1, D] signed (layers.rope_tables)
        mask = None
        if T > 1:
            # query i (absolute start+i) sees keys j <= start+i; built on device, no host sync,
            # once per forward as an additive mask (a bool mask is converted again in every layer).
            q_pos = torch.arange(start, end, device=x.device)[:, None]  # [T, 1]
            k_pos = torch.arange(end, device=x.device)[None, :]  # [1, end]
            mask = torch.zeros(T, end, dtype=x.dtype, device=x.device).masked_fill_(k_pos > q_pos, float("-inf"))
        captured: dict[int, Tensor] = {}
        if -1 in capture_layers:
            captured[-1] = x
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, start, mask, row_invariant)
            if i in capture_layers:
                captured[i] = x
        cache.length = end
        if num_logits is not None:
            x = x[:, -num_logits:]
        logits = self.lm_head(self.norm(x), row_invariant)  # [B, K, V]
        hidden = torch.cat([captured[i] for i in capture_layers], dim=-1) if capture_layers else None
        return ForwardOutput(logits=logits, hidden=hidden)
