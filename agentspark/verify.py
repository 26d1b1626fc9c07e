"""The verifier: the reference rule of speculative sampling, in one pure-PyTorch function.

Every fast path (kernels, CUDA graphs) is tested against ``verify_chain``. Tests may pass the
engine another function with the same signature (the negative controls of the equivalence tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .sampling import exponential_race


@dataclass(frozen=True)
class Verdict:
    accepted: int  # a: how many leading draft tokens survived, 0..l
    token: int  # the one token emitted after them (correction at a < l, bonus at a == l)


class Verifier(Protocol):
    def __call__(
        self, draft: Tensor, q: Tensor | None, p: Tensor, generator: torch.Generator | None
    ) -> Verdict: ...


def verify_noise(l: int, V: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The random numbers one verification consumes, drawn in this order: u [l], one uniform per
    draft slot, then race [V], the exponential race that samples the emitted token (sampling.sample)."""
    u = torch.rand(l, generator=generator, device=device)
    return u, exponential_race(1, V, generator, device)[0]


def verify_chain_given(
    draft: Tensor, q: Tensor | None, p: Tensor, u: Tensor, race: Tensor
) -> tuple[Tensor, Tensor]:
    """``verify_chain``'s rule on given random numbers: u [l] uniforms, race [V] the exponential
    race. Returns (a, token) as device scalars, no host sync. The fused kernel
    (agentspark.kernels.verify) must return exactly these for the same inputs.

    The emitted token is argmax(r / race) for r = max(p_a - q_a, 0), or p_a where r has no mass:
    the race samples r's normalised distribution without dividing by its mass first.
    """
    l, V = draft.shape[0], p.shape[-1]
    rows = torch.arange(l, device=p.device)
    p_draft = p[rows, draft]  # [l] p_k(d_k)
    q_draft = torch.ones_like(p_draft) if q is None else q[rows, draft]  # [l] q_k(d_k)
    accept = u * q_draft < p_draft  # [l] u < p/q without dividing by a zero q
    a = torch.cumprod(accept.to(torch.int64), dim=0).sum()  # leading run of accepts (device scalar)
    # q padded with a zero row: the residual at a == l is then p_{l+1} itself (the bonus token).
    if q is None:
        q_ext = torch.zeros(l + 1, V, device=p.device, dtype=p.dtype)
        q_ext[rows, draft] = 1.0
    else:
        q_ext = torch.cat([q, torch.zeros(1, V, device=p.device, dtype=p.dtype)])  # [l+1, V]
    residual = (p[a] - q_ext[a]).clamp_min(0.0)  # [V]
    mass = residual.sum()
    token = (torch.where(mass > 1e-8, residual, p[a]) / race).argmax()
    return a, token


def verify_chain(draft: Tensor, q: Tensor | None, p: Tensor, generator: torch.Generator | None) -> Verdict:
    """Accept a prefix of a drafted chain so that the output is distributed exactly as p.

    draft [l] (long): drafted tokens d_1..d_l.
    q [l, V]: the drafter's distributions at those positions, after the same temperature /
      top-k / top-p as p; ``None`` means a deterministic drafter, i.e. q_k = one_hot(d_k).
    p [l+1, V]: the target's distributions at positions 1..l+1 from one verify forward.

    Rule (Leviathan et al. 2023; Chen et al. 2023): for k = 1..l, d_k survives with probability
    min(1, p_k(d_k) / q_k(d_k)); at the first rejection k, emit one token from
    norm(max(p_k - q_k, 0)) and stop; if all l survive, emit a bonus token from p_{l+1}.
    Greedy (p one-hot at argmax) is the limit: d_k survives iff it is the argmax, and the emitted
    token is the argmax. If the residual has no mass (p_k == q_k up to rounding), p_k is used.

    One host sync: reading ``a`` and the emitted token.
    """
    u, race = verify_noise(draft.shape[0], p.shape[-1], generator, p.device)
    a, token = verify_chain_given(draft, q, p, u, race)
    return Verdict(accepted=int(a.item()), token=int(token.item()))  # host sync
