"""The EAGLE-3-style drafter: lossless under the engine, DeepSpec's Eagle3 checkpoint layout, our
round trip, multi-turn cache reuse, and a step API that is consistent between a causal pass over
many rows and one row at a time (what a training objective builds on).

Greedy: speculative output equals plain output token for token (float32, CPU) on tiny random
targets of each family, for draft lengths 1..8.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_learned_drafters import (  # noqa: F401 (fixture)
    VOCAB,
    assert_sampled_draft_stays_in_even_vocab,
    family,
    make_drafter,
    random_drafter_model,
)

from agentspark import Engine, SamplingParams
from agentspark.drafters.checkpoint import build_model, save_drafter
from agentspark.drafters.eagle3 import Eagle3Drafter
from agentspark.drafters.factory import build_drafter
from agentspark.drafters.learned_config import LearnedDrafterConfig
from agentspark.errors import UnsupportedModelError
from agentspark.sampling import probs_from_logits

EAGLE3_KEYS = {
    "fc.weight", "norm.weight", "layers.0.hidden_norm.weight", "layers.0.input_layernorm.weight",
    "layers.0.post_attention_layernorm.weight", "layers.0.self_attn.q_proj.weight",
    "layers.0.self_attn.k_proj.weight", "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
    "layers.0.self_attn.q_norm.weight", "layers.0.self_attn.k_norm.weight", "layers.0.mlp.gate_proj.weight",
    "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
}


def test_greedy_lossless_all_draft_lengths(family):  # noqa: F811
    target, prompts, reference, params = family
    model = random_drafter_model(target, "eagle3", seed=51)
    assert set(model.state_dict()) == EAGLE3_KEYS
    accepted = 0
    for k in range(1, 9):
        engine = Engine(target, make_drafter(model, target), max_draft=k, schedule="full")
        for prompt, ref in zip(prompts, reference):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref, f"eagle3 k={k} prompt={prompt}"
            assert all(r.verified <= min(k, model.cfg.block_size) for r in result.stats.rounds)
            accepted += sum(r.accepted for r in result.stats.rounds)
    assert accepted > 0  # drafts were accepted: the multi-token path ran


def reference_probs(model, target, seq: list[int], drafted: list[int], params) -> torch.Tensor:
    """q of each draft slot recomputed from scratch: one target forward over seq[:-1] for the
    features, pairs (feature i, token i+1), then the drafts teacher-forced, each step a full causal
    pass over everything (no drafter cache)."""
    ids = torch.tensor([seq[:-1]])
    feats = target.model(ids, target.model.new_cache(len(seq)), 0, capture_layers=model.cfg.target_layer_ids).hidden
    g, e = model.fuse_features(feats), model.embed(torch.tensor([seq[1:]]))  # [1, A, H] each
    probs = []
    for tok in drafted:
        out, _, _ = model.step(e, g, torch.arange(g.shape[1])[None])
        probs.append(probs_from_logits(model.to_target_vocab(model.logits(out[0, -1:]).float()), params))
        g, e = torch.cat([g, out[:, -1:]], dim=1), torch.cat([e, model.embed(torch.tensor([[tok]]))], dim=1)
    return torch.cat(probs)


def test_proposals_match_a_from_scratch_recomputation(family):  # noqa: F811
    target, prompts, _, params = family
    model = random_drafter_model(target, "eagle3", seed=58, draft_vocab=tuple(range(1, VOCAB)))
    drafter = make_drafter(model, target)
    engine = Engine(target, drafter, max_draft=3, schedule="full")
    for prompt in prompts[:3]:  # the drafter's cache after many rounds of observe/verify/rollback
        result = engine.generate(prompt, params)
        seq = (prompt + result.token_ids)[: drafter.length + 1]
        drafter.params, drafter.generator = SamplingParams(temperature=1.0), torch.Generator().manual_seed(59)
        draft = drafter.propose(seq, 7)
        assert len(draft) == 7
        with torch.no_grad():
            ref = reference_probs(model, target, seq, draft.tokens.tolist(), drafter.params)
        assert torch.allclose(draft.probs, ref, atol=1e-4)


def test_reduced_vocab_is_lossless_and_proposes_inside_it(family):  # noqa: F811
    target, prompts, reference, params = family
    vocab = tuple(range(0, VOCAB, 2))  # the drafter can only propose even tokens
    model = random_drafter_model(target, "eagle3", seed=52, draft_vocab=vocab)
    drafter = make_drafter(model, target)
    engine = Engine(target, drafter, max_draft=7, schedule="full")
    for prompt, ref in zip(prompts, reference):
        assert engine.generate(prompt, params).token_ids == ref
    result = engine.generate(prompts[0], params)
    draft = drafter.propose((prompts[0] + result.token_ids)[: drafter.length + 1], 7)
    assert len(draft) == 7 and all(int(t) % 2 == 0 for t in draft.tokens)
    assert draft.confidences is None
    assert_sampled_draft_stays_in_even_vocab(drafter, draft, (prompts[0] + result.token_ids)[: drafter.length + 1])
    assert drafter.propose((prompts[0] + result.token_ids)[: drafter.length], 7).tokens.numel() == 0  # features missing


def test_step_causal_pass_equals_one_row_at_a_time(family):  # noqa: F811
    target = family[0]
    model = random_drafter_model(target, "eagle3", seed=53)
    H, T = model.cfg.hidden_size, 6
    g = torch.Generator().manual_seed(54)
    e = torch.randn(1, T, H, generator=g)
    hid = torch.randn(1, T, H, generator=g)
    positions = torch.arange(3, 3 + T)[None]
    with torch.no_grad():
        full, k, v = model.step(e, hid, positions)
        assert full.shape == (1, T, H) and k.shape == (1, model.cfg.num_kv_heads, T, model.cfg.head_dim)
        last, k2, _ = model.step(e, hid, positions, last_only=True)
        assert last.shape == (1, 1, H) and torch.allclose(last, full[:, -1:], atol=1e-5) and torch.equal(k, k2)
        causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
        masked, _, _ = model.step(e, hid, positions, mask=causal)
        assert torch.allclose(masked, full, atol=1e-5)
        past_k = past_v = None
        for t in range(T):
            out, kt, vt = model.step(e[:, t : t + 1], hid[:, t : t + 1], positions[:, t : t + 1], past_k, past_v)
            assert torch.allclose(out, full[:, t : t + 1], atol=1e-5)
            past_k = kt if past_k is None else torch.cat([past_k, kt], dim=2)
            past_v = vt if past_v is None else torch.cat([past_v, vt], dim=2)
        assert torch.allclose(past_k, k, atol=1e-6) and torch.allclose(past_v, v, atol=1e-6)
        assert model.logits(full).shape == (1, T, VOCAB)


def test_only_one_layer_is_supported(family):  # noqa: F811
    cfg = LearnedDrafterConfig.for_target(family[0].config, "eagle3", num_layers=2)
    with pytest.raises(UnsupportedModelError, match="draft_num_hidden_layers"):
        build_model(cfg)


def test_session_reuses_target_and_drafter_caches(family):  # noqa: F811
    target, prompts, _, params = family
    model = random_drafter_model(target, "eagle3", seed=55)
    engine = Engine(target, make_drafter(model, target), max_draft=7, schedule="full")
    plain = Engine(target)
    first = engine.generate(prompts[0], params, reuse_cache=True)
    follow = prompts[0] + first.token_ids + prompts[1]
    second = engine.generate(follow, params, reuse_cache=True)
    assert second.stats.prefill_tokens <= len(prompts[1]) + 2  # only (about) the appended part was prefilled
    assert second.token_ids == plain.generate(follow, params, speculative=False).token_ids
    third = prompts[0][:2] + prompts[2]  # diverges early: most is prefilled again, still lossless
    assert engine.generate(third, params, reuse_cache=True).token_ids == \
        plain.generate(third, params, speculative=False).token_ids


# ---- checkpoints ------------------------------------------------------------------------------

def deepspec_eagle3_checkpoint(tmp_path, target, layer_ids=(-1, 0, 1), **config_overrides):
    """A tiny checkpoint with exactly DeepSpec's Eagle3 config fields and state-dict keys (§2)."""
    t = target.config
    H, V, I, D, nh, nkv = t.hidden_size, t.vocab_size, t.intermediate_size, t.head_dim, t.num_heads, t.num_kv_heads
    m = len(layer_ids)
    g = torch.Generator().manual_seed(56)

    def w(*shape):
        return (0.1 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    p = "layers.0."
    sd = {
        "embed_tokens.weight": w(V, H), "fc.weight": w(H, m * H), "norm.weight": 1 + w(H), "lm_head.weight": w(V, H),
        p + "hidden_norm.weight": 1 + w(H), p + "input_layernorm.weight": 1 + w(H),
        p + "self_attn.q_proj.weight": w(nh * D, 2 * H), p + "self_attn.k_proj.weight": w(nkv * D, 2 * H),
        p + "self_attn.v_proj.weight": w(nkv * D, 2 * H), p + "self_attn.o_proj.weight": w(H, nh * D),
        p + "self_attn.q_norm.weight": 1 + w(D), p + "self_attn.k_norm.weight": 1 + w(D),
        p + "post_attention_layernorm.weight": 1 + w(H), p + "mlp.gate_proj.weight": w(I, H),
        p + "mlp.up_proj.weight": w(I, H), p + "mlp.down_proj.weight": w(H, I),
    }
    config = {
        "architectures": ["Qwen3Eagle3Model"], "model_type": "qwen3", "vocab_size": V, "hidden_size": H,
        "intermediate_size": I, "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": D,
        "num_hidden_layers": 1, "draft_num_hidden_layers": 1, "num_target_layers": t.num_layers,
        "layer_types": ["full_attention"], "target_model_name_or_path": "Qwen/Qwen3-4B",
        "target_layer_ids": list(layer_ids), "ttt_length": 7, "step_loss_decay": 0.8, "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
        "max_position_embeddings": 512, "torch_dtype": "bfloat16", "attention_bias": False,
    }
    config.update(config_overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(sd, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_deepspec_checkpoint_loads_and_decodes_losslessly(tmp_path, family):  # noqa: F811
    target, prompts, reference, params = family
    path = deepspec_eagle3_checkpoint(tmp_path / "eagle3", target)
    drafter = build_drafter(f"learned:{path}", target)
    assert isinstance(drafter, Eagle3Drafter)
    assert drafter.name == "eagle3" and drafter.capture_layers == (-1, 0, 1)
    H = target.config.hidden_size
    assert drafter.model.cfg.block_size == 7 and drafter.model.fc.weight.shape == (H, 3 * H)
    assert drafter.model.layers[0].self_attn.q_proj.weight.shape[1] == 2 * H
    engine = Engine(target, drafter, max_draft=7, schedule="full")
    assert [engine.generate(p, params).token_ids for p in prompts] == reference

    deep = deepspec_eagle3_checkpoint(tmp_path / "deep", target, draft_num_hidden_layers=2)
    with pytest.raises(UnsupportedModelError, match="draft_num_hidden_layers"):
        build_drafter(f"learned:{deep}", target)


def test_our_checkpoint_round_trip(tmp_path, family):  # noqa: F811
    target, prompts, _, params = family
    model = random_drafter_model(target, "eagle3", seed=57, draft_vocab=tuple(range(VOCAB - 4)))
    save_drafter(model, tmp_path / "f32", storage="float32")
    with safe_open(str(tmp_path / "f32" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == EAGLE3_KEYS  # frozen embedding and head not stored
    saved = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert saved["architectures"] == ["Qwen3Eagle3Model"] and saved["ttt_length"] == 7
    a = build_drafter(f"learned:{tmp_path / 'f32'}", target)
    b = make_drafter(model, target)
    ids = prompts[0]
    for d in (a, b):
        Engine(target, d, max_draft=7).generate(ids, params)
    assert a.length == b.length
    seq = (ids + Engine(target).generate(ids, params, speculative=False).token_ids)[: a.length + 1]
    da, db = a.propose(seq, 7), b.propose(seq, 7)
    assert len(da) == 7
    assert torch.equal(da.tokens, db.tokens) and da.probs is None and db.probs is None  # greedy: deterministic
    again = a.propose(seq, 7)  # proposing twice from the same state gives the same draft
    assert torch.equal(again.tokens, da.tokens)
