"""Model shapes for GPU timings with random weights (no large checkpoint reaches the GPU machine),
and the helpers every GPU timing script shares: building a random-weight model on the device,
its weight-read floor, the measured copy bandwidth."""

from __future__ import annotations

import statistics
import time

import torch

from agentspark.model.config import DecoderConfig
from agentspark.model.decoder import DecoderModel
from agentspark.model.layers import rope_tables

SHAPES = {
    "8b": dict(family="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
               num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
               max_position_embeddings=40960),
    "1.5b": dict(family="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                 num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                 max_position_embeddings=32768, qkv_bias=True, tie_word_embeddings=True),
    "135m": dict(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                 num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5,
                 max_position_embeddings=8192, tie_word_embeddings=True),
}
HF_NAMES = {"8b": "Qwen3-8B", "1.5b": "Qwen2.5-1.5B", "135m": "SmolLM2-135M"}


def shape_config(name: str) -> DecoderConfig:
    return DecoderConfig(**SHAPES[name])


def random_model(cfg: DecoderConfig, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> DecoderModel:
    """Our decoder with random weights (normal(0, 0.02) matrices, norms near 1), built on the device."""
    with torch.device("meta"):
        model = DecoderModel(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, device=device, dtype=torch.float32))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    cos, sin = rope_tables(cfg, cfg.max_position_embeddings)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    return model.eval().requires_grad_(False)


def weight_bytes_per_step(model: DecoderModel) -> int:
    """Bytes a decode step must read: every weight but the embedding table (one row of it)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embed."))


def copy_bandwidth(device: str = "cuda", gib: float = 4.0, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written (median)."""
    n = int(gib * (1 << 30)) // 2
    a = torch.randn(n // 2, device=device, dtype=torch.float32).to(torch.bfloat16)
    a = torch.cat([a, a])
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n * 2 / statistics.median(times)


def wall(fn, reps: int, warmup: int = 3) -> list[float]:
    """Seconds per call of fn (which must end in a host sync), after a warm-up."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
