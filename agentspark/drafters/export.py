"""Write a learned drafter (DSpark, DFlash, EAGLE-3) as a DeepSpec checkpoint (deepspec-format.md §2),
the layout DeepSpec's own ``save_pretrained`` produces and other engines are pointed at:

- ``config.json``: a copy of the target's config as Qwen3 (``model_type`` qwen3, every target
  field) with the drafter's fields on top: ``architectures`` ``Qwen3DSparkModel`` (DSpark and
  DFlash, told apart by ``markov_rank`` / ``enable_confidence_head``) or ``Qwen3Eagle3Model``.
- ``model.safetensors``: one file (DeepSpec writes the HF default and the doc names no shards or
  index), keys without a ``model.`` prefix, the target's embedding and LM head included as
  ``embed_tokens.weight`` and ``lm_head.weight`` [V, H], in bfloat16 (DeepSpec's) or float32.

DeepSpec has no reduced draft vocabulary (no d2t/t2d; its heads are over the full vocabulary), so
a drafter trained with one is mapped back: ``lm_head`` is the target's full head and the Markov
head's output rows ``markov_w2`` [Vd, r] are scattered into [V, r] at their target ids, zero
elsewhere. The exported drafter can then propose any token (the ones outside the old draft
vocabulary from the base logits alone); what the target accepts is unchanged, the output stays
lossless. Our own fields (``agentspark_*``: the draft vocabulary, calibration temperatures,
storage) are left out: DeepSpec has none of them. 8-bit storage is already undone by the loader
(``load_drafter_model`` dequantizes), so the export writes plain floats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import AgentSparkError, InvalidRequestError
from ..model.loading import LoadedModel, resolve_source
from .learned_config import LearnedDrafterConfig

EXPORT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
WEIGHTS_FILE = "model.safetensors"
# Files a reader takes as part of a checkpoint: --force replaces them so no stale shard is loaded.
CHECKPOINT_GLOBS = ("config.json", "*.safetensors", "*.safetensors.index.json")
# Target config fields that describe the target's files, not the drafter, or that we rewrite.
_NOT_COPIED = {"architectures", "auto_map", "model_type", "quantization_config", "torch_dtype", "dtype",
               "transformers_version", "_name_or_path", "rope_theta", "rope_scaling", "rope_parameters",
               "mlp_bias", "pretraining_tp"}
# Qwen3Config's remaining fields (transformers 5), for targets whose config.json we cannot read.
_QWEN3_DEFAULTS: dict[str, Any] = {"hidden_act": "silu", "initializer_range": 0.02, "use_cache": True,
                                   "use_sliding_window": False, "sliding_window": None, "attention_dropout": 0.0,
                                   "bos_token_id": None, "pad_token_id": None}


def export_deepspec(drafter_model: nn.Module, target: LoadedModel, out_dir: str | Path, *,
                    dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write ``drafter_model`` (a DSparkModel or Eagle3Model bound to ``target``) into ``out_dir``
    as DeepSpec's config.json + model.safetensors; returns the directory.

    Refuses an ``out_dir`` that exists and is not an empty directory unless ``force`` (which then
    replaces the checkpoint files there, CHECKPOINT_GLOBS, and leaves everything else)."""
    if dtype not in EXPORT_DTYPES:
        raise InvalidRequestError(f"export dtype {dtype!r} is not supported; choose one of {', '.join(EXPORT_DTYPES)}")
    cfg: LearnedDrafterConfig = drafter_model.cfg
    check_out_dir(Path(out_dir), force=force)
    tensors = deepspec_tensors(drafter_model, target, EXPORT_DTYPES[dtype])
    config = deepspec_config(cfg, target, dtype)
    out = prepare_out_dir(Path(out_dir), force=force)  # only now: a failure above leaves OUT as it was
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})  # HF's metadata
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def deepspec_caveats(cfg: LearnedDrafterConfig) -> list[str]:
    """What the export changes or what DeepSpec's own code would not take, one sentence each."""
    notes = []
    if cfg.draft_vocab is not None:
        notes.append(f"its {len(cfg.draft_vocab)}-token draft vocabulary is mapped back to all {cfg.vocab_size} tokens "
                     "(DeepSpec has no reduced vocabulary): it may now propose any token")
    if cfg.confidence_temperatures is not None:
        notes.append("its calibrated confidence temperatures are left out (DeepSpec's format has no field for them)")
    if cfg.method == "eagle3" and cfg.num_features != 5:
        notes.append(f"it reads {cfg.num_features} target layers; DeepSpec's own EAGLE-3 code accepts exactly 5")
    return notes


