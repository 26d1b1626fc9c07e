"""Per-round and per-request statistics: what every request returns, and what traces record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RoundStats:
    drafted: int  # gamma: tokens the drafter proposed
    verified: int  # l: tokens sent to the target (after scheduling), l <= gamma
    accepted: int  # a: draft tokens that survived verification
    committed: int  # tokens this round added to the output (a + 1, fewer if a stop cut the block)
    draft_s: float
    verify_s: float
    other_s: float  # sampling, bookkeeping, detokenizing, stop checks


@dataclass
class EngineClock:
    """Where a batch engine's rounds spent their time, summed since it was made (benchmarks take
    the difference over a pass): admitting requests (prefill and first token), drafting and
    scheduling, the runner's round (the forward, the verifier, the host sync), committing."""

    rounds: int = 0
    rows: int = 0  # requests summed over rounds (rows / rounds: how full the batch ran)
    admissions: int = 0  # requests admitted (each one prefill and first token)
    drafting_rounds: int = 0  # rounds that drafted (the adaptive schedule skips drafting where it does not pay)
    admit_s: float = 0.0
    draft_s: float = 0.0  # drafting and scheduling, the constraint masks included
    mask_s: float = 0.0  # of draft_s: the grammar masks of constrained rows (host work, per row)
    runner_s: float = 0.0
    commit_s: float = 0.0

    def since(self, before: EngineClock) -> dict[str, float]:
        """Per-round milliseconds of each part since ``before`` (a copy taken earlier)."""
        n = max(1, self.rounds - before.rounds)
        return {"rounds": self.rounds - before.rounds, "rows_per_round": (self.rows - before.rows) / n,
                "drafting_fraction": (self.drafting_rounds - before.drafting_rounds) / n,
                **{f"{k}_ms_per_round": 1e3 * (getattr(self, k) - getattr(before, k)) / n
                   for k in ("admit_s", "draft_s", "mask_s", "runner_s", "commit_s")}}


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    new_tokens: int = 0
    total_s: float = 0.0
    finish_reason: str = ""  # "stop" (EOS or stop string) | "length"
    drafter: str = "none"
    rounds: list[RoundStats] = field(default_factory=list)

    @property
    def draft_s(self) -> float:
        return sum(r.draft_s for r in self.rounds)

    @property
    def verify_s(self) -> float:
        return sum(r.verify_s for r in self.rounds)

    @property
    def other_s(self) -> float:
        return sum(r.other_s for r in self.rounds)

    @property
    def mean_accepted_length(self) -> float:
        """tau: tokens committed per decoding round (accepted drafts + the bonus/correction token).

        The first token comes from prefill and belongs to no round (DeepSpec counts the same way).
        """
        return sum(r.committed for r in self.rounds) / len(self.rounds) if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        verified = sum(r.verified for r in self.rounds)
        return sum(r.accepted for r in self.rounds) / verified if verified else 0.0

    @property
    def tokens_per_second(self) -> float:
        """New tokens over the whole request's wall time, prefill included."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def to_dict(self, *, rounds: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not rounds:
            out.pop("rounds")
        out.update(
            rounds_count=len(self.rounds),
            draft_s=self.draft_s,
            verify_s=self.verify_s,
            other_s=self.other_s,
            mean_accepted_length=self.mean_accepted_length,
            acceptance_rate=self.acceptance_rate,
            tokens_per_second=self.tokens_per_second,
        )
        return out
