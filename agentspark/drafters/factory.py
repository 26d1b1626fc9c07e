"""Build a drafter from its command-line name:
none | ngram | draft-model:PATH | learned:PATH (DSpark, DFlash or EAGLE-3, DeepSpec format or ours) | default
(the shipped DSpark drafter for SmolLM2-135M-Instruct; a learned drafter only fits its target)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ModelNotFoundError, UnknownDrafterError
from ..model.loading import LoadedModel, load_model
from .base import Drafter
from .draft_model import DraftModelDrafter, check_same_tokenizer
from .ngram import NgramDrafter

DRAFTER_NAMES = "none | ngram | default | learned:PATH | draft-model:PATH"
DEFAULT_DRAFTER = "smollm2-135m-instruct-dspark"  # package data: agentspark/data/drafters/<name>/


def default_drafter_dir() -> Path:
    return Path(str(resources.files("agentspark") / "data" / "drafters" / DEFAULT_DRAFTER))


def learned_drafter(path: str | Path, target: LoadedModel, *, max_seq_len: int = 4096) -> Drafter:
    """A DSpark/DFlash/EAGLE-3 drafter from a checkpoint directory, bound to ``target``."""
    from .checkpoint import load_drafter_model

    model = load_drafter_model(path, target)
    if model.cfg.method == "eagle3":
        from .eagle3 import Eagle3Drafter

        return Eagle3Drafter(model, capacity=max_seq_len)
    from .dspark import DSparkDrafter

    return DSparkDrafter(model, capacity=max_seq_len)


def build_drafter(spec: str, target: LoadedModel, *, max_seq_len: int = 4096) -> Drafter | None:
    """The drafter ``spec`` names, on the target's device and dtype (None for ``none``)."""
    if spec == "none":
        return None
    if spec == "ngram":
        return NgramDrafter()
    if spec == "default":
        path = default_drafter_dir()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"the default drafter is not installed at {path}; reinstall agentspark")
        return learned_drafter(path, target, max_seq_len=max_seq_len)
    kind, _, path = spec.partition(":")
    if kind == "learned" and path:
        return learned_drafter(path, target, max_seq_len=max_seq_len)
    if kind == "draft-model" and path:
        draft = load_model(path, dtype=target.model.dtype, device=target.model.device)
        check_same_tokenizer(target, draft)
        return DraftModelDrafter(draft, target.config.vocab_size, capacity=max_seq_len)
    raise UnknownDrafterError(f"unknown drafter {spec!r}; choose {DRAFTER_NAMES}")
