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
from ..model.linear import linear_t_few_rows
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
        # The target's frozen embedding [V, H] and LM head columns [H, Vd]: shared, never saved.
        self.embed_weight: Tensor | None = None
        self.head_weight_t: Tensor | None = None

    def attach_target(self, target: DecoderModel) -> TargetSharedDrafter:
        """Take the target's embedding and LM head (frozen; call after moving the drafter)."""
        embed = target.embed.weight.detach()  # [V, H]
        head_t = target.lm_head.weight_t.detach()  # [H, V], the target's own storage (no copy)
        if self.draft_vocab_ids.numel():
            head_t = head_t[:, self.draft_vocab_ids.to(head_t.device)].contiguous()  # [H, Vd]
        self.embed_weight, self.head_weight_t = embed, head_t
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
        assert self.head_weight_t is not None, "attach_target() first"
        return linear_t_few_rows(h, self.head_weight_t.to(h.dtype))  # numpy on CPU float32 inference

    def to_target_vocab(self, values: Tensor, fill: float = float("-inf")) -> Tensor:
        """[..., Vd] -> [..., V] with ``fill`` outside the draft vocabulary (-inf for logits, 0 for probabilities)."""
        if not self.reduced_vocab:
            return values
        full = values.new_full((*values.shape[:-1], self.cfg.vocab_size), fill)
        return full.scatter_(-1, self.draft_vocab_ids.expand(*values.shape[:-1], -1), values)

    def draft_to_target(self, index: Tensor) -> Tensor:
        """Draft-vocabulary indices [...] -> target token ids [...]."""
        return self.draft_vocab_ids[index] if self.reduced_vocab else index
