"""A GGUF's config.json and tokenizer, converted once and cached by sha256; no weights.

The weights stay in the GGUF, in its own (usually quantized) types: every load dequantizes them
straight into the model's parameters (gguf_read). So the cache costs a few MB instead of a float32
copy of the model (7.1 GB for a 1.1 GB GGUF with the first converter, which stored one).

transformers still reads the metadata (config and tokenizer: it knows every tokenizer flavour);
that takes seconds for a large vocabulary and is why those two are cached.

``weights=True`` adds a float32 model.safetensors in HF names: the "HF twin" for callers that
load the same weights through transformers' from_pretrained (bench's HF baselines, drafter
training's regeneration, parity tests). It is written tensor by tensor, only on such a request.

config.json names its transformers class (``architectures``, from the GGUF's ``general.architecture``)
as a checkpoint's does: llama.cpp's convert_hf_to_gguf.py (``--target-model-dir``) and transformers'
Auto classes dispatch on it. A format-2 cache, which lacked it, gets it added in place (its twin kept).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from ..errors import CorruptModelError, UnsupportedModelError
from ..progress import status
from .config import HF_ARCHITECTURES, SUPPORTED_FAMILIES, DecoderConfig
from .default_model import cache_dir, sha256_of
from .gguf_read import checked_tensors, hf_tensors, import_gguf, read_header

_DONE = "converted.json"
# 1 (unmarked): the first converter's, with a float32 model.safetensors; 2: metadata only;
# 3: config.json also has ``architectures``
FORMAT = 3
TWIN = "model.safetensors"


def converted_dir_for(sha256: str) -> Path:
    return cache_dir() / "gguf" / sha256[:32]


def _format(folder: Path) -> int | None:
    try:
        return json.loads((folder / _DONE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` holds a finished conversion of this format (format 2 is completed in
    place, an older one is redone)."""
    return _format(folder) == FORMAT


def hf_architectures(metadata: dict, model_type: str) -> list[str] | None:
    """config.json's ``architectures`` for a GGUF of ``model_type``: its ``general.architecture``'s
    transformers class; None (the field left out) for an architecture we do not map or one that
    disagrees with the model_type."""
    arch = metadata.get("general.architecture")
    return [HF_ARCHITECTURES[arch]] if arch == model_type and arch in HF_ARCHITECTURES else None


def gguf_to_hf_folder(gguf_path: Path, sha256: str | None = None, *, weights: bool = False) -> Path:
    """The cached folder with the GGUF's config.json and tokenizer (converted on first use);
    with ``weights``, also its float32 model.safetensors for transformers."""
    sha256 = sha256 or sha256_of(gguf_path)
    out = converted_dir_for(sha256)
    if _format(out) == 2:
        _add_architectures(gguf_path, sha256, out)
    if not is_converted(out):
        with status("reading the GGUF's config and tokenizer (once, then cached)"):
            _convert_metadata(gguf_path, sha256, out)
    if weights and not (out / TWIN).is_file():
        with status("writing a float32 copy of the GGUF for transformers (once)"):
            write_twin(gguf_path, out)
    return out


def _hf_config(gguf_path: Path):
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # transformers/gguf raise many kinds for a bad file
        raise CorruptModelError(f"{gguf_path} could not be read as GGUF: {exc}") from exc
    if hf_config.model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"{gguf_path} holds a {hf_config.model_type!r} model; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    metadata = read_header(gguf_path)[0]
    key_length = metadata.get(f"{hf_config.model_type}.attention.key_length")
    if key_length:  # transformers' qwen3 mapping skips it and keeps Qwen3Config's default of 128
        hf_config.head_dim = key_length
    hf_config.architectures = hf_architectures(metadata, hf_config.model_type)  # transformers leaves it unset
    return hf_config


def _add_architectures(gguf_path: Path, sha256: str, folder: Path) -> None:
    """A format-2 conversion made format 3: ``architectures`` added to its config.json, nothing
    else rewritten (a float32 twin stays). On any failure the folder stays format 2, so is redone."""
    try:
        config = json.loads((folder / "config.json").read_text())
        architectures = hf_architectures(read_header(gguf_path)[0], config.get("model_type"))
        if architectures:
            config["architectures"] = architectures
        _replace(folder / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
        _replace(folder / _DONE, json.dumps({"source": str(gguf_path), "sha256": sha256, "format": FORMAT}))
    except (OSError, ValueError, CorruptModelError):
        pass


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _convert_metadata(gguf_path: Path, sha256: str, out: Path) -> None:
    import_gguf()  # transformers needs it too: fail here with our message
    from transformers import AutoTokenizer

    hf_config = _hf_config(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:
        raise CorruptModelError(f"the tokenizer in {gguf_path} could not be read: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    try:
        hf_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(json.dumps({"source": str(gguf_path), "sha256": sha256, "format": FORMAT}))
        if out.exists() and not is_converted(out):
            shutil.rmtree(out, ignore_errors=True)  # a crashed or older conversion (its float32 copy too)
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_converted(out):  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_twin(gguf_path: Path, folder: Path) -> Path:
    """``folder``/model.safetensors: the GGUF's tensors in float32 under HF names, written one
    tensor at a time (safetensors' own save_file wants them all in memory at once)."""
    cfg = DecoderConfig.from_hf(json.loads((folder / "config.json").read_text()))
    header, offset = {}, 0
    for name, shape in _twin_shapes(cfg, gguf_path):
        nbytes = 4 * _numel(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    tmp = folder / f".{TWIN}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for _, t in hf_tensors(cfg, gguf_path):  # the same order as the header
                f.write(t.numpy().data)  # contiguous float32, no copy
        os.replace(tmp, folder / TWIN)
    finally:
        tmp.unlink(missing_ok=True)
    return folder / TWIN


def _twin_shapes(cfg: DecoderConfig, gguf_path: Path) -> list[tuple[str, tuple[int, ...]]]:
    _, tensors = checked_tensors(cfg, gguf_path)
    return [(name, t.shape) for name, t in tensors.items()]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
