"""GGUF weights read straight into the decoder (agentspark.model.gguf_read).

The tensors equal, bit for bit, what transformers' GGUF reader returns (what the first converter
stored as float32 safetensors), for the default model and tiny GGUFs of each family written with
the gguf package; the cache holds no weights; a load's peak memory stays near the model's size.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import pytest
import torch

from agentspark import load_model
from agentspark.errors import CorruptModelError, ModelLoadError
from agentspark.model.config import HF_ARCHITECTURES, DecoderConfig
from agentspark.model.default_model import default_gguf_path, sha256_of
from agentspark.model.gguf_convert import converted_dir_for, hf_architectures, is_converted
from agentspark.model.gguf_read import hf_name, hf_tensors, read_header
from agentspark.model.gguf_write import write_gguf
from agentspark.model.loading import resolve_folder, resolve_source
from agentspark.model.weights import build_model, hf_shapes, hf_slots, slot_view
from conftest import tiny_hf_model

Q = gguf.GGMLQuantizationType
CASES = [  # (family, type of the 2-D weights, config overrides): every family, tied and untied, biases
    ("llama", Q.Q8_0, {}),
    ("llama", Q.Q4_1, {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
    ("qwen2", Q.F16, {}),
    ("qwen2", Q.Q4_0, {"tie_word_embeddings": True}),
    ("qwen3", Q.BF16, {}),
    ("qwen3", Q.F32, {"tie_word_embeddings": True}),
]
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTSPARK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_gguf(folder: Path, family: str, qtype, seed: int = 0, drop: str | None = None, **overrides):
    hf = tiny_hf_model(family, seed=seed, **overrides)
    sd = {k: v for k, v in hf.state_dict().items() if k != drop}
    return write_gguf(folder / f"{family}-{qtype.name}.gguf", hf.config.to_dict(), sd, qtype), hf


def transformers_tensors(path: Path) -> dict[str, torch.Tensor]:
    """What the first converter stored: transformers' load_gguf_checkpoint, float32, HF names."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):  # names only
        skeleton = AutoModelForCausalLM.from_config(config)
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)
    return {k: v.contiguous() for k, v in parsed["tensors"].items()}


def assert_same_bits(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == ref.keys()
    for name, t in ours.items():
        r = ref[name]
        assert t.dtype == r.dtype and t.shape == r.shape, name
        assert torch.equal(t.view(BITS[t.dtype]), r.view(BITS[r.dtype])), name


def config_of(gguf_path: Path) -> DecoderConfig:
    folder, _ = resolve_source(gguf_path)
    return DecoderConfig.from_hf(json.loads((folder / "config.json").read_text()))


@pytest.mark.parametrize("family,qtype,overrides", CASES, ids=[f"{f}-{q.name}" for f, q, _ in CASES])
def test_tiny_gguf_equals_transformers_reader_bitwise(tmp_path, cache, family, qtype, overrides):
    path, hf = tiny_gguf(tmp_path, family, qtype, seed=7, **overrides)
    ref = transformers_tensors(path)
    cfg = config_of(path)
    assert_same_bits(dict(hf_tensors(cfg, path)), ref)
    for dtype in (torch.float32, torch.bfloat16):  # dequantized straight into the load dtype
        loaded = load_model(path, dtype=dtype).model.state_dict()
        assert_same_bits(loaded, build_model(cfg, ref, dtype=dtype).state_dict())
    if qtype == Q.F32:  # nothing rounded: the original model's logits (the q/k permutation undone)
        ids = torch.tensor([[1, 5, 9, 3, 7]])
        m = load_model(path).model
        with torch.inference_mode():
            ours, want = m(ids, m.new_cache(8), 0).logits, hf(ids).logits
        assert float((ours - want).abs().max() / want.abs().max()) < 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_tensor_names_are_transformers_mapping(family):
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    hf = tiny_hf_model(family, num_hidden_layers=3)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf.config)
    theirs = get_gguf_hf_weights_map(skeleton, TensorProcessor())
    wanted = set(skeleton.state_dict())
    pairs = {g: h for g, h in theirs.items() if h in wanted}
    assert set(pairs.values()) == wanted
    assert {g: hf_name(g) for g in pairs} == pairs
    assert hf_name("rope_freqs.weight") is None and hf_name("blk.0.ffn_gate_inp.weight") is None


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_slots_cover_every_parameter_once(family):
    """empty_model's buffers are uninitialized: the slots must write every element exactly once."""
    cfg = DecoderConfig.from_hf(tiny_hf_model(family, attention_bias=True, mlp_bias=True).config.to_dict())
    from agentspark.model.decoder import DecoderModel

    model = DecoderModel(cfg)
    counts = {n: torch.zeros(p.shape, dtype=torch.int32) for n, p in model.state_dict().items() if n in dict(model.named_parameters())}
    for slots in hf_slots(cfg).values():
        for s in slots:
            slot_view(counts, s).add_(1)
    assert all(bool((c == 1).all()) for c in counts.values())
    assert set(hf_shapes(cfg)) == set(hf_slots(cfg))


