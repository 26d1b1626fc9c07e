"""``export_deepspec`` / ``agentspark export-drafter``: a learned drafter written as a DeepSpec
checkpoint (../shared/docs/deepspec-format.md §2) reloads through our DeepSpec loader with every
parameter as it was (bitwise in float32), decodes losslessly, and has exactly the key names, shapes
and config fields the doc lists. Tiny random targets of each family, CPU, float32."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from agentspark import Engine, SamplingParams
from agentspark.cli import main
from agentspark.drafters.checkpoint import build_model, load_drafter_model, place_like_target, save_drafter
from agentspark.drafters.export import export_deepspec
from agentspark.drafters.learned_config import LearnedDrafterConfig
from agentspark.errors import InvalidRequestError
from conftest import FAMILIES, ours_from_hf, tiny_hf_model
from test_greedy_equivalence import tiny_prompts
from test_learned_drafters import make_drafter

VOCAB = 16  # small: a random drafter guesses right often enough that rounds accept drafts
LAYER_IDS = (0, 1, 2, 3, 4)  # m = 5 as in every DeepSpec config (§1.1, §1.4: EAGLE-3 requires 5)
PARAMS = SamplingParams(max_new_tokens=16)
CASES = {  # name: (method, LearnedDrafterConfig.for_target options, changes after)
    "dspark": ("dspark", {"num_layers": 2, "markov_rank": 8}, {}),
    "dspark-rnn-reduced": ("dspark", {"markov_rank": 8, "draft_vocab": tuple(range(0, VOCAB, 2))},
                           {"markov_head_type": "rnn", "confidence_temperatures": (1.5,) * 7}),
    "dflash": ("dflash", {"num_layers": 2}, {}),
    "dflash-reduced": ("dflash", {"draft_vocab": tuple(range(1, VOCAB, 2))}, {}),
    "eagle3": ("eagle3", {}, {}),
    "eagle3-reduced": ("eagle3", {"draft_vocab": tuple(range(0, VOCAB, 3))}, {}),
}


_TARGETS: dict = {}


def tiny_target(family: str = "qwen3"):
    """A tiny random target of ``family`` with 6 layers (room for 5 feature layers), built once."""
    if family not in _TARGETS:
        _TARGETS[family] = ours_from_hf(tiny_hf_model(family, seed=51, vocab_size=VOCAB, num_hidden_layers=6))
    return _TARGETS[family]


def drafter_model(target, case: str, seed: int = 52):
    method, options, changes = CASES[case]
    cfg = LearnedDrafterConfig.for_target(target.config, method, target_layer_ids=LAYER_IDS,
                                          mask_token_id=VOCAB - 1, **options).with_(**changes)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # norms away from 1: no degenerate drafts
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return place_like_target(model, target).attach_target(target.model)


def file_tensors(out) -> dict[str, torch.Tensor]:
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---- what deepspec-format.md §2 specifies ------------------------------------------------------

def expected_shapes(cfg: LearnedDrafterConfig) -> dict[str, tuple[int, ...]]:
    """§2 "DSpark/DFlash state dict" table and "Eagle3 state dict" list: no ``model.`` prefix, the
    frozen target copies embed_tokens / lm_head [V, H] included, Markov heads over the full V."""
    V, H, I, hd = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nh, nkv, m, r = cfg.num_heads, cfg.num_kv_heads, cfg.num_features, cfg.markov_rank
    attn_in = 2 * H if cfg.method == "eagle3" else H  # EAGLE-3's q/k/v read [embedding; hidden]
    shapes = {"embed_tokens.weight": (V, H), "fc.weight": (H, m * H), "norm.weight": (H,), "lm_head.weight": (V, H)}
    if cfg.method != "eagle3":
        shapes["hidden_norm.weight"] = (H,)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                   p + "self_attn.q_proj.weight": (nh * hd, attn_in), p + "self_attn.k_proj.weight": (nkv * hd, attn_in),
                   p + "self_attn.v_proj.weight": (nkv * hd, attn_in), p + "self_attn.o_proj.weight": (H, nh * hd),
                   p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                   p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I)}
        if cfg.method == "eagle3":
            shapes[p + "hidden_norm.weight"] = (H,)
    if r:
        shapes |= {"markov_head.markov_w1.weight": (V, r), "markov_head.markov_w2.weight": (V, r)}
        if cfg.markov_head_type == "rnn":
            shapes |= {"markov_head.joint_proj.weight": (3 * r, 2 * r + H), "markov_head.joint_proj.bias": (3 * r,)}
    if cfg.enable_confidence_head:
        width = H + (r if cfg.confidence_head_with_markov else 0)
        shapes |= {"confidence_head.proj.weight": (1, width), "confidence_head.proj.bias": (1,)}
    return shapes


def check_config_fields(config: dict, cfg: LearnedDrafterConfig, target, dtype: str) -> None:
    """§2 "config.json": a copy of the target's config as Qwen3 plus the drafter's overrides."""
    t = target.config
    L = cfg.num_layers
    assert config["model_type"] == "qwen3"
    for key, value in {"vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                       "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
                       "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
                       "num_target_layers": t.num_layers, "num_hidden_layers": L, "tie_word_embeddings": False,
                       "attention_bias": False, "layer_types": ["full_attention"] * L,
                       "target_layer_ids": list(LAYER_IDS), "dtype": dtype}.items():
        assert config[key] == value, key
    # transformers 5 (DeepSpec's pin) stores RoPE as rope_parameters; the loader accepts either
    assert config["rope_parameters"] == {"rope_theta": t.rope_theta, "rope_type": "default"}
    assert config["rope_theta"] == t.rope_theta
    for key in ("hidden_act", "use_sliding_window", "attention_dropout", "eos_token_id"):  # Qwen3Config's own
        assert key in config, key
    assert not [k for k in config if k.startswith("agentspark_")]  # DeepSpec has none of ours
    if cfg.method == "eagle3":  # modeling/eagle3/qwen3/config.py:28-38
        assert config["architectures"] == ["Qwen3Eagle3Model"]
        assert config["num_hidden_layers"] == config["draft_num_hidden_layers"] == 1
        assert config["ttt_length"] == 7 and config["step_loss_decay"] == 0.8
        assert config["target_model_name_or_path"] == target.source
        return
    # modeling/dspark/qwen3/config.py:37-56 (DSpark and DFlash both)
    assert config["architectures"] == ["Qwen3DSparkModel"]
    assert config["block_size"] == 7 and config["mask_token_id"] == VOCAB - 1 and config["num_anchors"] == 512
    assert config["markov_rank"] == cfg.markov_rank and config["enable_confidence_head"] == cfg.enable_confidence_head
    assert ("markov_head_type" in config) == (cfg.markov_rank > 0)  # only when the rank is > 0
    assert ("confidence_head_with_markov" in config) == cfg.enable_confidence_head  # only when enabled
    if cfg.method == "dflash":
        assert config["markov_rank"] == 0 and config["enable_confidence_head"] is False
    else:
        assert config["markov_head_type"] == cfg.markov_head_type and config["confidence_head_with_markov"] is True


# ---- the export --------------------------------------------------------------------------------

# every case on qwen3; the other families (whose configs differ) with DSpark
FAMILY_CASES = [("qwen3", c) for c in CASES] + [(f, "dspark") for f in FAMILIES if f != "qwen3"]


@pytest.mark.parametrize(("family", "case"), FAMILY_CASES, ids=[f"{f}-{c}" for f, c in FAMILY_CASES])
def test_export_reloads_exactly_decodes_losslessly_and_matches_the_doc(tmp_path, family, case):
    target = tiny_target(family)
    model = drafter_model(target, case)
    cfg = model.cfg
    out = export_deepspec(model, target, tmp_path / "out", dtype="float32")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    # (c) key names and shapes, and config fields, as §2 lists them
    tensors = file_tensors(out)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_shapes(cfg.with_(draft_vocab=None))
    assert all(v.dtype == torch.float32 for v in tensors.values())
    assert torch.equal(tensors["embed_tokens.weight"], target.model.embed.weight)  # the target's frozen copies
    assert torch.equal(tensors["lm_head.weight"], target.model.lm_head.weight_t.t())
    config = json.loads((out / "config.json").read_text())
    check_config_fields(config, cfg, target, "float32")
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(str(out))  # what DeepSpec's from_pretrained reads it as
    assert type(hf).__name__ == "Qwen3Config" and hf.architectures == config["architectures"]

    # (a) through our DeepSpec loader: every parameter bitwise as it was
    reloaded = load_drafter_model(out, target)
    before, after = dict(model.named_parameters()), dict(reloaded.named_parameters())
    assert sorted(before) == sorted(after)
    for name, p in before.items():
        if cfg.draft_vocab is not None and name == "markov_head.markov_w2.weight":
            ids = torch.tensor(cfg.draft_vocab)  # the reduced rows mapped back to their token ids, zero elsewhere
            assert torch.equal(after[name][ids], p)
            others = torch.ones(VOCAB, dtype=torch.bool).index_fill_(0, ids, False)
            assert bool((after[name][others] == 0).all())
        else:
            assert torch.equal(after[name], p), name
    assert reloaded.cfg.draft_vocab is None

    # (b) lossless: greedy speculative output equals plain decoding token for token
    prompts = tiny_prompts(VOCAB, 2, seed=53)
    for prompt in prompts:
        plain = Engine(target).generate(prompt, PARAMS, speculative=False)
        spec = Engine(target, make_drafter(reloaded, target)).generate(prompt, PARAMS)
        assert spec.token_ids == plain.token_ids
    if cfg.draft_vocab is None:  # the same drafts as the original: the same rounds accepted
        a, b = (Engine(target, make_drafter(m, target), max_draft=7, schedule="full").generate(prompts[0], PARAMS)
                for m in (model, reloaded))
        assert [r.accepted for r in a.stats.rounds] == [r.accepted for r in b.stats.rounds]


@pytest.mark.parametrize("case", ["dspark", "dflash", "eagle3"])
def test_bfloat16_export_is_the_drafter_rounded(tmp_path, case):
    target = tiny_target()
    model = drafter_model(target, case, seed=54)
    out = export_deepspec(model, target, tmp_path / "out")  # bfloat16: DeepSpec's
    tensors = file_tensors(out)
    assert all(v.dtype == torch.bfloat16 for v in tensors.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = load_drafter_model(out, target)
    for name, p in model.named_parameters():
        assert torch.equal(dict(reloaded.named_parameters())[name], p.to(torch.bfloat16).float()), name
    prompt = tiny_prompts(VOCAB, 1, seed=55)[0]
    spec = Engine(target, make_drafter(reloaded, target)).generate(prompt, PARAMS)
    assert spec.token_ids == Engine(target).generate(prompt, PARAMS, speculative=False).token_ids


def test_export_refuses_a_non_empty_out_unless_forced(tmp_path):
    target = tiny_target()
    model = drafter_model(target, "dflash")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    with pytest.raises(InvalidRequestError, match="not empty.*--force"):
        export_deepspec(model, target, out)
    with pytest.raises(InvalidRequestError, match="existing file"):
        export_deepspec(model, target, out / "notes.txt", force=True)
    with pytest.raises(InvalidRequestError, match="dtype"):
        export_deepspec(model, target, tmp_path / "new", dtype="int8")
    export_deepspec(model, target, out, force=True)  # replaces the checkpoint files, keeps the rest
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    load_drafter_model(out, target)


# ---- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def target_folder(tmp_path_factory):
    """A tiny qwen3 target as an HF folder (config.json + safetensors), for --model."""
    folder = tmp_path_factory.mktemp("target")
    tiny_hf_model("qwen3", seed=56, vocab_size=VOCAB, num_hidden_layers=6).save_pretrained(str(folder))
    return folder


def test_cli_exports_an_int8_drafter_of_ours(tmp_path, capsys, target_folder):
    from agentspark.model.loading import load_model

    target = load_model(str(target_folder))
    save_drafter(drafter_model(target, "dspark"), tmp_path / "ours", storage="int8")
    out = tmp_path / "export"
    code = main(["export-drafter", f"learned:{tmp_path / 'ours'}", "--format", "deepspec", str(out),
                 "--model", str(target_folder), "--dtype", "float32"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "dspark" in printed and "Qwen3DSparkModel" in printed and "model.safetensors" in printed and "KiB" in printed
    ours = load_drafter_model(tmp_path / "ours", target)  # int8 dequantized by our loader
    exported = load_drafter_model(out, target)
    for name, p in ours.named_parameters():  # the dequantized weights, written as float32
        assert torch.equal(dict(exported.named_parameters())[name], p), name
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] == json.loads((target_folder / "config.json").read_text()).get("bos_token_id")
    prompt = tiny_prompts(VOCAB, 1, seed=57)[0]
    spec = Engine(target, make_drafter(exported, target)).generate(prompt, PARAMS)
    assert spec.token_ids == Engine(target).generate(prompt, PARAMS, speculative=False).token_ids
    # the same folder again (plain PATH as SPEC): refused, then replaced with --force
    args = ["export-drafter", str(tmp_path / "ours"), "--format", "deepspec", str(out), "--model", str(target_folder)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentspark: error:") and "not empty" in err and "--force" in err
    assert main([*args, "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize(("args", "message"), [
    (["ngram", "--format", "deepspec"], "not a learned drafter"),
    (["learned:/no/such/drafter", "--format", "deepspec"], "no drafter at"),
    (["default", "--format", "gguf"], "invalid choice"),
    (["default"], "--format"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["export-drafter", *args[:1], str(tmp_path / "out"), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentspark: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the mistake was found
