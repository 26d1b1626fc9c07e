"""Our decoder's logits equal transformers' own implementation of the same weights (float32)."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, ours_from_hf, tiny_hf_model

from agentspark.model import linear

VARIANTS = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    (
        "llama",
        {"rope_parameters": {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    ),
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0}}),
    ("llama", {"num_key_value_heads": 4}),  # MHA, no GQA
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": True, "attention_bias": True}),
]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def ours_prefill_then_decode(model, ids: torch.Tensor, prefill: int, *, row_invariant: bool) -> torch.Tensor:
    cache = model.new_cache(256)
    chunks = [model(ids[:, :prefill], cache, 0).logits]
    for t in range(prefill, ids.shape[1]):  # cached decode steps, one token each
        chunks.append(model(ids[:, t : t + 1], cache, t, row_invariant=row_invariant).logits)
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("family,overrides", VARIANTS, ids=lambda v: str(v))
def test_tiny_logits_match_transformers(family, overrides):
    hf = tiny_hf_model(family, seed=3, **overrides)
    ours = ours_from_hf(hf)
    ids = torch.randint(0, hf.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(ids).logits
        for row_invariant in (False, True):
            got = ours_prefill_then_decode(ours.model, ids, prefill=20, row_invariant=row_invariant)  # 20 decode steps
            assert relative_error(got, ref) < 1e-4


def test_family_flags_follow_the_config():
    qwen2 = ours_from_hf(tiny_hf_model("qwen2")).config
    qwen3 = ours_from_hf(tiny_hf_model("qwen3")).config
    llama = ours_from_hf(tiny_hf_model("llama")).config
    assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.qk_norm
    assert qwen3.qk_norm and qwen3.head_dim == 24
    assert not llama.qkv_bias and not llama.qk_norm


@pytest.mark.parametrize("route", ["blocks", "rows"])
@pytest.mark.parametrize("family,overrides", [("qwen3", {}), ("qwen2", {}), ("llama", {"attention_bias": True, "mlp_bias": True})],
                         ids=["qwen3", "qwen2", "llama-bias"])
def test_verify_rows_are_bitwise_one_row_steps(family, overrides, route, monkeypatch):
    """Row-invariant mode: a multi-row step computes every row exactly as a one-row step does,
    on both routes of its matmuls (linear.py), for verifies of 2..17 rows (17: two oneDNN calls)."""
    if route == "blocks" and linear.ROW_KERNEL != "blocks":
        pytest.skip("torch without oneDNN")
    monkeypatch.setattr(linear, "ROW_KERNEL", route)
    hf = tiny_hf_model(family, seed=5, **overrides)
    model = ours_from_hf(hf).model
    ids = torch.randint(0, 96, (1, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.new_cache(64)
        model(ids[:, :20], cache, 0)
        rows = [model(ids[:, t : t + 1], cache, t, row_invariant=True).logits for t in range(20, 37)]
        for T in (2, 3, 4, 5, 9, 16, 17):
            block = model(ids[:, 20 : 20 + T], cache, 20, row_invariant=True).logits
            assert torch.equal(block, torch.cat(rows[:T], dim=1)), f"{T} rows"


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_runs_close_to_float32(family):
    hf = tiny_hf_model(family, seed=7)
    ours32 = ours_from_hf(hf).model
    ours16 = ours_from_hf(hf).model.to(torch.bfloat16)
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a = ours32(ids, ours32.new_cache(32), 0).logits
        b = ours16(ids, ours16.new_cache(32), 0).logits.float()
    assert b.dtype == torch.float32 and relative_error(b, a) < 5e-2


def test_default_model_matches_transformers(default_model):
    """The real SmolLM2-135M: prefill and >= 16 cached decode steps within 1e-4 relative."""
    from transformers import AutoModelForCausalLM

    from agentspark.model.loading import resolve_folder

    hf = AutoModelForCausalLM.from_pretrained(str(resolve_folder("default")), dtype=torch.float32).eval()
    ids = default_model.tokenizer.encode("The capital of France is Paris. The capital of Italy is")
    ids = torch.tensor([ids + list(range(1000, 1020))])  # 20 more positions to decode one by one
    with torch.inference_mode():
        ref = hf(ids).logits
        got = ours_prefill_then_decode(default_model.model, ids, prefill=ids.shape[1] - 20, row_invariant=True)
    assert relative_error(got, ref) < 1e-4


def test_captured_hidden_states_are_transformers_layer_outputs():
    """capture_layers returns the raw residual stream after the chosen layers (-1 = embeddings),
    concatenated in request order, from the same forward that yields the logits."""
    hf = tiny_hf_model("llama", seed=9, num_hidden_layers=3)
    ours = ours_from_hf(hf).model
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = hf(ids, output_hidden_states=True).hidden_states  # (embeddings, layer 0, 1, 2 (normed))
        out = ours(ids, ours.new_cache(16), 0, capture_layers=(1, -1, 0))
    expected = torch.cat([ref[2], ref[0], ref[1]], dim=-1)  # HF index l+1 is layer l's output
    assert out.hidden.shape == (1, 10, 3 * 64)
    assert torch.allclose(out.hidden, expected, atol=1e-5, rtol=1e-4)
