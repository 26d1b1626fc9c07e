"""verify_rows: the fused verifier. For every row of a batched verify forward, the accepted count
and the one emitted token, computed on the device (inside the captured round, no host sync).

Row r verified n[r] draft tokens d_1..d_n at positions 0..n-1 of its T scored positions
(position t scores the token after t; T >= n[r] + 1). The rule is ``verify_chain``'s
(agentspark/verify.py, whose docstring states it), on given random numbers:

- sampling: d_k survives iff u_k * q_k(d_k) < p_k(d_k) (q one-hot at d_k for a deterministic
  drafter); a = the leading run of survivors; the token is argmax(r / race), r = max(p_a - q_a, 0)
  (q_n = 0: the bonus token), or p_a where r has no mass.
- greedy: scores are the logits; d_k survives iff it is argmax_k (the first maximal index, as
  torch.argmax), and the token is argmax_a.

Two launches. The first scores every position in parallel, as if the first rejection fell there
(grid R x T: each program streams one row of V once or twice); the second takes the leading run
of accepts and picks the candidate at it. Greedy output is bitwise ``verify_chain``'s; sampled
output is identical to ``verify_chain_given`` for the same u and race.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .support import check, check_contiguous, check_same_device, kernels_run_on, next_power_of_2

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover
    triton = None

BLOCK_V = 2048


def verify_rows_reference(
    scores: Tensor, draft: Tensor, n: Tensor, q: Tensor | None = None, u: Tensor | None = None,
    race: Tensor | None = None, *, greedy: bool,
) -> tuple[Tensor, Tensor]:
    """Row by row through ``verify_chain_given`` (greedy: p one-hot at the argmax, any u and race).

    scores [R, T, V] logits (greedy) or p (sampling, float32); draft [R, >=T-1] long; n [R] long;
    q [R, >=T-1, V] float32 or None; u [R, >=T-1]; race [R, V] -> accepted [R], token [R] (long)."""
    from ..verify import verify_chain_given

    R, T, V = scores.shape
    accepted, tokens = [], []
    for r in range(R):
        l = int(n[r])
        if greedy:
            p = torch.nn.functional.one_hot(scores[r, : l + 1].float().argmax(-1), V).float()
            ur, rr = torch.zeros(l, device=scores.device), torch.ones(V, device=scores.device)
        else:
            p, ur, rr = scores[r, : l + 1], u[r, :l], race[r]
        a, tok = verify_chain_given(draft[r, :l], None if q is None else q[r, :l], p, ur, rr)
        accepted.append(a)
        tokens.append(tok)
    return torch.stack(accepted), torch.stack(tokens)


if triton is not None:

    @triton.jit
    def _argmax_step(x, offs, V, best, best_i):
        """Fold one block of scores x at offsets offs into the running (max, first index of it)."""
        m = tl.max(x, axis=0)
        i = tl.min(tl.where(x == m, offs, V), axis=0).to(tl.int64)  # first index of the block's max
        better = m > best  # strict: an equal value in a later block never wins
        return tl.where(better, m, best), tl.where(better, i, best_i)

    @triton.jit
    def _first_argmax(row_ptr, V, BLOCK: tl.constexpr):
        """(max value, first index of it) over a row of V scores, in float32."""
        best = tl.full([], float("-inf"), tl.float32)
        best_i = tl.full([], 0, tl.int64)
        for v0 in range(0, V, BLOCK):
            offs = v0 + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            best, best_i = _argmax_step(x, offs, V, best, best_i)
        return best, best_i

    @triton.jit
    def _p_and_q(row, q_row, v0, V, d, drafted_v, HAS_Q: tl.constexpr, BLOCK: tl.constexpr):
        """One block of p and of q (one-hot at the draft for a deterministic drafter; 0 at the bonus)."""
        offs = v0 + tl.arange(0, BLOCK)
        ok = offs < V
        p = tl.load(row + offs, mask=ok, other=0.0)
        if HAS_Q:
            qv = tl.load(q_row + offs, mask=ok & drafted_v, other=0.0)
        else:
            qv = tl.where(drafted_v & (offs == d), 1.0, 0.0)
        return offs, ok, p, qv

    @triton.jit
    def _verify_positions_kernel(
        scores_ptr, draft_ptr, n_ptr, q_ptr, u_ptr, race_ptr, accept_ptr, emit_ptr,
        V, draft_stride, q_row_stride, u_stride,
        T: tl.constexpr, GREEDY: tl.constexpr, HAS_Q: tl.constexpr, BLOCK: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1)
        n = tl.load(n_ptr + r)
        row = scores_ptr + (r * T + t) * V
        if t <= n:
            drafted = t < n  # position t verifies d_{t+1}; t == n gives the bonus token
            d = tl.load(draft_ptr + r * draft_stride + t, mask=drafted, other=0)
            if GREEDY:
                _, best_i = _first_argmax(row, V, BLOCK)
                tl.store(emit_ptr + r * T + t, best_i)
                tl.store(accept_ptr + r * T + t, (drafted & (best_i == d)).to(tl.int32))
            else:
                q_row = q_ptr + (r * q_row_stride + t) * V
                p_d = tl.load(row + d, mask=drafted, other=0.0)
                if HAS_Q:
                    q_d = tl.load(q_row + d, mask=drafted, other=1.0)
                else:
                    q_d = 1.0
                u = tl.load(u_ptr + r * u_stride + t, mask=drafted, other=1.0)
                tl.store(accept_ptr + r * T + t, (drafted & (u * q_d < p_d)).to(tl.int32))
                # the residual max(p - q, 0) as if the first rejection were here (q = 0 at t == n)
                drafted_v = (tl.zeros([BLOCK], tl.int32) + t) < n  # [BLOCK] (a tensor mask, for the interpreter too)
                mass = tl.zeros([BLOCK], tl.float32)
                for v0 in range(0, V, BLOCK):
                    _, _, p, qv = _p_and_q(row, q_row, v0, V, d, drafted_v, HAS_Q, BLOCK)
                    mass += tl.maximum(p - qv, 0.0)
                use_residual = tl.sum(mass, axis=0) > 1e-8
                best = tl.full([], float("-inf"), tl.float32)
                best_i = tl.full([], 0, tl.int64)
                for v0 in range(0, V, BLOCK):
                    offs, ok, p, qv = _p_and_q(row, q_row, v0, V, d, drafted_v, HAS_Q, BLOCK)
                    target = tl.where(use_residual, tl.maximum(p - qv, 0.0), p)
                    race = tl.load(race_ptr + r * V + offs, mask=ok, other=1.0)
                    x = tl.where(ok, tl.math.div_rn(target, race), float("-inf"))  # IEEE division, as torch's
                    best, best_i = _argmax_step(x, offs, V, best, best_i)
                tl.store(emit_ptr + r * T + t, best_i)

    @triton.jit
    def _verify_select_kernel(n_ptr, accept_ptr, emit_ptr, accepted_ptr, token_ptr, T: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        n = tl.load(n_ptr + r)
        a = tl.full([], 0, tl.int64)
        alive = tl.full([], 1, tl.int32)
        for t in tl.static_range(T - 1):
            ok = tl.load(accept_ptr + r * T + t, mask=t < n, other=0)
            alive = alive & ok & (t < n).to(tl.int32)
            a += alive.to(tl.int64)
        tl.store(accepted_ptr + r, a)
        tl.store(token_ptr + r, tl.load(emit_ptr + r * T + a))


def verify_rows(
    scores: Tensor, draft: Tensor, n: Tensor, q: Tensor | None = None, u: Tensor | None = None,
    race: Tensor | None = None, *, greedy: bool,
) -> tuple[Tensor, Tensor]:
    """The kernel where it runs (CUDA, or the interpreter), else ``verify_rows_reference``."""
    if not kernels_run_on(scores):
        return verify_rows_reference(scores, draft, n, q, u, race, greedy=greedy)
    R, T, V = scores.shape
    check(draft.dim() == 2 and draft.shape[0] == R and draft.shape[1] >= T - 1 and draft.dtype == torch.long,
          f"draft must be [R={R}, >= {T - 1}] int64, got {tuple(draft.shape)} {draft.dtype}")
    check(n.shape == (R,) and n.dtype == torch.long, f"n must be [{R}] int64")
    check_contiguous("scores", scores)
    check_contiguous("n", n)
    check(draft.stride(1) == 1, "draft rows must be contiguous")
    if draft.shape[1] == 0:
        draft = draft.new_zeros(R, 1)
    if greedy:
        check(q is None, "greedy verification takes no q")
        q_arg, u_arg, race_arg, q_stride, u_stride = scores, scores, scores, 0, 0
    else:
        check(scores.dtype == torch.float32, f"sampled verification takes p in float32, got {scores.dtype}")
        check(u is not None and race is not None, "sampled verification needs u and race")
        check(u.shape[0] == R and u.shape[1] >= T - 1 and u.dtype == torch.float32 and u.stride(1) == 1,
              f"u must be [R, >= {T - 1}] float32")
        check(race.shape == (R, V) and race.dtype == torch.float32, f"race must be [{R}, {V}] float32")
        check_contiguous("race", race)
        if u.shape[1] == 0:
            u = u.new_ones(R, 1)
        if q is not None:
            check(q.shape[0] == R and q.shape[1] >= T - 1 and q.shape[2] == V and q.dtype == torch.float32,
                  f"q must be [R, >= {T - 1}, {V}] float32")
            check_contiguous("q", q)
            if q.shape[1] == 0:
                q = q.new_zeros(R, 1, V)
        q_arg, u_arg, race_arg = (q if q is not None else scores), u, race
        q_stride, u_stride = (q.shape[1] if q is not None else 0), u.stride(0)
        check_same_device(scores=scores, draft=draft, n=n, u=u, race=race)
    accept = torch.empty((R, T), dtype=torch.int32, device=scores.device)
    emit = torch.empty((R, T), dtype=torch.long, device=scores.device)
    _verify_positions_kernel[(R, T)](
        scores, draft, n, q_arg, u_arg, race_arg, accept, emit, V, draft.stride(0), q_stride, u_stride,
        T=T, GREEDY=greedy, HAS_Q=q is not None, BLOCK=min(BLOCK_V, max(16, next_power_of_2(V))), num_warps=8,
    )
    accepted = torch.empty(R, dtype=torch.long, device=scores.device)
    token = torch.empty(R, dtype=torch.long, device=scores.device)
    _verify_select_kernel[(R,)](n, accept, emit, accepted, token, T=T, num_warps=1)
    return accepted, token
