"""DecoderModel: our compact Llama/Qwen2/Qwen3 decoder over an explicit static KV cache.

One forward step takes token ids at absolute positions [start, start+T), writes their K/V into the
cache by index, attends to [0, start+T) and returns logits (optionally only the last rows) and, on
request, the raw residual-stream outputs of chosen layers (for learned drafters: no second pass).

Two placements of a forward's tokens share every layer (no second copy of the decoder):
``forward`` puts one request's tokens at a host position (prefill, and the CPU's row-invariant
steps); ``forward_rows`` puts R rows at device positions (the GPU runner's captured steps), with
the K/V write and attention done by the kernels in ``agentspark.kernels``. On CUDA the residual
adds, norms and the MLP activation are fused kernels in both; elsewhere their references.

What it does not know: tokenizers, sampling, files. Shapes are fixed by the cache; a step has no
host sync and no branch on device data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..kernels.decode_attention import decode_attention
from ..kernels.rms_norm import add_rms_norm, add_rms_norm_reference
from ..kernels.rope_cache import rope_cache
from ..kernels.silu_mul import silu_mul, silu_mul_reference
from .config import DecoderConfig
from .kv_cache import StaticKVCache
from .layers import RMSNorm, apply_rope, rope_tables
from .linear import LinearT, blas_owns_the_cores, cpu_float32_inference


_EAGER_CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class ForwardOutput:
    logits: Tensor  # [B, K, V] for the last K positions (K = num_logits or T)
    hidden: Tensor | None = None  # [B, T, m*H] captured layer outputs, concatenated in request order


class HostPlacement:
    """One request's tokens at host positions [start, start+T) of cache slot ``slot``: prefill, and
    every step on the CPU. Attention reads the cache prefix [0, start+T) through views."""

    # Eager forwards launch every op from Python: Triton's launcher costs more host time per call
    # than a torch op (measured on the H200 machine: a 135M-shape eager step 74 ms with the fused
    # kernels), so here the norms and the activation are the torch references. Captured steps
    # (DevicePlacement) pay launch costs once, at capture, and use the fused kernels.
    norm = staticmethod(add_rms_norm_reference)
    activation = staticmethod(silu_mul_reference)

    def __init__(self, model: DecoderModel, cache: StaticKVCache, slot: int, start: int, T: int,
                 dtype: torch.dtype, row_invariant: bool) -> None:
        end = start + T
        self.cache, self.slot, self.start, self.T, self.row_invariant = cache, slot, start, T, row_invariant
        self.cos = model.rope_cos[start:end, None].to(dtype)  # [T, 1, D]
        self.sin = model.rope_sin[start:end, None].to(dtype)  # [T, 1, D] signed (layers.rope_tables)
        self.mask = None
        if T > 1 and not row_invariant:  # row-invariant attention takes each row's own keys instead
            # query i (absolute start+i) sees keys j <= start+i; built on device, no host sync,
            # once per forward as an additive mask (a bool mask is converted again in every layer).
            device = model.rope_cos.device
            q_pos = torch.arange(start, end, device=device)[:, None]  # [T, 1]
            k_pos = torch.arange(end, device=device)[None, :]  # [1, end]
            self.mask = torch.zeros(T, end, dtype=dtype, device=device).masked_fill_(k_pos > q_pos, float("-inf"))

    def attend(self, attn: Attention, layer: int, qkv: Tensor) -> Tensor:
        """qkv [B, T, (Hq+2Hkv)*D] -> attention output [B, T, Hq*D]; K/V written to the cache."""
        cfg = attn.cfg
        B, T, _ = qkv.shape
        D, Hq, Hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        qk, v = qkv.view(B, T, Hq + 2 * Hkv, D).split([Hq + Hkv, Hkv], dim=2)  # [B, T, Hq+Hkv, D], [B, T, Hkv, D]
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            qk = torch.cat([attn.q_norm(qk[:, :, :Hq]), attn.k_norm(qk[:, :, Hq:])], dim=2)
        qk = apply_rope(qk, self.cos, self.sin)  # q and k rotated in one pass
        q = qk[:, :, :Hq].transpose(1, 2)  # [B, Hq, T, D]
        k = qk[:, :, Hq:].transpose(1, 2)  # [B, Hkv, T, D]
        keys, values = self.cache.write(layer, self.start, k, v.transpose(1, 2), self.slot)  # [B, Hkv, start+T, D]
        gqa = Hq != Hkv
        start = self.start
        if self.row_invariant:
            out = torch.cat([self.attend_row(q, keys, values, i) for i in range(T)], dim=2)  # [B, Hq, T, D]
        elif q.is_cuda and T > 1:
            # No cuDNN attention for eager prefills: it builds an execution plan for every new
            # sequence length (measured on the H200: ~45 ms, sometimes 500 ms, for each new
            # prompt length), and an agent's every round has a new length. From position 0 the
            # mask is plain causal, which the flash kernel takes without a mask tensor.
            with sdpa_kernel(_EAGER_CUDA_BACKENDS):
                if start == 0:
                    out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=D**-0.5, enable_gqa=gqa)
                else:
                    out = F.scaled_dot_product_attention(
                        q, keys, values, attn_mask=self.mask, scale=D**-0.5, enable_gqa=gqa
                    )  # [B, Hq, T, D]
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=self.mask, scale=D**-0.5, enable_gqa=gqa
            )  # [B, Hq, T, D]
        return out.transpose(1, 2).reshape(B, T, Hq * D)

    def attend_row(self, q: Tensor, keys: Tensor, values: Tensor, i: int) -> Tensor:
        """Row-invariant attention of query row i: q [B, Hq, T, D], keys/values [B, Hkv, start+T, D]
        -> [B, Hq, 1, D]. Row i attends to exactly the keys plain decoding gives it, in a call of
        the shape plain decoding makes (a plain step is row 0 of T = 1), on a contiguous copy of
        its query: its bits cannot depend on the other rows (see linear.py). The Hq/Hkv query
        heads that share a KV head go as the query rows of one call, so no call expands K and V
        to Hq heads (enable_gqa copies them: 9 rows at 512 positions cost 17 ms in 8 layers)."""
        B, Hq, _, D = q.shape
        Hkv, end = keys.shape[1], self.start + i + 1
        q_row = q[:, :, i : i + 1].contiguous().view(B, Hkv, Hq // Hkv, D)  # [B, Hkv, G, D]
        out = F.scaled_dot_product_attention(q_row, keys[:, :, :end], values[:, :, :end], scale=D**-0.5)
        return out.reshape(B, Hq, 1, D)


class HostRowsPlacement:
    """R requests' rows of T tokens each, row r at host positions [starts[r], starts[r] + T) of
    cache slot slots[r]: the CPU's batched rounds (batch.py), row-invariant. The matrix products
    see all R*T rows at once, each row getting the bits it gets alone (linear.py); RoPE, the K/V
    write and attention go row by row through a one-request placement each, over exactly its own
    slot's keys. So every row computes what its request's own step computes, bit for bit, while
    the weights are read once for all of them."""

    norm = staticmethod(add_rms_norm_reference)
    activation = staticmethod(silu_mul_reference)
    row_invariant = True

    def __init__(self, model: DecoderModel, cache: StaticKVCache, slots: list[int], starts: list[int], T: int,
                 dtype: torch.dtype) -> None:
        self.rows = [HostPlacement(model, cache, slot, start, T, dtype, True) for slot, start in zip(slots, starts)]

    def attend(self, attn: Attention, layer: int, qkv: Tensor) -> Tensor:
        """qkv [R, T, (Hq+2Hkv)*D] -> [R, T, Hq*D], row r through its own placement."""
        return torch.cat([row.attend(attn, layer, qkv[r : r + 1]) for r, row in enumerate(self.rows)])


class DevicePlacement:
    """R rows of T tokens; row r's tokens sit at positions starts[r] + [0, T) of cache slot
    slots[r], both *device* tensors: the decode and verify steps of the model runner. Nothing
    depends on a host value that changes between steps, so one captured CUDA graph serves every
    position. K/V are written by device index (kernels/rope_cache.py) and attention reads each row
    up to its own length (kernels/decode_attention.py); without Triton, their references.

    ``row_invariant`` (exact mode's route a): the products go through the row-invariant kernel
    (linear.py), so every token of every row gets the bits its own one-row plain step gets: the
    attention computes every query token in tiles of one shape whatever T is, and the norms, the
    activation, RoPE and the K/V write are one program per row."""

    norm = staticmethod(add_rms_norm)
    activation = staticmethod(silu_mul)

    def __init__(self, model: DecoderModel, cache: StaticKVCache, slots: Tensor, starts: Tensor, T: int,
                 causal: bool = True, key_window: int | None = None, row_invariant: bool = False) -> None:
        R = slots.shape[0]
        self.model, self.cache, self.slots, self.starts, self.T, self.causal = model, cache, slots, starts, T, causal
        self.row_invariant = row_invariant
        # a prefill chunk: T is large, attention goes through masked SDPA over keys [0, key_window)
        self.key_window = key_window
        self.positions = (starts[:, None] + torch.arange(T, device=starts.device)).reshape(R * T)  # [R*T]
        self.token_slots = slots.repeat_interleave(T)  # [R*T] (a real copy: the kernel reads it by index)

    def attend(self, attn: Attention, layer: int, qkv: Tensor) -> Tensor:
        cfg = attn.cfg
        R, T, _ = qkv.shape
        norms = (attn.q_norm.weight, attn.k_norm.weight) if cfg.qk_norm else (None, None)
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]  # [slots, Hkv, S, D]
        q = rope_cache(qkv.reshape(R * T, -1), self.positions, self.token_slots, self.model.rope_cos,
                       self.model.rope_sin, k_cache, v_cache, cfg.num_heads, *norms, cfg.rms_norm_eps)  # [R*T, Hq, D]
        q = q.view(R, T, cfg.num_heads, cfg.head_dim)
        if self.key_window is not None:
            window = self.key_window
            out = prefill_attention(q, k_cache[:, :, :window], v_cache[:, :, :window], self.slots,
                                    self.starts)  # [R, T, Hq, D]
        else:
            out = decode_attention(q, k_cache, v_cache, self.slots, self.starts, self.causal)  # [R, T, Hq, D]
        return out.reshape(R, T, cfg.num_heads * cfg.head_dim)


_PREFILL_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def prefill_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, slots: Tensor, starts: Tensor) -> Tensor:
    """Causal attention of a prefill chunk: q [R, T, Hq, D] at positions starts[r] + [0, T) over
    cache slots ``slots`` [R] of k_cache/v_cache [slots, Hkv, W, D] (a window of the first W
    positions that holds every key the chunk sees) -> [R, T, Hq, D]. The decode kernel holds all
    T x G query rows of a group in registers, which suits T <= 16, not a chunk of 128; this is
    SDPA over the window with a mask built on the device, so it is captured like the rest (no
    shape from the data; the window is part of the graph's bucket). K/V heads are repeated for
    the query heads so that the memory-efficient kernel takes it (not cuDNN: its plans, not
    flash: no mask)."""
    R, T, Hq, D = q.shape
    S, Hkv = k_cache.shape[2], k_cache.shape[1]
    keys, values = k_cache.index_select(0, slots), v_cache.index_select(0, slots)  # [R, Hkv, S, D]
    if Hq != Hkv:
        keys, values = keys.repeat_interleave(Hq // Hkv, dim=1), values.repeat_interleave(Hq // Hkv, dim=1)
    limits = starts[:, None] + torch.arange(1, T + 1, device=q.device)  # [R, T] exclusive key bound
    hidden = torch.arange(S, device=q.device)[None, None, :] >= limits[:, :, None]  # [R, T, S]
    mask = torch.zeros(R, 1, T, S, dtype=q.dtype, device=q.device).masked_fill_(hidden[:, None], float("-inf"))
    with sdpa_kernel(_PREFILL_BACKENDS):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, scale=D**-0.5)
    return out.transpose(1, 2).contiguous()  # [R, T, Hq, D]


Placement = HostPlacement | HostRowsPlacement | DevicePlacement


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

    def forward(self, x: Tensor, placement: Placement, layer: int) -> Tensor:
        row_invariant = placement.row_invariant
        return self.o(placement.attend(self, layer, self.qkv(x, row_invariant)), row_invariant)


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_up = LinearT(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = LinearT(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor, placement: Placement) -> Tensor:
        row_invariant = placement.row_invariant
        return self.down(placement.activation(self.gate_up(x, row_invariant)), row_invariant)  # [B, T, I] in between


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, delta: Tensor | None, residual: Tensor, placement: Placement, layer: int) -> tuple[Tensor, Tensor]:
        """(delta, residual) -> (this layer's MLP output, the residual before it): the layer's output is
        their sum, which the next norm adds in the same launch (kernels/rms_norm.py)."""
        h, residual = placement.norm(delta, residual, self.input_norm.weight, self.input_norm.eps)
        a = self.attn(h, placement, layer)
        h, residual = placement.norm(a, residual, self.post_norm.weight, self.post_norm.eps)
        return self.mlp(h, placement), residual


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
        slot: int = 0,
    ) -> ForwardOutput:
        """input_ids [B, T] at positions [start, start+T) of cache slots [slot, slot+B); the cache
        must hold [0, start) there.

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
            row_invariant = row_invariant and cpu_float32_inference(self.embed.weight)
            placement = HostPlacement(self, cache, slot, start, T, self.dtype, row_invariant)
            out = self._run(input_ids, placement, num_logits, capture_layers)
        cache.length = end
        return out

    def forward_host_rows(
        self, input_ids: Tensor, cache: StaticKVCache, slots: list[int], starts: list[int], *,
        capture_layers: tuple[int, ...] = (),
    ) -> ForwardOutput:
        """R requests' rows in one row-invariant forward (CPU float32): input_ids [R, T], row r at
        positions [starts[r], starts[r] + T) of cache slot slots[r] (host ints, distinct slots).
        Each row's logits and K/V are the bits of its own one-request forward (HostRowsPlacement)."""
        R, T = input_ids.shape
        if not cpu_float32_inference(self.embed.weight):
            raise ValueError("forward_host_rows is the CPU float32 path; on other devices use forward_rows")
        if len(slots) != R or len(starts) != R or len(set(slots)) != R:
            raise ValueError(f"{R} rows need {R} distinct slots and starts, got {slots} and {starts}")
        if max(starts) + T > cache.capacity:
            raise ValueError(f"positions up to {max(starts) + T} exceed the cache capacity {cache.capacity}")
        with blas_owns_the_cores(self.embed.weight):
            placement = HostRowsPlacement(self, cache, slots, starts, T, self.dtype)
            return self._run(input_ids, placement, None, capture_layers)

    def forward_rows(
        self,
        input_ids: Tensor,
        cache: StaticKVCache,
        slots: Tensor,
        starts: Tensor,
        *,
        capture_layers: tuple[int, ...] = (),
        logit_index: Tensor | None = None,
        key_window: int | None = None,
        row_invariant: bool = False,
    ) -> ForwardOutput:
        """R rows of T tokens, row r at positions starts[r] + [0, T) of cache slot slots[r] (device
        tensors [R] long; the caller keeps every position inside the cache). No host sync and no
        shape from the data: this is the forward the model runner captures in CUDA graphs.

        logit_index: a prefill chunk: logits only for that token of each row (device tensor [1]
        long: the chunk's last real one, the rest is padding; or [R]: row r's own, for several
        requests' chunks in one forward). key_window: its attention for a
        long T through SDPA over the keys [0, key_window), which must hold every row's positions;
        without it, the decode attention kernel (route a's prefill: a chunk's tokens then get the
        bits, and write the K/V, of their own one-token steps, however the prompt was chunked).
        row_invariant: exact mode's route a (DevicePlacement): every token's logits are the bits
        of its own one-row, one-token step."""
        if key_window is not None and logit_index is None:
            raise ValueError("a key window is a prefill chunk's: give logit_index too")
        if row_invariant and key_window is not None:
            raise ValueError("a prefill chunk with a key window is not a row-invariant step (its attention is "
                             "SDPA's): route a's chunks attend through decode attention, without key_window")
        placement = DevicePlacement(self, cache, slots, starts, input_ids.shape[1], key_window=key_window,
                                    row_invariant=row_invariant)
        return self._run(input_ids, placement, None, capture_layers, logit_index)

    def _run(
        self, input_ids: Tensor, placement: Placement, num_logits: int | None, capture_layers: tuple[int, ...],
        logit_index: Tensor | None = None,
        key_window: int | None = None,
    ) -> ForwardOutput:
        residual = self.embed(input_ids)  # [B, T, H]
        captured: dict[int, Tensor] = {}
        if -1 in capture_layers:
            captured[-1] = residual
        delta: Tensor | None = None
        for i, layer in enumerate(self.layers):
            delta, residual = layer(delta, residual, placement, i)
            if i in capture_layers:
                captured[i] = residual + delta  # the layer's output (the next norm adds the same)
        if num_logits is not None:
            residual = residual[:, -num_logits:].contiguous()
            delta = delta[:, -num_logits:].contiguous() if delta is not None else None
        elif logit_index is not None and logit_index.numel() == 1:  # a device index: no host value, so it can be captured
            residual = residual.index_select(1, logit_index)
            delta = delta.index_select(1, logit_index) if delta is not None else None
        elif logit_index is not None:  # [B]: each row its own token (batched prefill chunks)
            at = logit_index.view(-1, 1, 1).expand(-1, 1, residual.shape[-1])  # [B, 1, H]
            residual = residual.gather(1, at)
            delta = delta.gather(1, at) if delta is not None else None
        h, _ = placement.norm(delta, residual, self.norm.weight, self.norm.eps)
        logits = self.lm_head(h, placement.row_invariant)  # [B, K, V]
        hidden = torch.cat([captured[i] for i in capture_layers], dim=-1) if capture_layers else None
        return ForwardOutput(logits=logits, hidden=hidden)
