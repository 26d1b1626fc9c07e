"""Build a drafter from its command-line name:
none | ngram | draft-model:PATH | learned:PATH (DSpark, DFlash or EAGLE-3, DeepSpec format or ours) | default
(the shipped DSpark drafter for SmolLM2-135M-Instruct; a learned drafter only fits its target) |
ngram+SPEC (n-gram lookups first, the drafter SPEC where they find nothing: hybrid.py) |
auto (the agent commands' default: ngram+default where the shipped drafter fits the target, else ngram)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DrafterMismatchError, ModelNotFoundError, UnknownDrafterError
from ..model.loading import LoadedModel, load_model
from .base import Drafter
from .draft_model import DraftModelDrafter, check_same_tokenizer
from .ngram import NgramDrafter

DRAFTER_NAMES = "auto | none | ngram | default | learned:PATH | draft-model:PATH | ngram+default | ngram+learned:PATH"
# The gain (draft tokens accepted per learned round) a hybrid's learned drafter must keep up to be
# worth its forward. On the CPU one more verified token costs ~35% of a target step and a DSpark
# draft ~10% (SmolLM2-135M, 2 cores): break-even near 0.45. On a GPU the verify is nearly flat.
HYBRID_MIN_GAIN = {"cpu": 0.5, "cuda": 0.25}
DEFAULT_DRAFTER = "smollm2-135m-instruct-dspark"  # package data: agentspark/data/drafters/<name>/


def default_drafter_dir() -> Path:
    return Path(str(resources.files("agentspark") / "data" / "drafters" / DEFAULT_DRAFTER))


def default_drafter_fits(target: LoadedModel) -> bool:
    """Whether the shipped drafter was trained for a target of this shape (the default model)."""
    from .checkpoint import check_fits_target, read_config

    path = default_drafter_dir()
    if not (path / "config.json").is_file():
        return False
    try:
        check_fits_target(read_config(path), target, str(path))
    except DrafterMismatchError:
        return False
    return True


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
    if spec == "auto":
        return build_drafter("ngram+default" if default_drafter_fits(target) else "ngram", target, max_seq_len=max_seq_len)
    if spec == "ngram":
        return NgramDrafter()
    if spec.startswith("ngram+"):
        from .hybrid import HybridDrafter

        inner = build_drafter(spec.removeprefix("ngram+"), target, max_seq_len=max_seq_len)
        if inner is None or isinstance(inner, (NgramDrafter, HybridDrafter)):
            raise UnknownDrafterError(f"{spec!r}: after 'ngram+' name a learned or draft-model drafter ({DRAFTER_NAMES})")
        return HybridDrafter(inner, min_gain=HYBRID_MIN_GAIN.get(target.model.device.type, 0.5))
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