@pytest.fixture(scope="module")
def default_reference():
    return transformers_tensors(default_gguf_path())  # ~20 s: transformers dequantizes all of it


@pytest.mark.slow
def test_default_model_equals_first_converter_bitwise(default_model, default_reference):
    """The shipped drafter was trained on these weights and the parity tests compare logits with
    transformers': the default model's tensors are exactly the first converter's float32 ones."""
    cfg = default_model.config
    assert_same_bits(default_model.model.state_dict(), build_model(cfg, default_reference).state_dict())
    bf16 = load_model("default", dtype="bfloat16").model.state_dict()
    assert_same_bits(bf16, build_model(cfg, default_reference, dtype=torch.bfloat16).state_dict())
    from safetensors.torch import load_file

    twin = resolve_folder("default") / "model.safetensors"  # what transformers' from_pretrained reads
    assert_same_bits(load_file(str(twin)), default_reference)


def test_header_parse_equals_gguf_reader(tmp_path):
    path, _ = tiny_gguf(tmp_path, "llama", Q.Q4_1)
    for p in (path, default_gguf_path()):
        metadata, tensors = read_header(p)
        reader = gguf.GGUFReader(str(p))
        want = [(t.name, t.tensor_type, tuple(reversed(t.shape.tolist())), t.data_offset, t.n_bytes) for t in reader.tensors]
        assert [(t.name, t.qtype, t.shape, t.offset, t.nbytes) for t in tensors] == want
        assert metadata["general.architecture"] == "llama"


def test_cache_holds_no_weights_and_twin_is_on_request(tmp_path, cache):
    path, hf = tiny_gguf(tmp_path, "qwen2", Q.F32)
    loaded = load_model(path)
    folder = converted_dir_for(sha256_of(path))
    assert is_converted(folder) and not list(folder.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in folder.iterdir()) < 64 << 10  # config + a 96-token tokenizer
    from transformers import AutoModelForCausalLM

    twin = AutoModelForCausalLM.from_pretrained(str(resolve_folder(path)), dtype=torch.float32).eval()
    ids = torch.tensor([[2, 4, 6, 8]])
    with torch.inference_mode():
        ours, theirs = loaded.model(ids, loaded.model.new_cache(8), 0).logits, twin(ids).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5


