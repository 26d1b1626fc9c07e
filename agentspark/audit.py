"""Equivalence audits: compare what was decoded with plain decoding from scratch, per request.

Two checks, each a ``Check`` of the ``AuditResult``:

- **session** (traced rounds only): the tokens the session recorded, produced *with its KV reuse*
  (the cache kept from its earlier rounds, only the appended part prefilled), against plain
  decoding from a fresh cache on the prompt ids the session sent (their hash is in the trace, so
  a rebuilt prompt that differs is caught instead of compared). Greedy sessions: token for token.
  The reused K/V were computed by other forwards (earlier prefills, decode and verify steps) than
  one fresh prefill, so their bits may differ even on the CPU in float32: a divergence passes only
  at a near-tie of the plain run (top-2 margin < epsilon), in every mode. Sampled sessions: one
  draw cannot be compared token for token (a speculative run spends its random numbers otherwise
  than a plain one) and shows nothing of its distribution; what it can show is that each recorded
  token is one plain sampling could draw there (inside the temperature / top-k / top-p support
  given the recorded tokens before it); its mean log-probability is reported.
- **speculative**: a fresh speculative re-run against a fresh plain run. Greedy: token-exact; on
  the CPU in float32 decode steps are row-invariant, so anything but identity fails; elsewhere
  (bf16, CUDA) a divergence passes only at a near-tie, as DESIGN.md states. Sampling: ``samples``
  seeded runs of each, the first ``sample_tokens`` tokens compared with the two-sample chi-square
  test of ``agentspark.equivalence`` at ``alpha``; ``control=True`` also runs an accept-always
  verifier through the same test, to show it has power.

Every divergence is reported with its position, both tokens and the plain run's top-2 logit margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .divergence import first_divergence, replay_plain
from .engine import Engine
from .equivalence import homogeneity_test
from .model.decoder import DecoderModel
from .sampling import SamplingParams, probs_from_logits, sample
from .verify import Verdict

NEAR_TIE_EPSILON = 0.5  # logits; four bf16 steps at the magnitudes these models produce

SESSION, SPECULATIVE = "session", "speculative"
LABELS = {SESSION: "session tokens vs plain from scratch", SPECULATIVE: "fresh speculative vs plain"}


@dataclass
class Check:
    """One comparison of an audit; ``ran`` False when the trace lacks what it needs (it then passes)."""

    name: str  # SESSION | SPECULATIVE
    passed: bool
    detail: str
    divergence: dict | None = None  # the first divergence, with "check": name
    ran: bool = True

    def line(self) -> str:
        state = "not checked" if not self.ran else "ok" if self.passed else "FAILED"
        return f"{LABELS[self.name]}: {state}, {self.detail}"


@dataclass
class AuditResult:
    mode: str  # "greedy" | "sampling" (of the speculative check)
    passed: bool
    detail: str  # one clause per check, naming it: the verdict a trace keeps says which checks ran
    first_divergence: dict | None = None
    checks: list[Check] = field(default_factory=list)


@dataclass(frozen=True)
class SessionRecord:
    """What a traced round's session produced, as the trace holds it."""

    token_ids: list[int] | None  # None: the backend reported none (a remote one)
    prompt_hash: str  # of the prompt ids it sent ('' when unknown)
    params: SamplingParams  # as the session ran them (the forced-call stop included)


def rebuilt_round(backend, trace_round) -> tuple[list[int], SamplingParams, SessionRecord]:  # noqa: ANN001
    """A traced round's request rebuilt as the session's backend built it (a forced call through
    the tool-call grammar, or on the text path with the recorded prefix and closed where the
    recording closed it): (prompt ids, params, what the session produced). ``backend`` is a
    LocalBackend without cache reuse; ``trace_round`` a TraceRound."""
    from .traces.replay import forced_by, sampling_of  # late: the traces package loads matplotlib for its plots

    request = trace_round.request
    params, tool_choice = sampling_of(request)
    prepared = backend.prepare(request.messages, request.tools, params, tool_choice, **forced_by(request))
    record = SessionRecord(token_ids=trace_round.response.get("token_ids"), prompt_hash=request.prompt_hash,
                           params=prepared.params)
    return prepared.prompt_ids, prepared.params, record


