"""Learned drafters (DSpark, DFlash, EAGLE-3) run by the engine are lossless, load DeepSpec-format
checkpoints with exactly DeepSpec's keys and config fields, and refuse what does not fit.

Greedy: speculative output equals plain output token for token (float32, CPU) on tiny random
targets of each family, for draft lengths 1..8. Sampling losslessness of these drafters is in
test_learned_sampling.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from agentspark import Engine, SamplingParams
from agentspark.drafters.checkpoint import build_model, place_like_target, save_drafter
from agentspark.drafters.dspark import DSparkDrafter
from agentspark.drafters.factory import build_drafter
from agentspark.drafters.learned_config import LearnedDrafterConfig
from agentspark.errors import CorruptModelError, DrafterMismatchError, UnsupportedModelError
from conftest import FAMILIES, ours_from_hf, tiny_hf_model
from test_greedy_equivalence import tiny_prompts

VOCAB = 16  # small: a random drafter then guesses right often enough to exercise acceptance
N_PROMPTS = 8
NEW_TOKENS = 12


def random_drafter_model(target, method: str, seed: int, **overrides):
    cfg = LearnedDrafterConfig.for_target(target.config, method, **overrides)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # norms away from 1 and a confident confidence head: no degenerate drafts
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return place_like_target(model, target).attach_target(target.model)


def make_drafter(model, target):
    if model.cfg.method == "eagle3":
        from agentspark.drafters.eagle3 import Eagle3Drafter

        return Eagle3Drafter(model)
    return DSparkDrafter(model)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    target = ours_from_hf(tiny_hf_model(request.param, seed=31, vocab_size=VOCAB, num_hidden_layers=3))
    prompts = tiny_prompts(VOCAB, N_PROMPTS, seed=32)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    plain = Engine(target)
    reference = [plain.generate(p, params, speculative=False).token_ids for p in prompts]
    return target, prompts, reference, params


METHODS = [
    ("dspark", {}),
    ("dspark", {"markov_rank": 8}),
    ("dflash", {}),
]


@pytest.mark.parametrize(("method", "overrides"), METHODS, ids=["dspark", "dspark-r8", "dflash"])
def test_greedy_lossless_all_draft_lengths(family, method, overrides):
    target, prompts, reference, params = family
    model = random_drafter_model(target, method, seed=33, **overrides)
    accepted = 0
    for k in range(1, 9):
        engine = Engine(target, make_drafter(model, target), max_draft=k, schedule="full")
        for prompt, ref in zip(prompts, reference):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref, f"{method} k={k} prompt={prompt}"
            assert all(r.verified <= min(k, model.cfg.block_size) for r in result.stats.rounds)
            accepted += sum(r.accepted for r in result.stats.rounds)
    assert accepted > 0  # drafts were accepted: the multi-token path ran


def test_rnn_markov_head_and_reduced_vocab_are_lossless(family):
    target, prompts, reference, params = family
    vocab = tuple(range(0, VOCAB, 2))  # the drafter can only propose even tokens
    model = random_drafter_model(target, "dspark", seed=34, draft_vocab=vocab)
    torch.manual_seed(35)
    rnn_cfg = LearnedDrafterConfig.for_target(target.config, "dspark").with_(markov_head_type="rnn")
    rnn = place_like_target(build_model(rnn_cfg), target).attach_target(target.model)
    for m in (model, rnn):
        engine = Engine(target, make_drafter(m, target), max_draft=7, schedule="full")
        for prompt, ref in zip(prompts, reference):
            result = engine.generate(prompt, params)
            assert result.token_ids == ref
    drafter = make_drafter(model, target)
    result = Engine(target, drafter, max_draft=7, schedule="full").generate(prompts[0], params)
    draft = drafter.propose((prompts[0] + result.token_ids)[: drafter.length + 1], 7)
    assert len(draft) and all(int(t) % 2 == 0 for t in draft.tokens)
    assert_sampled_draft_stays_in_even_vocab(drafter, draft, (prompts[0] + result.token_ids)[: drafter.length + 1])


def assert_sampled_draft_stays_in_even_vocab(drafter, greedy_draft, seq: list[int]) -> None:
    """A drafter over the even tokens: its greedy draft carries no q (deterministic); a sampled one
    stays in its vocabulary with q summing to one there and zero elsewhere."""
    assert greedy_draft.probs is None
    drafter.params, drafter.generator = SamplingParams(temperature=1.0), torch.Generator().manual_seed(7)
    sampled = drafter.propose(seq, 7)
    assert all(int(t) % 2 == 0 for t in sampled.tokens)
    assert torch.allclose(sampled.probs.sum(-1), torch.ones(len(sampled)))
    assert bool((sampled.probs[:, 1::2] == 0).all())  # q is zero outside the draft vocabulary


def test_adaptive_schedule_uses_confidences_and_stays_lossless(family):
    target, prompts, reference, params = family
    model = random_drafter_model(target, "dspark", seed=36)
    engine = Engine(target, make_drafter(model, target), max_draft=7, schedule="adaptive")
    lengths = set()
    for prompt, ref in zip(prompts, reference):
        result = engine.generate(prompt, params)
        assert result.token_ids == ref
        lengths |= {r.verified for r in result.stats.rounds}
    assert lengths  # the scheduler chose lengths from the drafter's confidences


def test_session_reuses_target_and_drafter_caches(family):
    target, prompts, _, params = family
    model = random_drafter_model(target, "dspark", seed=37)
    engine = Engine(target, make_drafter(model, target), max_draft=7, schedule="full")
    plain = Engine(target)
    first = engine.generate(prompts[0], params, reuse_cache=True)
    follow = prompts[0] + first.token_ids + prompts[1]
    second = engine.generate(follow, params, reuse_cache=True)
    assert second.stats.prefill_tokens < len(follow)  # only the appended part was prefilled
    assert second.token_ids == plain.generate(follow, params, speculative=False).token_ids


@pytest.mark.parametrize("method", ["dspark", "auto"])
def test_the_next_turn_prefills_only_what_was_appended(family, method):
    """A learned drafter records the tokens behind its features when it drafts, so the last
    round's commits were never recorded: the session's next turn kept its prefix only up to the
    last round and prefilled that round's tokens again (3-7 tokens a turn in the CPU demo). The
    engine tells the drafter at the request's end. Control: without that, it prefills more."""
    from agentspark.drafters.hybrid import HybridDrafter

    target, prompts, _, params = family
    model = random_drafter_model(target, "dspark", seed=38)

    def second_prefill(told: bool) -> tuple[int, int]:
        drafter = make_drafter(model, target)
        if method == "auto":
            drafter = HybridDrafter(drafter, min_gain=0.0)
        if not told:
            drafter.track = lambda tokens: None  # the control: never told at the end
        engine = Engine(target, drafter, max_draft=7, schedule="full")
        first = engine.generate(prompts[0], params, reuse_cache=True)
        follow = prompts[0] + first.token_ids + prompts[1]
        second = engine.generate(follow, params, reuse_cache=True)
        assert second.token_ids == Engine(target).generate(follow, params, speculative=False).token_ids
        return second.stats.prefill_tokens, len(prompts[1]) + 1  # the appended turn and the last token

    got, want = second_prefill(told=True)
    assert got == want
    control, _ = second_prefill(told=False)
    assert control > want


