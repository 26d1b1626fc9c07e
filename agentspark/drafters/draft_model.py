"""An independent draft model (any small Llama/Qwen decoder sharing the target's tokenizer),
run autoregressively by our own runtime with its own static KV cache.

Its cache keeps the tokens it has already seen; each round it rolls back to the longest prefix
that still agrees with the committed sequence (rejected drafts fall away), feeds what is new,
then drafts token by token with q = the request's sampling distribution over its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DrafterMismatchError
from ..model.loading import LoadedModel
from ..sampling import SamplingParams, probs_from_logits, sample
from .base import Draft, Drafter


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Refuse a draft model whose tokens mean something else than the target's."""
    t_tok, d_tok = target.tokenizer, draft.tokenizer
    if t_tok is None and d_tok is None:
        if target.config.vocab_size != draft.config.vocab_size:
            raise DrafterMismatchError(
                f"draft vocab_size {draft.config.vocab_size} != target vocab_size {target.config.vocab_size}"
            )
        return
    if t_tok is None or d_tok is None:
        missing = "target" if t_tok is None else "draft model"
        raise DrafterMismatchError(
            f"the {missing} ({target.source if t_tok is None else draft.source}) has no tokenizer, so it cannot "
            "be checked to share the other's; give both models their tokenizer files"
        )
    if t_tok.get_vocab() != d_tok.get_vocab():
        raise DrafterMismatchError(
            f"the draft model {draft.source} does not share the target's tokenizer "
            f"({len(d_tok)} vs {len(t_tok)} tokens, different vocabularies); pick a draft model of the same family"
        )


class DraftModelDrafter(Drafter):
    name = "draft-model"

    def __init__(self, draft: LoadedModel, target_vocab_size: int, capacity: int = 4096) -> None:
        self.loaded = draft
        self.model = draft.model
        self.target_vocab = target_vocab_size
        self.cache = self.model.new_cache(capacity)
        self.cached: list[int] = []  # tokens whose K/V are in self.cache, in order
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None

    def sibling(self) -> DraftModelDrafter:
        return DraftModelDrafter(self.loaded, self.target_vocab, self.cache.capacity)

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        # The cache is kept: propose() reuses the longest prefix it shares with the new sequence.
        self.params, self.generator = params, generator

    def _to_target_vocab(self, logits: Tensor) -> Tensor:
        """Draft logits [N, Vd] -> [N, Vt]: same tokenizer, possibly differently padded embeddings."""
        vd = logits.shape[-1]
        if vd == self.target_vocab:
            return logits
        if vd > self.target_vocab:
            return logits[..., : self.target_vocab]
        return F.pad(logits, (0, self.target_vocab - vd), value=float("-inf"))

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        if max_tokens <= 0:
            return Draft.empty(self.model.device)
        # longest prefix still valid; always re-feed at least the anchor to get its logits
        keep = 0
        limit = min(len(self.cached), len(tokens) - 1)
        while keep < limit and self.cached[keep] == tokens[keep]:
            keep += 1
        max_tokens = min(max_tokens, self.cache.capacity - len(tokens))
        if max_tokens <= 0:
            return Draft.empty(self.model.device)
        self.cache.rollback(keep)
        self.cached = self.cached[:keep]
        feed = torch.tensor([tokens[keep:]], dtype=torch.long, device=self.model.device)  # [1, n]
        drafted: list[Tensor] = []
        probs: list[Tensor] = []
        for _ in range(max_tokens):
            start = len(self.cached)
            logits = self.model(feed, self.cache, start, num_logits=1).logits[0]  # [1, Vd]
            self.cached.extend(feed[0].tolist())
            q = probs_from_logits(self._to_target_vocab(logits), self.params)  # [1, V]
            token = q.argmax(-1) if self.params.greedy else sample(q, self.generator)  # [1]
            drafted.append(token)
            probs.append(q)
            feed = token.view(1, 1)
        return Draft(tokens=torch.cat(drafted), probs=torch.cat(probs))  # [g], [g, V]