def exact_mode(engine: Engine) -> bool:
    """Greedy equality must be exact: row-invariant decode and verify steps (CPU float32), or the
    device runner's exact mode (every decode-phase forward at one shape, graph_runner.py)."""
    if getattr(engine.runner, "exact", False):
        return True
    return engine.device.type == "cpu" and engine.model.dtype == torch.float32


def mode_name(engine: Engine) -> str:
    """Which mode ran, for the audit's lines: exact (divergences are bugs) or fast (near-ties pass)."""
    if getattr(engine.runner, "exact", False):
        return "exact mode (one forward shape)"
    return "exact mode (row-invariant CPU float32)" if exact_mode(engine) else "fast mode (near-ties allowed)"


def _result(mode: str, checks: list[Check]) -> AuditResult:
    failed = [c for c in checks if not c.passed]
    # the divergence to keep: the one that failed the audit, else one that passed as a near-tie
    divergence = next((c.divergence for c in failed + checks if c.divergence is not None), None)
    return AuditResult(mode, not failed, "; ".join(c.line() for c in checks), divergence, checks)


def _compare(model: DecoderModel, name: str, prompt_ids: list[int], plain_ids: list[int], other_ids: list[int],
             *, exact: bool, other: str, tie_note: str, clear_note: str) -> Check:
    """Token-for-token comparison with plain; a near-tie divergence passes unless ``exact``."""
    d = first_divergence(model, prompt_ids, plain_ids, other_ids)
    if d is None:
        return Check(name, True, f"identical ({len(plain_ids)} tokens)")
    ok = not exact and d.is_near_tie(NEAR_TIE_EPSILON)
    what = tie_note if ok else "exact mode requires identity" if exact else clear_note
    detail = (f"diverged at token {d.position}: plain {d.plain_token} vs {other} {d.spec_token}, "
              f"plain top-2 margin {d.plain_margin:.4g} ({what})")
    return Check(name, ok, detail, {"check": name, **d.__dict__})


def check_speculative_greedy(engine: Engine, prompt_ids: list[int], params: SamplingParams,
                             plain_ids: list[int]) -> Check:
    spec = engine.generate(prompt_ids, params)
    return _compare(engine.model, SPECULATIVE, prompt_ids, plain_ids, spec.token_ids, exact=exact_mode(engine),
                    other="speculative", tie_note="near-tie, allowed in this mode",
                    clear_note="a clear-margin divergence: a bug")


def audit_greedy(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> AuditResult:
    """The fresh speculative check alone (prompts files; a request with no recorded session)."""
    params = replace(params, temperature=0.0)
    plain = engine.generate(prompt_ids, params, speculative=False)
    return _result("greedy", [check_speculative_greedy(engine, prompt_ids, params, plain.token_ids)])


def _accept_always(draft, q, p, generator) -> Verdict:
    l = draft.shape[0]
    return Verdict(accepted=l, token=int(sample(p[l : l + 1], generator).item()))


def check_speculative_sampling(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, *, samples: int = 200, sample_tokens: int = 4,
    alpha: float = 1e-3, control: bool = False,
) -> Check:
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
    return Check(SPECULATIVE, passed, detail)


def audit_sampling(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, *, samples: int = 200, sample_tokens: int = 4,
    alpha: float = 1e-3, control: bool = False,
) -> AuditResult:
    check = check_speculative_sampling(engine, prompt_ids, params, samples=samples, sample_tokens=sample_tokens,
                                       alpha=alpha, control=control)
    return _result("sampling", [check])


def _bad_token_ids(tokens: object, vocab: int) -> bool:
    """A hand-edited trace may hold anything there; the model must only be fed its own ids."""
    return not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in tokens)


def check_session_greedy(model: DecoderModel, prompt_ids: list[int], plain_ids: list[int], recorded: list[int],
                         horizon: int) -> Check:
    """The recorded tokens against plain's, over the first ``horizon`` tokens (the smaller of the two
    budgets: greedy runs with a larger budget start with exactly the tokens of a smaller one)."""
    check = _compare(model, SESSION, prompt_ids, plain_ids[:horizon], recorded[:horizon], exact=False,
                     other="recorded", tie_note="near-tie, allowed: the session's reused K/V come from other forwards",
                     clear_note="a clear-margin divergence: the session did not decode what plain decoding does")
    if horizon < len(recorded):
        check.detail += f" over the first {horizon} of {len(recorded)} recorded tokens (the audit's budget)"
    return check


