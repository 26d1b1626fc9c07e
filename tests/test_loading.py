"""Loading from HF folders, GGUF files and `default`; every bad input is a typed, actionable error."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from agentspark import load_model
from agentspark.errors import (
    CorruptModelError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from agentspark.model.default_model import DEFAULT_GGUF_SHA256, ENV_DEFAULT_GGUF, default_gguf_path, sha256_of
from conftest import tiny_hf_model


@pytest.fixture()
def tiny_folder(tmp_path):
    hf = tiny_hf_model("qwen2", seed=1)
    hf.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    return tmp_path / "tiny", hf


def test_hf_folder_loads_and_matches(tiny_folder):
    folder, hf = tiny_folder
    loaded = load_model(folder)
    assert loaded.config.family == "qwen2" and loaded.tokenizer is None
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.inference_mode():
        ours = loaded.model(ids, loaded.model.new_cache(8), 0).logits
        ref = hf(ids).logits
    assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-4


def test_hf_folder_bfloat16(tiny_folder):
    loaded = load_model(tiny_folder[0], dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16


def test_unknown_path_is_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_unsupported_file_names_what_is_supported(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        load_model(f)


def test_unsupported_architecture_names_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, qwen3"):
        load_model(tmp_path)


def test_corrupt_config_json(tiny_folder):
    folder, _ = tiny_folder
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="not valid JSON"):
        load_model(folder)


def test_corrupt_safetensors(tiny_folder):
    folder, _ = tiny_folder
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptModelError):
        load_model(folder)


def test_missing_tensor_is_named(tiny_folder):
    from safetensors.torch import load_file, save_file

    folder, _ = tiny_folder
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CorruptModelError, match="model.norm.weight"):
        load_model(folder)


def test_pickle_weights_are_refused(tiny_folder):
    folder, _ = tiny_folder
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match="pickle"):
        load_model(folder)


def test_corrupt_gguf(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 40)
    with pytest.raises(ModelLoadError):
        load_model(f)


def test_bad_dtype_and_device(tiny_folder):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(tiny_folder[0], dtype="float16")
    with pytest.raises(ModelLoadError, match="device"):
        load_model(tiny_folder[0], device="tpu")


def test_default_gguf_is_verified(default_model, monkeypatch, tmp_path):
    path = default_gguf_path()
    assert sha256_of(path) == DEFAULT_GGUF_SHA256
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"not the model")
    monkeypatch.setenv(ENV_DEFAULT_GGUF, str(wrong))
    with pytest.raises(CorruptModelError, match="sha256"):
        default_gguf_path()
    monkeypatch.setenv(ENV_DEFAULT_GGUF, str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError):
        default_gguf_path()


def test_default_model_has_tokenizer_and_chat_template(default_model):
    tok = default_model.tokenizer
    assert default_model.config.family == "llama" and default_model.config.num_layers == 30
    assert tok.chat_template and tok.eos_token_id in default_model.eos_token_ids
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert ids.endswith("<|im_start|>assistant\n")


def test_gguf_path_loads_through_transformers_reader(default_model):
    """A .gguf given by path goes through the same conversion (cached by sha256) as `default`."""
    loaded = load_model(default_gguf_path())
    assert torch.equal(loaded.model.lm_head.weight_t, default_model.model.lm_head.weight_t)
