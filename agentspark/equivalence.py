"""The statistical test that says whether two samplers draw from the same distribution.

Two-sample chi-square test of homogeneity on a contingency table of outcome counts (e.g. the
first k generated tokens of many seeded runs): H0 = both samples come from one distribution.
Outcomes seen fewer than ``min_count`` times in both samples together are pooled into one cell
(the chi-square approximation needs expected counts of about 5 or more); the p-value is the
chi-square survival function, computed with ``torch.special.gammaincc`` (no SciPy needed).

How it is used (tests and the audit): spec and plain each draw N samples; the verdict is "same"
when p >= alpha. Its power is shown on known-biased samplers (an accept-always verifier, a
verifier that resamples from p instead of norm(max(p - q, 0))): the same N and alpha reject them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HomogeneityResult:
    statistic: float
    dof: int
    p_value: float
    n_a: int
    n_b: int

    def same(self, alpha: float) -> bool:
        return self.p_value >= alpha


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof)."""
    if dof <= 0:
        return 1.0
    x = torch.tensor(statistic / 2.0, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), x))


def homogeneity_test(a: Iterable[Hashable], b: Iterable[Hashable], *, min_count: int = 10) -> HomogeneityResult:
    """Chi-square test that outcome samples a and b come from the same distribution."""
    ca, cb = Counter(a), Counter(b)
    na, nb = sum(ca.values()), sum(cb.values())
    if na == 0 or nb == 0:
        raise ValueError("both samples must be non-empty")
    table: list[tuple[int, int]] = []
    pooled = [0, 0]
    for cell in set(ca) | set(cb):
        if ca[cell] + cb[cell] >= min_count:
            table.append((ca[cell], cb[cell]))
        else:
            pooled[0] += ca[cell]
            pooled[1] += cb[cell]
    if sum(pooled):
        table.append((pooled[0], pooled[1]))
    statistic = 0.0
    for count_a, count_b in table:
        total = count_a + count_b
        for observed, n in ((count_a, na), (count_b, nb)):
            expected = total * n / (na + nb)
            statistic += (observed - expected) ** 2 / expected
    dof = len(table) - 1
    return HomogeneityResult(statistic=statistic, dof=dof, p_value=chi2_sf(statistic, dof), n_a=na, n_b=nb)