def check_session_sampled(model: DecoderModel, prompt_ids: list[int], recorded: list[int],
                          params: SamplingParams) -> Check:
    """Each recorded token inside plain sampling's support given the recorded tokens before it."""
    logps: list[float] = []
    outside: list[tuple[int, float]] = []  # (position, logit gap below the support)
    near_ties = 0

    def visit(i: int, logits: torch.Tensor) -> bool:
        nonlocal near_ties
        p = probs_from_logits(logits[None], params)[0]
        token = recorded[i]
        if p[token] > 0:
            logps.append(math.log(float(p[token])))
            return False
        # how far below the least likely token plain could draw: a sliver is a boundary near-tie
        gap = float(logits[p > 0].min() - logits[token])
        if gap < NEAR_TIE_EPSILON:
            near_ties += 1
            return False
        outside.append((i, gap))
        return True  # the first token outside decides; the rest need not be replayed

    replay_plain(model, prompt_ids, recorded[:-1], visit)
    limits = f"temperature {params.temperature:g}, top-k {params.top_k}, top-p {params.top_p:g}"
    if outside:
        i, gap = outside[0]
        detail = (f"recorded token {i} ({recorded[i]}) is one plain sampling cannot draw there ({limits}): "
                  f"its logit lies {gap:.4g} below the least likely token it can")
        return Check(SESSION, False, detail, {"check": SESSION, "position": i, "spec_token": recorded[i],
                                              "support_gap": gap})
    mean = sum(logps) / len(logps) if logps else float("nan")
    detail = (f"sampled: all {len(recorded)} recorded tokens are ones plain sampling can draw ({limits}; "
              f"mean log p {mean:.3g}{f', {near_ties} at the support boundary' if near_ties else ''}); "
              "one draw cannot be checked token for token nor for its distribution")
    if params.top_k == 0 and params.top_p >= 1.0:
        detail += " (no top-k/top-p: this rules out only tokens of vanishing probability)"
    return Check(SESSION, True, detail)


def check_session(engine: Engine, prompt_ids: list[int], params: SamplingParams, record: SessionRecord,
                  plain_greedy: Callable[[], list[int]]) -> Check:
    """The session check of a traced round (see the module docstring); ``params`` are the audit's."""
    from .traces.schema import prompt_hash  # late: the traces package loads matplotlib for its plots

    tokens = record.token_ids
    if tokens is None:
        return Check(SESSION, True, "the trace holds no token ids for this round (a remote backend's)", ran=False)
    if not tokens or _bad_token_ids(tokens, engine.model.cfg.vocab_size):
        return Check(SESSION, False, "the recorded token_ids are not a non-empty list of this model's token ids")
    if record.prompt_hash and prompt_hash(prompt_ids) != record.prompt_hash:
        return Check(SESSION, False, f"the rebuilt prompt (hash {prompt_hash(prompt_ids)}) is not the one the session "
                                     f"sent ({record.prompt_hash}): audit with the model that recorded the trace")
    horizon = min(record.params.max_new_tokens, params.max_new_tokens)
    if record.params.greedy:
        check = check_session_greedy(engine.model, prompt_ids, plain_greedy(), tokens, horizon)
    else:
        check = check_session_sampled(engine.model, prompt_ids, tokens[:horizon], record.params)
    if not record.prompt_hash:
        check.detail += " (prompt unverified: the trace has no prompt hash)"
    return check


def audit_round(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, record: SessionRecord | None, *,
    samples: int = 200, sample_tokens: int = 4, control: bool = False,
) -> AuditResult:
    """Both checks of a request: the session's recorded tokens (when ``record`` is given) and a
    fresh speculative re-run, each against plain decoding from scratch with ``params``."""
    plain: list[int] = []

    def plain_greedy() -> list[int]:  # one plain run serves both greedy checks
        if not plain:
            plain.extend(engine.generate(prompt_ids, replace(params, temperature=0.0), speculative=False).token_ids)
        return plain

    checks = [] if record is None else [check_session(engine, prompt_ids, params, record, plain_greedy)]
    if params.greedy:
        checks.append(check_speculative_greedy(engine, prompt_ids, params, plain_greedy()))
    else:
        checks.append(check_speculative_sampling(engine, prompt_ids, params, samples=samples,
                                                 sample_tokens=sample_tokens, control=control))
    return _result("greedy" if params.greedy else "sampling", checks)
