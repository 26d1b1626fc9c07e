"""Where a greedy speculative output first leaves plain decoding, and by how clear a margin.

DESIGN.md's rule for fast (non-invariant) GPU modes: a divergence is acceptable only at a near-tie,
i.e. when the *plain* run's top-2 logit margin at that position is below a stated epsilon. The
margin is read by replaying plain decoding (prefill, then one-token steps) over the plain tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model.decoder import DecoderModel


@dataclass(frozen=True)
class Divergence:
    position: int  # index into the generated tokens
    plain_token: int
    spec_token: int
    plain_margin: float  # top-1 minus top-2 logit of the plain run at that position

    def is_near_tie(self, epsilon: float) -> bool:
        return self.plain_margin < epsilon


def first_divergence(
    model: DecoderModel, prompt_ids: list[int], plain_ids: list[int], spec_ids: list[int]
) -> Divergence | None:
    """None when spec_ids == plain_ids (a shorter run that is a prefix also counts as a divergence)."""
    n = next((i for i, (a, b) in enumerate(zip(plain_ids, spec_ids)) if a != b), None)
    if n is None:
        if len(plain_ids) == len(spec_ids):
            return None
        n = min(len(plain_ids), len(spec_ids))
    if n >= len(plain_ids):  # spec ran on past the plain end: no plain logits to read
        return Divergence(n, -1, spec_ids[n], float("nan"))
    device = model.device
    with torch.inference_mode():
        cache = model.new_cache(len(prompt_ids) + n + 1)
        logits = model(torch.tensor([prompt_ids], device=device), cache, 0, num_logits=1).logits[0, -1]
        for i in range(n):  # the plain path: one token per step, row-invariant as the engine runs it
            step = torch.tensor([[plain_ids[i]]], device=device)
            logits = model(step, cache, len(prompt_ids) + i, row_invariant=True).logits[0, -1]
        top2 = torch.topk(logits.float(), 2).values
    spec_token = spec_ids[n] if n < len(spec_ids) else -1
    return Divergence(n, plain_ids[n], spec_token, float(top2[0] - top2[1]))
