"""Drafters: n-gram prompt lookup and an independent draft model (learned drafters come next)."""

from .base import Draft, Drafter
from .draft_model import DraftModelDrafter, check_same_tokenizer
from .ngram import NgramDrafter

__all__ = ["Draft", "DraftModelDrafter", "Drafter", "NgramDrafter", "check_same_tokenizer"]
