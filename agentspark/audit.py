"""Equivalence audits: run speculative and plain decoding on the same requests and compare.

Greedy: token-exact per request; the first divergence is reported with both tokens and the plain
run's top-2 logit margin. On the CPU in float32 decode steps are row-invariant, so anything but
identity fails; elsewhere (bf16, CUDA) a divergence passes only at a near-tie (margin < epsilon),
as DESIGN.md states. Sampling: ``samples`` seeded runs of each, the first ``sample_tokens``
tokens compared with the two-sample chi-square test of ``agentspark.equivalence`` at ``alpha``;
``control=True`` also runs an accept-always verifier through the same test, to show it has power.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .divergence import first_divergence
from .engine import Engine
from .equivalence import homogeneity_test
from .sampling import SamplingParams, sample
from .verify import Verdict

NEAR_TIE_EPSILON = 0.5  # logits; four bf16 steps at the magnitudes these models produce


@dataclass
class AuditResult:
    mode: str  # "greedy" | "sampling"
    passed: bool
    detail: str
    first_divergence: dict | None = None


def exact_mode(engine: Engine) -> bool:
    """Row-invariant decode and verify steps (CPU float32): greedy equality must be exact."""
    return engine.device.type == "cpu" and engine.model.dtype == torch.float32


def audit_greedy(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> AuditResult:
    params = replace(params, temperature=0.0)
    plain = engine.generate(prompt_ids, params, speculative=False)
    spec = engine.generate(prompt_ids, params)
    d = first_divergence(engine.model, prompt_ids, plain.token_ids, spec.token_ids)
    if d is None:
        return AuditResult("greedy", True, f"identical ({len(plain.token_ids)} tokens)")
    ok = not exact_mode(engine) and d.is_near_tie(NEAR_TIE_EPSILON)
    what = "near-tie, allowed in this mode" if ok else "a clear-margin divergence: a bug" if not exact_mode(engine) else "exact mode requires identity"
    detail = (f"diverged at token {d.position}: plain {d.plain_token} vs speculative {d.spec_token}, "
              f"plain top-2 margin {d.plain_margin:.4g} ({what})")
    return AuditResult("greedy", ok, detail, d.__dict__)


def _accept_always(draft, q, p, generator) -> Verdict:
    l = draft.shape[0]
    return Verdict(accepted=l, token=int(sample(p[l : l + 1], generator).item()))


def audit_sampling(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, *, samples: int = 200, sample_tokens: int = 4,
    alpha: float = 1e-3, control: bool = False,
) -> AuditResult:
    params = replace(params, max_new_tokens=sample_tokens)

    def draws(speculative: bool, offset: int) -> list[tuple[int, ...]]:
        return [tuple(engine.generate(prompt_ids, replace(params, seed=offset + i), speculative=speculative).token_ids)
                for i in range(samples)]

    plain = draws(False, 1_000_000)
    result = homogeneity_test(draws(True, 0), plain)
    detail = f"chi-square p={result.p_value:.3g} (dof {result.dof}, {samples} samples each, first {sample_tokens} tokens)"
    passed = result.p_value >= alpha
    if control:
        verifier, engine.verifier = engine.verifier, _accept_always
        try:
            biased = homogeneity_test(draws(True, 0), plain)
        finally:
            engine.verifier = verifier
        detail += f"; accept-always control p={biased.p_value:.3g} ({'caught' if biased.p_value < alpha else 'NOT caught'})"
    return AuditResult("sampling", passed, detail)