def test_track_after_a_stop_inside_the_accepted_block(family):
    """A stop (EOS, a stop string) can end a request inside the last round's accepted block: the
    drafter then holds features past the sequence's anchor. track records the tokens up to the
    anchor, so the next turn reuses that whole prefix (not only what the last draft had seen) and
    nothing past it. Control: a drafter told nothing reuses only up to its last draft's anchor."""
    target, prompts, _, _ = family
    model = random_drafter_model(target, "dspark", seed=39)
    seq = prompts[0] + [5, 6, 7, 8, 9, 10]

    def reused(told: bool) -> int:
        d = make_drafter(model, target)
        d.start(seq[:4], SamplingParams(), None)
        width = d.model.cfg.num_features * d.model.cfg.hidden_size  # m target layers' features
        d.observe(torch.randn(len(seq) + 1, width), 0)  # the whole sequence and a draft past it
        d.seen = seq[:3]  # as its last draft left it
        ended = seq[:-2]  # the stop cut three accepted positions off: the drafter holds len(seq) + 1
        if told:
            d.track(ended)
        d.start(ended + [11, 12], SamplingParams(), None)
        return d.reusable_context()

    assert reused(True) == len(seq) - 3  # every position before the ended sequence's anchor
    assert reused(False) == 3


# ---- checkpoints ------------------------------------------------------------------------------

