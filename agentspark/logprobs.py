"""Log-probabilities of generated tokens, from the target's distribution.

``SamplingParams(logprobs=k)`` asks for the log-probability of every generated token and of the
k most likely tokens at its position (k = 0: the chosen token's only). They are the target
model's own: log-softmax of its logits before temperature, top-k, top-p or a grammar's mask (as
vLLM and OpenAI report them), from the forward that decided the token. Under speculation that
forward is the verify whose row sits at the token's position; it computes the bits a plain step
there computes (row-invariant on the CPU in float32, and on CUDA in exact mode's route a, where the
round graphs keep the raw logits of such rows, see model/graph_runner.py), so the values equal
plain decoding's, like the tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the k most likely (token id, logprob), best first


def token_logprobs(logits: Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """logits [n, V] (row i decides tokens[i]) -> each token's logprob and the ``top`` best."""
    lp = torch.log_softmax(logits[: len(tokens)].float(), dim=-1)  # [n, V]
    chosen = lp.gather(1, torch.tensor(tokens, dtype=torch.long, device=lp.device)[:, None])[:, 0].tolist()
    best = lp.topk(top, dim=-1) if top else None
    out = []
    for i, (token, value) in enumerate(zip(tokens, chosen)):
        pairs = () if best is None else tuple(zip(best.indices[i].tolist(), best.values[i].tolist()))
        out.append(TokenLogprob(token, value, pairs))
    return out


def wire_logprobs(entries: list[TokenLogprob], decode: Callable[[int], str]) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` items: each token's text (``decode`` of its id alone), its
    logprob, its UTF-8 bytes and its ``top_logprobs`` alternatives in the same shape."""

    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = decode(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]