def check_out_dir(out: Path, *, force: bool) -> None:
    """Raise unless ``out`` is new, an empty directory, or (with force) any directory."""
    try:
        if out.exists() and not out.is_dir():
            raise InvalidRequestError(f"OUT {str(out)!r} is an existing file; give a directory path (new or empty)")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise InvalidRequestError(
                f"OUT {str(out)!r} is not empty; give a new or empty directory, or --force to replace "
                "the checkpoint files in it (config.json, *.safetensors)"
            )
    except OSError as exc:
        raise InvalidRequestError(f"OUT {str(out)!r} cannot be used as a directory: {exc.strerror or exc}") from exc


def prepare_out_dir(out: Path, *, force: bool) -> Path:
    """An empty (or, with force, cleared of checkpoint files) directory at ``out``."""
    check_out_dir(out, force=force)
    try:
        if out.is_dir():
            for pattern in CHECKPOINT_GLOBS:
                for stale in out.glob(pattern):
                    if stale.is_file():
                        stale.unlink()
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequestError(f"OUT {str(out)!r} cannot be used as a directory: {exc.strerror or exc}") from exc
    return out


def deepspec_tensors(model: nn.Module, target: LoadedModel, dtype: torch.dtype) -> dict[str, Tensor]:
    """The drafter's state dict under DeepSpec's key names, on the CPU in ``dtype``, with the
    target's frozen embedding and head and the draft vocabulary mapped back to the full one."""
    cfg: LearnedDrafterConfig = model.cfg
    tensors: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():  # parameters only: rotary tables etc. are not persistent
        tensors[name] = t.detach().cpu()
    w2 = "markov_head.markov_w2.weight"
    if cfg.draft_vocab is not None and w2 in tensors:
        reduced = tensors[w2]  # [Vd, r]
        full = reduced.new_zeros(cfg.vocab_size, reduced.shape[1])  # [V, r]: no Markov bias outside
        full[torch.tensor(cfg.draft_vocab, dtype=torch.long)] = reduced
        tensors[w2] = full
    tensors["embed_tokens.weight"] = target.model.embed.weight.detach().cpu()  # [V, H]
    tensors["lm_head.weight"] = target.model.lm_head.weight_t.detach().t().cpu()  # [H, V] -> [V, H]
    return {k: v.to(dtype).contiguous() for k, v in tensors.items()}


def deepspec_config(cfg: LearnedDrafterConfig, target: LoadedModel, dtype: str) -> dict[str, Any]:
    """config.json: the target's fields as a Qwen3 config, then the drafter's (deepspec-format.md §2)."""
    out: dict[str, Any] = dict(_QWEN3_DEFAULTS)
    out["max_window_layers"] = target.config.num_layers
    eos = sorted(target.eos_token_ids or target.config.eos_token_ids)
    out["eos_token_id"] = None if not eos else eos[0] if len(eos) == 1 else eos
    raw = target_hf_config(target)
    out.update({k: v for k, v in raw.items() if k not in _NOT_COPIED})
    drafter = {k: v for k, v in cfg.to_json().items()
               if not k.startswith("agentspark_") and k not in ("torch_dtype", "dtype")}
    out.update(drafter)
    # transformers 5 (DeepSpec pins 5.10.2) keeps RoPE in rope_parameters; older readers (and
    # llama.cpp's converter) look for rope_theta / rope_scaling, so all three are written.
    out["rope_parameters"] = {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {"rope_type": "default"})}
    out["rope_scaling"] = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    if cfg.method == "eagle3":
        named = cfg.extra.get("target_model_name_or_path") or raw.get("_name_or_path") or target.source
        out["target_model_name_or_path"] = str(named)
    # save_pretrained writes "dtype" (transformers 5); "torch_dtype" is its name before 4.56
    out["dtype"] = out["torch_dtype"] = dtype
    return out


def target_hf_config(target: LoadedModel) -> dict[str, Any]:
    """The target's own config.json where its source is a folder, a .gguf or ``default`` (the
    conversion cached when it loaded); {} for a model built in memory (tests)."""
    source = target.source
    try:
        if source != "default" and not Path(source).expanduser().exists():
            return {}
        folder, _ = resolve_source(source)
        raw = json.loads((folder / "config.json").read_text())
    except (AgentSparkError, OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}
