"""Where a greedy output first leaves plain decoding, and by how clear a margin.

DESIGN.md's rule for fast (non-invariant) GPU modes: a divergence is acceptable only at a near-tie,
i.e. when the *plain* run's top-2 logit margin at that position is below a stated epsilon. The
margin is read by replaying plain decoding (prefill, then one-token steps) over the plain tokens.
The run compared with plain is a fresh speculative run, or the tokens a session recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .model.decoder import DecoderModel


@dataclass(frozen=True)
class Divergence:
    position: int  # index into the generated tokens
    plain_token: int
    spec_token: int  # the other run's token there (a fresh speculative run's, or the session's recorded one)
    plain_margin: float  # top-1 minus top-2 logit of the plain run at that position

    def is_near_tie(self, epsilon: float) -> bool:
        return self.plain_margin < epsilon


def replay_plain(
    model: DecoderModel, prompt_ids: list[int], tokens: list[int], visit: Callable[[int, torch.Tensor], bool | None]
) -> None:
    """Teacher-force ``tokens`` through plain decoding's path and show ``visit(i, logits)`` the
    logits plain decoding reads before token i (i = len(tokens): after the last one).

    The path is the engine's: one prefill of the prompt, then one row-invariant step per token, so
    the logits are the very ones a plain run over these tokens computes. ``visit`` returning True
    stops the replay (the rest of the steps are not needed). A callback, not a generator: a
    generator suspended inside ``inference_mode`` would leak that mode into its caller.
    """
    device = model.device
    with torch.inference_mode():
        cache = model.new_cache(len(prompt_ids) + len(tokens) + 1)
        logits = model(torch.tensor([prompt_ids], device=device), cache, 0, num_logits=1).logits[0, -1]
        if visit(0, logits):
            return
        for i, token in enumerate(tokens):
            step = torch.tensor([[token]], device=device)
            logits = model(step, cache, len(prompt_ids) + i, row_invariant=True).logits[0, -1]
            if visit(i + 1, logits):
                return


def top2_margin(logits: torch.Tensor) -> float:
    top2 = torch.topk(logits.float(), 2).values
    return float(top2[0] - top2[1])


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
    at_n: list[torch.Tensor] = []

    def keep_last(i: int, logits: torch.Tensor) -> None:
        if i == n:
            at_n.append(logits)

    replay_plain(model, prompt_ids, plain_ids[:n], keep_last)
    spec_token = spec_ids[n] if n < len(spec_ids) else -1
    return Divergence(n, plain_ids[n], spec_token, top2_margin(at_n[0]))
