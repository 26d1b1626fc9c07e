"""Build a drafter from its command-line name: none | ngram | draft-model:PATH."""

from __future__ import annotations

from ..errors import UnknownDrafterError
from ..model.loading import LoadedModel, load_model
from .base import Drafter
from .draft_model import DraftModelDrafter, check_same_tokenizer
from .ngram import NgramDrafter

DRAFTER_NAMES = "none | ngram | draft-model:PATH"


def build_drafter(spec: str, target: LoadedModel, *, max_seq_len: int = 4096) -> Drafter | None:
    """The drafter ``spec`` names, on the target's device and dtype (None for ``none``)."""
    if spec == "none":
        return None
    if spec == "ngram":
        return NgramDrafter()
    if spec.startswith("draft-model:") and len(spec) > len("draft-model:"):
        draft = load_model(spec.split(":", 1)[1], dtype=target.model.dtype, device=target.model.device)
        check_same_tokenizer(target, draft)
        return DraftModelDrafter(draft, target.config.vocab_size, capacity=max_seq_len)
    raise UnknownDrafterError(f"unknown drafter {spec!r}; choose {DRAFTER_NAMES}")