def deepspec_checkpoint(tmp_path, target, *, markov_rank: int, confidence: bool):
    """A tiny checkpoint with exactly DeepSpec's config fields and state-dict keys (§2)."""
    t = target.config
    H, V, I, D, nh, nkv, L, r = t.hidden_size, t.vocab_size, t.intermediate_size, t.head_dim, t.num_heads, \
        t.num_kv_heads, 2, markov_rank
    g = torch.Generator().manual_seed(41)

    def w(*shape):
        return (0.1 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    sd = {"embed_tokens.weight": w(V, H), "fc.weight": w(H, 2 * H), "hidden_norm.weight": 1 + w(H),
          "norm.weight": 1 + w(H), "lm_head.weight": w(V, H)}
    for i in range(L):
        p = f"layers.{i}."
        sd |= {p + "input_layernorm.weight": 1 + w(H), p + "post_attention_layernorm.weight": 1 + w(H),
               p + "self_attn.q_proj.weight": w(nh * D, H), p + "self_attn.k_proj.weight": w(nkv * D, H),
               p + "self_attn.v_proj.weight": w(nkv * D, H), p + "self_attn.o_proj.weight": w(H, nh * D),
               p + "self_attn.q_norm.weight": 1 + w(D), p + "self_attn.k_norm.weight": 1 + w(D),
               p + "mlp.gate_proj.weight": w(I, H), p + "mlp.up_proj.weight": w(I, H), p + "mlp.down_proj.weight": w(H, I)}
    if r:
        sd |= {"markov_head.markov_w1.weight": w(V, r), "markov_head.markov_w2.weight": w(V, r)}
    if confidence:
        sd |= {"confidence_head.proj.weight": w(1, H + r), "confidence_head.proj.bias": w(1)}
    config = {
        "architectures": ["Qwen3DSparkModel"], "model_type": "qwen3", "vocab_size": V, "hidden_size": H,
        "intermediate_size": I, "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": D,
        "num_hidden_layers": L, "num_target_layers": t.num_layers, "block_size": 7, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"}, "max_position_embeddings": 512,
        "tie_word_embeddings": False, "layer_types": ["full_attention"] * L, "mask_token_id": V - 1,
        "target_layer_ids": [0, 1], "num_anchors": 512, "enable_confidence_head": confidence,
        "markov_rank": r, "torch_dtype": "bfloat16", "attention_bias": False,
    }
    if confidence:
        config["confidence_head_with_markov"] = True
    if r:
        config["markov_head_type"] = "vanilla"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(sd, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize(("rank", "confidence", "method"), [(16, True, "dspark"), (0, False, "dflash")])
def test_deepspec_checkpoint_loads_and_decodes_losslessly(tmp_path, family, rank, confidence, method):
    target, prompts, reference, params = family
    path = deepspec_checkpoint(tmp_path / method, target, markov_rank=rank, confidence=confidence)
    drafter = build_drafter(f"learned:{path}", target)
    assert drafter.name == method and drafter.capture_layers == (0, 1)
    assert (drafter.model.confidence_head is not None) == confidence
    engine = Engine(target, drafter, max_draft=7, schedule="full")
    assert [engine.generate(p, params).token_ids for p in prompts] == reference


def test_our_checkpoint_round_trip(tmp_path, family):
    target, prompts, _, params = family
    model = random_drafter_model(target, "dspark", seed=38, draft_vocab=tuple(range(VOCAB - 4)))
    model.cfg = model.cfg.with_(confidence_temperatures=(1.5,) * 7)
    save_drafter(model, tmp_path / "f32", storage="float32")
    save_drafter(model, tmp_path / "i8", storage="int8")
    assert "embed_tokens.weight" not in json.dumps(list(_keys(tmp_path / "f32")))  # frozen parts not stored
    a = build_drafter(f"learned:{tmp_path / 'f32'}", target)
    assert a.model.confidence_temperatures.tolist() == [1.5] * 7
    b = make_drafter(model, target)
    ids = prompts[0]
    for d in (a, b):
        Engine(target, d, max_draft=7).generate(ids, params)
    assert a.length == b.length
    seq = (ids + Engine(target).generate(ids, params, speculative=False).token_ids)[: a.length + 1]
    da, db = a.propose(seq, 7), b.propose(seq, 7)
    assert len(da) == 7
    assert torch.equal(da.tokens, db.tokens) and da.probs is None and db.probs is None  # greedy: deterministic
    q8 = build_drafter(f"learned:{tmp_path / 'i8'}", target)  # 8-bit: loads and stays lossless
    engine = Engine(target, q8, max_draft=7, schedule="full")
    plain = Engine(target)
    assert engine.generate(ids, params).token_ids == plain.generate(ids, params, speculative=False).token_ids


def _keys(path):
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_bad_checkpoints_get_clear_errors(tmp_path, family):
    target = family[0]
    path = deepspec_checkpoint(tmp_path / "ok", target, markov_rank=8, confidence=True)
    cfg = json.loads((path / "config.json").read_text())

    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "config.json").write_text(json.dumps({**cfg, "architectures": ["MedusaModel"]}))
    with pytest.raises(UnsupportedModelError, match="Qwen3DSparkModel"):
        build_drafter(f"learned:{tmp_path / 'arch'}", target)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**cfg, "num_target_layers": 30}))
    with pytest.raises(DrafterMismatchError, match="num_target_layers"):
        build_drafter(f"learned:{tmp_path / 'other'}", target)

    (tmp_path / "layer").mkdir()
    (tmp_path / "layer" / "config.json").write_text(json.dumps({**cfg, "target_layer_ids": [0, 2]}))
    with pytest.raises(UnsupportedModelError, match="last layer"):
        build_drafter(f"learned:{tmp_path / 'layer'}", target)

    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    sd.pop("fc.weight")
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "config.json").write_text(json.dumps(cfg))
    save_file(sd, str(tmp_path / "missing" / "model.safetensors"))
    with pytest.raises(CorruptModelError, match="fc.weight"):
        build_drafter(f"learned:{tmp_path / 'missing'}", target)

    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptModelError):
        build_drafter(f"learned:{tmp_path / 'corrupt'}", target)