def test_first_converters_cache_is_replaced(tmp_path, cache):
    """A cache of the first converter (no format mark, a float32 model.safetensors) is redone,
    which gives its disk back."""
    path, _ = tiny_gguf(tmp_path, "llama", Q.Q8_0)
    old = converted_dir_for(sha256_of(path))
    old.mkdir(parents=True)
    (old / "converted.json").write_text(json.dumps({"source": str(path), "sha256": sha256_of(path)}))
    (old / "model.safetensors").write_bytes(b"\0" * (1 << 20))
    load_model(path)
    assert is_converted(old) and not (old / "model.safetensors").exists()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_config_names_its_architecture(tmp_path, cache, family):
    """config.json has transformers' class for the GGUF's general.architecture, as a checkpoint's
    does (llama.cpp's convert_hf_to_gguf.py and transformers' Auto classes dispatch on it)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path, _ = tiny_gguf(tmp_path, family, Q.Q8_0)
    folder, _ = resolve_source(path)
    config = json.loads((folder / "config.json").read_text())
    assert read_header(path)[0]["general.architecture"] == config["model_type"] == family
    assert config["architectures"] == [HF_ARCHITECTURES[family]] == [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family]]
    assert AutoConfig.from_pretrained(str(folder)).architectures == config["architectures"]
    assert hf_architectures({"general.architecture": "mamba"}, "mamba") is None  # never made up
    assert hf_architectures({"general.architecture": "qwen2"}, "llama") is None


def test_format_2_cache_gets_architectures_in_place(tmp_path, cache):
    """A format-2 cache (config.json without architectures) is completed, its twin kept."""
    path, _ = tiny_gguf(tmp_path, "llama", Q.Q8_0)
    folder, _ = resolve_source(path)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "converted.json").write_text(json.dumps({"source": str(path), "sha256": sha256_of(path), "format": 2}))
    (folder / "model.safetensors").write_bytes(b"twin")
    assert not is_converted(folder)
    assert resolve_source(path)[0] == folder and is_converted(folder)
    assert json.loads((folder / "config.json").read_text()) == {**config, "architectures": ["LlamaForCausalLM"]}
    assert (folder / "model.safetensors").read_bytes() == b"twin"


def test_missing_tensor_is_named(tmp_path, cache):
    path, _ = tiny_gguf(tmp_path, "llama", Q.Q8_0, drop="model.layers.1.mlp.down_proj.weight")
    with pytest.raises(CorruptModelError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(path)


def test_truncated_gguf_is_corrupt(tmp_path, cache):
    path, _ = tiny_gguf(tmp_path, "qwen2", Q.Q8_0)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CorruptModelError, match="truncated"):
        read_header(cut)
    with pytest.raises(CorruptModelError):
        load_model(cut)


def test_integer_tensor_is_refused(tmp_path, cache):
    hf = tiny_hf_model("qwen2")
    sd = dict(hf.state_dict(), **{"model.norm.weight": torch.ones(64, dtype=torch.int32)})
    path = write_gguf(tmp_path / "int.gguf", hf.config.to_dict(), sd, Q.Q8_0)
    with pytest.raises(CorruptModelError, match="non-float GGUF type I32"):
        load_model(path)


def test_missing_gguf_package_says_how_to_install(tmp_path, cache, monkeypatch):
    path, _ = tiny_gguf(tmp_path, "qwen2", Q.Q8_0)
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ModelLoadError, match="pip install gguf"):
        load_model(path)


MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from agentspark import load_model
    def vm(field):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    load_model(sys.argv[3])  # a tiny GGUF first: one-time costs (transformers' import, torch's meta device)
    before = vm("VmRSS")
    m = load_model(sys.argv[1], dtype=sys.argv[2]).model
    print(json.dumps({"above": vm("VmHWM") - before,
                      "model": sum(p.numel() * p.element_size() for p in m.parameters())}))
""")


def _peak(path: Path, dtype: str, cache: Path, warmup: Path) -> dict:
    import os

    env = dict(os.environ, AGENTSPARK_CACHE=str(cache), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), dtype, str(warmup)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_stays_near_the_model(tmp_path, cache):
    """A 46M-parameter Q8_0 GGUF (50 MB): loading adds little beyond the model's own bytes in
    bfloat16 and float32 (the first converter held several float32 copies at once)."""
    from transformers import Qwen2Config

    hf_config = Qwen2Config(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True).to_dict()
    cfg = DecoderConfig.from_hf(hf_config)
    g = torch.Generator().manual_seed(0)
    sd = {name: 0.02 * torch.randn(shape, generator=g) for name, shape in hf_shapes(cfg).items()}
    path = write_gguf(tmp_path / "mid.gguf", hf_config, sd, Q.Q8_0)
    del sd
    warmup, _ = tiny_gguf(tmp_path, "qwen2", Q.Q8_0)
    resolve_source(path), resolve_source(warmup)  # the one-time metadata conversions, not measured
    for dtype in ("bfloat16", "float32"):
        r = _peak(path, dtype, cache, warmup)
        # Beyond the model: one ~40 MB chunk in flight, RoPE tables (16 MB at 32k positions), the
        # tokenizer. Measured: +50 MB in both dtypes; the first converter: +315 MB (bf16), +235 MB.
        assert r["above"] < r["model"] + (80 << 20), (dtype, r)


def test_copied_gguf_shares_the_conversion(tmp_path, cache):
    path, _ = tiny_gguf(tmp_path, "qwen3", Q.Q8_0)
    load_model(path)
    copy = tmp_path / "copy.gguf"
    shutil.copy(path, copy)
    assert resolve_source(copy)[0] == resolve_source(path)[0]
