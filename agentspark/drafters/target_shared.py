"""TargetSharedDrafter: what every learned drafter shares with its target, in one base module.

A learned drafter reads the target's frozen embedding and proposes through the target's frozen LM
head (its rows for a reduced draft vocabulary); neither is a parameter or saved. It also rotates
with the target's RoPE settings. ``to_target_vocab`` maps draft-vocabulary logits back onto the
target's vocabulary (-inf elsewhere), so q is always a distribution over the target's tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.decoder import DecoderModel
from ..model.layers import rope_tables
from .draft_layers import rope_at
from .learned_config import LearnedDrafterConfig


class TargetSharedDrafter(nn.Module):
    def __init__(self, cfg: LearnedDrafterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cos, sin = rope_tables(cfg.rope_config(), cfg.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)  # [P, D] float32
        self.register_buffer("rope_sin", sin, persistent=False)
        vocab = torch.tensor(cfg.draft_vocab if cfg.draft_vocab is not None else [], dtype=torch.long)
        self.register_buffer("draft_vocab_ids", vocab, persistent=False)  # [Vd] target ids, empty = all
        # The target's frozen embedding [V, H] and LM head rows [Vd, H]: shared, never saved.
        self.embed_weight: Tensor | None = None
        self.head_weight: Tensor | None = None

    def attach_target(self, target: DecoderModel) -> TargetSharedDrafter:
        """Take the target's embedding and LM head (frozen; call after moving the drafter)."""
        embed = target.embed.weight.detach()  # [V, H]
        head = target.lm_head.weight_t.detach().t()  # [V, H] view of the stored [H, V]
        if self.draft_vocab_ids.numel():
            head = head[self.draft_vocab_ids.to(head.device)]  # [Vd, H]
        self.embed_weight, self.head_weight = embed, head
        return self

    @property
    def reduced_vocab(self) -> bool:
        return bool(self.draft_vocab_ids.numel())

    def rope(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions [B, T] -> cos, sin [B, T, 1, D]."""
        return rope_at(self.rope_cos, self.rope_sin, positions, dtype)

    def embed_tokens(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        """Token ids [B, T] -> the target's embeddings [B, T, H] in ``dtype``."""
        assert self.embed_weight is not None, "attach_target() first"
        return F.embedding(ids, self.embed_weight).to(dtype)

    def base_logits(self, h: Tensor) -> Tensor:
        """Final-normed h [..., H] -> logits [..., Vd] through the target's head."""
        assert self.head_weight is not None, "attach_target() first"
        return F.linear(h, self.head_weight.to(h.dtype))

    def to_target_vocab(self, logits: Tensor) -> Tensor:
        """[..., Vd] -> [..., V] with -inf outside the draft vocabulary."""
        if not self.reduced_vocab:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.cfg.vocab_size), float("-inf"))
        return full.scatter_(-1, self.draft_vocab_ids.expand(*logits.shape[:-1], -1), logits)
