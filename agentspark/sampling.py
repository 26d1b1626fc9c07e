"""SamplingParams and the one function that turns logits into the distribution decoding samples from.

``probs_from_logits`` is applied alike to the target's logits (p) and the drafter's (q): the
speculative output then follows exactly the distribution plain decoding samples from with the
same parameters. Temperature 0 means greedy: the distribution is one-hot at the argmax (the first
maximal index, as ``torch.argmax`` returns it on every device).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .constraints import Grammar
from .errors import InvalidSamplingError


# Bounds of what a request may ask for. Seeds: torch seeds a generator with a uint64 (2**64 and up
# crashed make_generator) and 2**63 - 1 is the largest seed every consumer (torch, int64 clients)
# takes alike. Temperature: float32 logits divided by less than about 1e-36 overflow to inf and
# softmax returns NaN; MIN_TEMPERATURE keeps clear of that while still admitting the tiny values
# clients send to APIs that refuse 0 (1e-8 and the like; 0 is exact greedy). Above MAX_TEMPERATURE
# the distribution is uniform for every practical purpose, so a larger value is a mistake (1e308,
# inf), not a choice. top_k: the graph runner packs it into an int32 buffer.
MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 1e-30
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 2**31 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is an int to Python, not a count


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # None: a fresh random seed per generation
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default=())  # stop strings: the text is cut before them
    grammar: Grammar | None = None  # constrained decoding (constraints.py): the output must match it
    logprobs: int | None = None  # report generated tokens' logprobs and the k best (logprobs.py); None = off
    # tool_choice "required" under the constrained tool-call grammar: one or more calls (else exactly one).
    # The engine ignores it; the local backends' request preparation reads it (backends/local.py).
    parallel_tool_calls: bool = False

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_real(t) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise InvalidSamplingError(
                f"temperature must be 0 (greedy) or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {t!r}")
        if not _is_real(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise InvalidSamplingError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            raise InvalidSamplingError(
                f"top_k must be an integer in [0, {MAX_TOP_K}] (0 = off), got {self.top_k!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InvalidSamplingError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise InvalidSamplingError(
                f"seed must be an integer in [0, 2**63 - 1] (or None for a random seed), got {self.seed!r}")
        if isinstance(self.stop, str):  # a lone string is one stop string, not its characters
            object.__setattr__(self, "stop", (self.stop,))
        if not isinstance(self.stop, (tuple, list)) or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidSamplingError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= 20):
            raise InvalidSamplingError(
                f"logprobs must be None (off) or an integer in [0, 20] (alternatives per token), got {self.logprobs!r}")
        if not isinstance(self.parallel_tool_calls, bool):
            raise InvalidSamplingError(f"parallel_tool_calls must be True or False, got {self.parallel_tool_calls!r}")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise InvalidSamplingError(f"grammar must be an agentspark.constraints.Grammar, got {type(self.grammar).__name__}")

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
    """A generator seeded with ``params.seed`` (validated to [0, MAX_SEED]), or with a fresh random
    seed when it is None, so unseeded generations differ from each other."""
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return gen
