"""Learned-drafter checkpoints: DeepSpec's format (config.json + safetensors, deepspec-format.md §2)
and ours (the same, minus the target's frozen embedding and LM head, optionally 8-bit).

Loading dispatches on ``architectures`` (and, for Qwen3DSparkModel, on ``markov_rank`` /
``enable_confidence_head``: DSpark or DFlash). Frozen copies of the target's embedding and head in a
DeepSpec file are checked for shape and then ignored: the target's own tensors are used.
8-bit storage keeps each large matrix as int8 rows with one float scale per row (``KEY`` and
``KEY.int8_scale``); it only changes the drafter's proposals, never what the target accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import CorruptModelError, DrafterMismatchError, ModelNotFoundError, UnsupportedModelError
from ..model.loading import LoadedModel
from .learned_config import LearnedDrafterConfig

FROZEN_KEYS = ("embed_tokens.weight", "lm_head.weight")
SCALE_SUFFIX = ".int8_scale"
STORAGES = ("float32", "bfloat16", "int8")


def build_model(cfg: LearnedDrafterConfig) -> nn.Module:
    if cfg.method == "eagle3":
        from .eagle3_model import Eagle3Model

        return Eagle3Model(cfg)
    from .dspark_model import DSparkModel

    return DSparkModel(cfg)


def save_drafter(model: nn.Module, directory: str | Path, *, storage: str = "bfloat16",
                 include_frozen_from: LoadedModel | None = None) -> Path:
    """Write config.json + model.safetensors; returns the directory.

    include_frozen_from: also store the target's embedding and LM head (DeepSpec's layout)."""
    if storage not in STORAGES:
        raise UnsupportedModelError(f"storage {storage!r} is not supported; choose one of {', '.join(STORAGES)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if storage == "int8" and t.dim() == 2 and t.numel() >= 4096:
            scale = t.float().abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [rows]
            tensors[name] = torch.round(t.float() / scale[:, None]).to(torch.int8)
            tensors[name + SCALE_SUFFIX] = scale.to(torch.float32)
        elif t.is_floating_point():
            tensors[name] = t.to(torch.float32 if storage == "float32" else torch.bfloat16).contiguous()
        else:
            tensors[name] = t.contiguous()
    if include_frozen_from is not None:
        target = include_frozen_from.model
        tensors["embed_tokens.weight"] = target.embed.weight.detach().cpu().to(torch.bfloat16).contiguous()
        tensors["lm_head.weight"] = target.lm_head.weight_t.detach().t().cpu().to(torch.bfloat16).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_config(model, out, storage)
    return out


def write_config(model: nn.Module, directory: Path, storage: str) -> None:
    """directory/config.json: the drafter's config with how its weights are stored."""
    config = model.cfg.to_json()
    config["agentspark_storage"] = storage
    config["torch_dtype"] = "bfloat16" if storage != "float32" else "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def read_config(directory: str | Path) -> LearnedDrafterConfig:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"no drafter at {path}: expected a directory with config.json and *.safetensors")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    return LearnedDrafterConfig.from_json(raw)


def _read_tensors(path: Path) -> dict[str, Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors in {path} (drafter weights load from safetensors only)")
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptModelError(f"{f} is not a readable safetensors file: {exc}") from exc
    # undo 8-bit storage
    for name in [n for n in tensors if n.endswith(SCALE_SUFFIX)]:
        scale = tensors.pop(name)
        key = name[: -len(SCALE_SUFFIX)]
        tensors[key] = tensors[key].float() * scale[:, None]
    return tensors


def check_fits_target(cfg: LearnedDrafterConfig, target: LoadedModel, source: str) -> None:
    t = target.config
    problems = []
    if cfg.vocab_size != t.vocab_size:
        problems.append(f"vocab_size {cfg.vocab_size} vs the target's {t.vocab_size}")
    if cfg.hidden_size != t.hidden_size:
        problems.append(f"hidden_size {cfg.hidden_size} vs the target's {t.hidden_size}")
    if cfg.num_target_layers != t.num_layers:
        problems.append(f"num_target_layers {cfg.num_target_layers} vs the target's {t.num_layers} layers")
    if problems:
        raise DrafterMismatchError(
            f"the drafter at {source} was trained for another target ({'; '.join(problems)}); "
            "train one for this target with `agentspark train-drafter`"
        )


def load_drafter_model(directory: str | Path, target: LoadedModel) -> nn.Module:
    """A learned drafter's module on the target's device and dtype, sharing its embedding and head."""
    path = Path(directory)
    cfg = read_config(path)
    check_fits_target(cfg, target, str(path))
    model = build_model(cfg)
    tensors = _read_tensors(path)
    V, H = cfg.vocab_size, cfg.hidden_size
    for key in FROZEN_KEYS:
        if key in tensors and tuple(tensors[key].shape) != (V, H):
            raise DrafterMismatchError(f"{key} in {path} has shape {tuple(tensors[key].shape)}, the target needs {(V, H)}")
        tensors.pop(key, None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CorruptModelError(
            f"the drafter weights in {path} do not match its config ({cfg.method}): "
            f"missing {missing[:6]}{'…' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
        )
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise CorruptModelError(f"{key} in {path} has shape {tuple(t.shape)}, the config implies {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return place_like_target(model, target).attach_target(target.model)


def place_like_target(model: nn.Module, target: LoadedModel) -> nn.Module:
    """Move to the target's device; parameters take its dtype, float32 buffers (rotary tables,
    temperatures) stay float32."""
    model.to(device=target.model.device)
    for p in model.parameters():
        p.data = p.data.to(target.model.dtype)
    return model
