"""SamplingParams and the one function that turns logits into the distribution decoding samples from.

``probs_from_logits`` is applied alike to the target's logits (p) and the drafter's (q): the
speculative output then follows exactly the distribution plain decoding samples from with the
same parameters. Temperature 0 means greedy: the distribution is one-hot at the argmax (the first
maximal index, as ``torch.argmax`` returns it on every device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import InvalidSamplingError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default=())  # stop strings: the text is cut before them

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise InvalidSamplingError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidSamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidSamplingError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidSamplingError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidSamplingError(f"seed must be a non-negative integer, got {self.seed}")
        if isinstance(self.stop, str):  # a lone string is one stop string, not its characters
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidSamplingError(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def probs_from_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits [N, V] -> probabilities [N, V] in float32 (temperature, then top-k, then top-p)."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always >= 1 token).
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [N, V] mass of strictly better tokens
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def probs_rows(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, *, filtered: bool) -> Tensor:
    """``probs_from_logits`` for rows with their own parameters, as device tensors (no host sync,
    no shape from the data: the model runner captures it in its round graphs).

    logits [R, T, V]; temperature [R] (0 = greedy: one-hot at the argmax); top_k [R] long (0 = off);
    top_p [R] (values >= 1 = off) -> p [R, T, V] float32. ``filtered`` False skips the sort when no
    row uses top-k or top-p. Same rule as ``probs_from_logits`` (temperature, then top-k keeping
    ties with the k-th value, then top-p over what top-k left); equal up to float rounding.
    """
    R, T, V = logits.shape
    x = logits.float()
    greedy = (temperature <= 0)[:, None, None]  # [R, 1, 1]
    x = x / torch.where(temperature > 0, temperature, 1.0)[:, None, None]
    if filtered:
        ordered, order = x.sort(dim=-1, descending=True)  # [R, T, V]
        k = torch.where((top_k > 0) & (top_k < V), top_k, V)  # [R]
        kth = ordered.gather(-1, (k - 1)[:, None, None].expand(R, T, 1))  # [R, T, 1]
        x = x.masked_fill(x < kth, float("-inf"))
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
        sorted_probs = ordered.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = mass_before >= torch.where(top_p < 1.0, top_p, 2.0)[:, None, None]
        x = x.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    one_hot = torch.nn.functional.one_hot(logits.argmax(dim=-1), V).float()
    return torch.where(greedy, one_hot, x.softmax(dim=-1))


def sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of probs [N, V] -> [N] (long), exactly distributed as probs.

    Exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i. One pass
    over V and no host sync, where torch.multinomial took ~3 ms per row at V = 49152 on a CPU.
    """
    race = exponential_race(*probs.shape, generator, probs.device)  # [N, V]
    return (probs / race).argmax(dim=-1)


def exponential_race(n: int, V: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """[n, V] Exp(1) draws (float32, clamped away from 0): argmax(p / race) samples from p."""
    return torch.empty(n, V, device=device).exponential_(generator=generator).clamp_min_(1e-30)


def draw(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """A drafter's pick from logits [N, V']: (indices [N], q [N, V']), q None when greedy (the
    argmax is deterministic, so the verifier needs no q)."""
    if params.greedy:
        return logits.argmax(dim=-1), None
    q = probs_from_logits(logits, params)
    return sample(q, generator), q


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return gen
