"""GGUF -> Hugging Face folder (config.json, model.safetensors, tokenizer), cached by sha256.

transformers does the GGUF reading (metadata, dequantization, llama.cpp's q/k permutation
undone); we only store its result once, because parsing and dequantizing takes ~30 s on a CPU
while loading the stored safetensors takes well under one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import CorruptModelError, ModelLoadError, UnsupportedModelError
from .config import SUPPORTED_FAMILIES
from .default_model import cache_dir, sha256_of

_DONE = "converted.json"


def converted_dir_for(sha256: str) -> Path:
    return cache_dir() / "gguf" / sha256[:32]


def gguf_to_hf_folder(gguf_path: Path, sha256: str | None = None) -> Path:
    """Return a folder holding the GGUF's weights as HF safetensors; convert on first use."""
    sha256 = sha256 or sha256_of(gguf_path)
    out = converted_dir_for(sha256)
    if (out / _DONE).is_file():
        return out
    try:
        import gguf  # noqa: F401  (transformers needs it; fail here with our message)
    except ImportError as exc:
        raise ModelLoadError("reading .gguf files needs the `gguf` package: pip install gguf") from exc
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        hf_config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # transformers/gguf raise many kinds for a bad file
        raise CorruptModelError(f"{gguf_path} could not be read as GGUF: {exc}") from exc
    if hf_config.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"{gguf_path} holds a {hf_config.model_type!r} model; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    with torch.device("meta"):  # only for transformers' tensor-name mapping, no memory
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    try:
        parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        raise CorruptModelError(f"{gguf_path} could not be dequantized: {exc}") from exc
    tensors = {k: v.contiguous() for k, v in parsed["tensors"].items()}

    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    try:
        hf_config.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"source": str(gguf_path), "sha256": sha256}))
        if out.exists() and not (out / _DONE).is_file():
            shutil.rmtree(out, ignore_errors=True)  # a crashed earlier conversion
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / _DONE).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
