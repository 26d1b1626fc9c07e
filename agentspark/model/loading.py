"""load_model: ``default``, a Hugging Face folder (config.json + safetensors) or a ``.gguf`` file.

Weights come from safetensors or GGUF only, never from pickle. Nothing is fetched from a hub:
tokenizers are read from the same local source with ``local_files_only``. A GGUF's weights are
read from the GGUF at every load, dequantized into the load dtype (gguf_read); only its config and
tokenizer are converted and cached (gguf_convert).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptModelError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from .config import DecoderConfig
from .decoder import DecoderModel
from .default_model import DEFAULT_GGUF_SHA256, default_gguf_path
from .gguf_convert import gguf_to_hf_folder
from .gguf_read import load_gguf_model
from .weights import build_model

SUPPORTED_SOURCES = "`default`, a folder with config.json + *.safetensors, or a .gguf file"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A target (or draft) model with what decoding needs around it."""

    model: DecoderModel
    tokenizer: Any | None  # a transformers tokenizer, or None for bare test models
    source: str
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def config(self) -> DecoderConfig:
        return self.model.cfg


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ModelLoadError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}") from None


def parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device {device!r} is not a device; use cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)" if pickles else ""
        raise ModelNotFoundError(f"{folder} has no *.safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptModelError(f"{f} is not a readable safetensors file: {exc}") from exc
    return tensors


def _read_tokenizer(folder: Path) -> Any | None:
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for broken files
        raise CorruptModelError(f"the tokenizer in {folder} could not be read: {exc}") from exc


def _eos_ids(folder: Path, cfg: DecoderConfig, tokenizer: Any | None) -> frozenset[int]:
    ids = set(cfg.eos_token_ids)
    gen = folder / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(int(i) for i in ids)


def load_hf_folder(
    folder: Path, *, dtype: torch.dtype, device: torch.device, source: str, gguf: Path | None = None
) -> LoadedModel:
    """The model of ``folder`` (config.json, tokenizer), its weights from the folder's safetensors
    or, for a converted GGUF, from ``gguf`` itself (dequantized into ``dtype`` tensor by tensor)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json; expected {SUPPORTED_SOURCES}")
    try:
        hf_config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptModelError(f"{config_path} is not valid JSON: {exc}") from exc
    try:
        cfg = DecoderConfig.from_hf(hf_config)
    except KeyError as exc:
        raise CorruptModelError(f"{config_path} lacks the field {exc}") from exc
    tokenizer = _read_tokenizer(folder)
    if gguf is not None:
        model = load_gguf_model(cfg, gguf, dtype=dtype, device=device)
    else:
        model = build_model(cfg, _read_safetensors(folder), dtype=dtype, device=device)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, eos_token_ids=_eos_ids(folder, cfg, tokenizer))


def resolve_source(source: str | Path) -> tuple[Path, Path | None]:
    """(the folder with config.json and tokenizer, the GGUF holding the weights or None when the
    folder's safetensors do). A GGUF's folder is its cached metadata conversion."""
    if str(source) == "default":
        path = default_gguf_path()  # verified by sha256
        return gguf_to_hf_folder(path, DEFAULT_GGUF_SHA256), path
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model {str(source)!r} does not exist; expected {SUPPORTED_SOURCES}")
    if path.is_dir():
        return path, None
    if path.suffix == ".gguf":
        return gguf_to_hf_folder(path), path
    raise UnsupportedModelError(f"{path} is not a supported model file; expected {SUPPORTED_SOURCES}")


def resolve_folder(source: str | Path) -> Path:
    """A local HF folder transformers' from_pretrained can load with the same weights (for the HF
    baselines and drafter training). A GGUF gets its float32 model.safetensors written there on
    this first request; agentspark's own loading never needs it (``resolve_source``)."""
    folder, gguf = resolve_source(source)
    if gguf is not None:
        sha = DEFAULT_GGUF_SHA256 if str(source) == "default" else None
        return gguf_to_hf_folder(gguf, sha, weights=True)
    return folder


def load_model(
    source: str | Path = "default", *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a target or draft model. ``source``: ``default``, an HF folder, or a ``.gguf`` file."""
    torch_dtype, dev = parse_dtype(dtype), parse_device(device)
    folder, gguf = resolve_source(source)
    return load_hf_folder(folder, dtype=torch_dtype, device=dev, source=str(source), gguf=gguf)
