"""The EAGLE-3 training objective ("training-time test", TTT) on one batch (deepspec-format.md §3.4,
DeepSpec ``modeling/eagle3/loss.py``), built from Eagle3Model's pieces (fuse_features, embed, step,
logits) so that training runs exactly the computation the drafter runs at inference (§4.4).

Notation: S = padded sequence width, x_t = input_ids[:, t], L_b = the length of sequence b.
Step s = 0..K-1 (K = ttt_steps, DeepSpec's ttt_length = 7), at every sequence index t at once:
  input pair  (g_s[t], x_{t+1+s}): g_0 = fc(target features at t); g_s = step s-1's output at t
              (the recurrent draft hidden, as when drafting); the token is teacher-forced
  RoPE        position t+s (DeepSpec's ``rope_cache_step_offset``)
  predicts    x_{t+2+s}, against the soft target p_s[t] = softmax(target logits at t+1+s)
  attends to  step-0 keys u <= t (the committed context) and the keys at index t of steps 1..s
              (the "diagonal": the drafts this chain made before; the query's own key included).
              Keys of step s are appended after those of steps 0..s-1: key column j*S + u is step
              j's key at index u (``eagle3_attention_mask``).
This is what inference does from the anchor a = t+1: the committed pairs (feature i, x_{i+1}) at
positions i <= t, then one drafted pair per step at positions t+1, t+2, ... (eagle3.py).

Position mask (which (s, t) are supervised): m_0[t] = loss_mask[t] with each sequence's last
token zeroed (its next token is not in the batch); m_s[t] = m_0[t+s] (shifted left by one per
step, zero past the end). Every input a supervised (s, t) reads then lies inside the sequence.

Loss: soft cross-entropy per supervised (s, t), -sum_v p_s[t](v) log q_s[t](v), with q the
drafter's softmax over its own vocabulary. With a reduced draft vocabulary the sum runs over the
draft vocabulary only: the target's mass outside it is dropped (not renormalized). That mass is
nothing the drafter can learn (its log-prob there is -inf at inference, a constant to the
optimizer); keeping the rest unnormalized means the optimum is still p restricted and
renormalized, and rows where the target mostly predicts outside tokens weigh less.
Normalization is DeepSpec's "local_mean" at local batch 1: each sequence's sum over t is divided
by its length L_b, then averaged over the batch; steps are weighted step_decay**s (0.8**s) and
summed. Memory: logits are taken only at supervised (s, t), and each step's head + soft CE is
checkpointed (its [N, V] tensors are recomputed in backward, not kept across the 7 steps).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..drafters.eagle3_model import Eagle3Model
from .dspark_objective import Batch


def eagle3_attention_mask(seq_len: int, step: int, device: torch.device | str | None = None) -> Tensor:
    """bool [S, (step+1)*S], True = may attend: row t (the query at index t of step ``step``) sees
    step-0 keys u <= t (causal, columns 0..S-1) and, in each later block j = 1..step (columns
    j*S .. j*S+S-1, step j's keys), exactly the key at its own index t (the diagonal)."""
    t = torch.arange(seq_len, device=device)[:, None]  # [S, 1] query index
    u = torch.arange(seq_len, device=device)[None, :]  # [1, S] key index inside a block
    return torch.cat([u <= t] + [u == t] * step, dim=1)  # [S, (step+1)*S]


def step_input_ids(input_ids: Tensor, step: int, pad_id: int = 0) -> Tensor:
    """[B, S] -> [B, S]: index t holds x_{t+1+step} (``pad_id`` past the end)."""
    shift = step + 1
    out = torch.full_like(input_ids, pad_id)
    if shift < input_ids.shape[1]:
        out[:, : input_ids.shape[1] - shift] = input_ids[:, shift:]
    return out


def position_masks(batch: Batch, steps: int) -> Tensor:
    """bool [K, B, S]: which (step, index) pairs are supervised (see the module docstring)."""
    B, S = batch.input_ids.shape
    idx = torch.arange(S, device=batch.input_ids.device)
    m0 = batch.loss_mask.bool() & (idx[None, :] < (batch.lengths[:, None] - 1))  # [B, S], last token zeroed
    masks = torch.zeros(steps, B, S, dtype=torch.bool, device=m0.device)
    for s in range(steps):
        if s < S:
            masks[s, :, : S - s] = m0[:, s:]
    return masks


def ttt_hiddens(model: Eagle3Model, features: Tensor, input_ids: Tensor, steps: int) -> list[Tensor]:
    """The K teacher-forced TTT steps over whole sequences -> K pre-norm outputs g_s [B, S, H]
    (logits = model.logits(g_s); g_s[:, t] predicts x_{t+2+s}).

    features [B, S, m*H]: the target's raw layer outputs; input_ids [B, S]."""
    B, S = input_ids.shape
    device = input_ids.device
    max_pos = model.rope_cos.shape[0] - 1
    base = torch.arange(S, device=device)[None].expand(B, S)  # [B, S]
    g = model.fuse_features(features)  # [B, S, H] g_0 = fc(features)
    past_k: Tensor | None = None  # [B, Hkv, s*S, D]: the keys of steps 0..s-1, step-major
    past_v: Tensor | None = None
    outs: list[Tensor] = []
    for s in range(steps):
        e = model.embed(step_input_ids(input_ids, s))  # [B, S, H] e(x_{t+1+s})
        positions = (base + s).clamp(max=max_pos)  # [B, S] RoPE t+s (clamped rows are never supervised)
        mask = eagle3_attention_mask(S, s, device)[None, None]  # [1, 1, S, (s+1)*S]
        g, k, v = model.step(e, g, positions, past_k, past_v, mask)  # g [B, S, H]; k, v [B, Hkv, S, D]
        past_k = k if past_k is None else torch.cat([past_k, k], dim=2)  # [B, Hkv, (s+1)*S, D]
        past_v = v if past_v is None else torch.cat([past_v, v], dim=2)
        outs.append(g)
    return outs


def _soft_ce(model: Eagle3Model, h: Tensor, target_logits: Tensor, rows_b: Tensor, rows_p: Tensor,
             vocab: Tensor | None) -> tuple[Tensor, ...]:
    """h [N, H] draft outputs, scored against the target's logits at (rows_b, rows_p) of
    target_logits [B, S, V] -> ce [N] = -sum_{v in draft vocab} p(v) log q(v); and, without gradients, the drafter's argmax
    [N] (target ids), the target's argmax [N], the target mass outside the draft vocabulary [N]."""
    log_q = model.logits(h).float().log_softmax(-1)  # [N, Vd]
    with torch.no_grad():
        p = target_logits[rows_b, rows_p].float().softmax(-1)  # [N, V]
        p_in = p[:, vocab] if vocab is not None else p  # [N, Vd]: mass outside the draft vocab dropped
    ce = -(p_in * log_q).sum(-1)  # [N]
    with torch.no_grad():
        guess = log_q.argmax(-1)
        guess = vocab[guess] if vocab is not None else guess
        outside = (1.0 - p_in.sum(-1)).clamp_min(0.0)
    return ce, guess, p.argmax(-1), outside


def eagle3_loss(
    model: Eagle3Model,
    batch: Batch,
    features: Tensor,
    target_logits: Tensor,
    ttt_steps: int | None = None,
    step_decay: float = 0.8,
) -> tuple[Tensor, dict[str, float]]:
    """features [B, S, m*H] and target_logits [B, S, V] from one target forward over the batch
    (target_logits[:, p] is the target's distribution of x_{p+1}). ttt_steps defaults to
    model.cfg.block_size (DeepSpec's ttt_length).

    Returns (loss, stats): loss = sum_s step_decay**s * mean_b(sum_t m_s ce_s / L_b); stats (floats):
    "loss"; "ce" the mean soft-CE per supervised (s, t); "acc" how often the drafter's argmax is
    the target's argmax over all supervised (s, t); "acc0" the same at step 0; "tau" the greedy
    acceptance length from every step-0 position (1 + the run of correct steps, DeepSpec's
    tau_greedy); "outside" the mean target mass outside a reduced draft vocabulary; "slots"."""
    steps = int(ttt_steps if ttt_steps is not None else model.cfg.block_size)
    ids = batch.input_ids
    B, S = ids.shape
    masks = position_masks(batch, steps)  # [K, B, S]
    hiddens = ttt_hiddens(model, features, ids, steps)  # K x [B, S, H]
    inv_len = 1.0 / batch.lengths.clamp_min(1).float()  # [B] local_mean: per-sequence 1 / L_b
    vocab = model.draft_vocab_ids if model.reduced_vocab else None  # [Vd] target ids
    total = target_logits.new_zeros((), dtype=torch.float32)
    ce_sum, outside_sum, n_valid = 0.0, 0.0, 0
    correct = torch.zeros(steps, B, S, dtype=torch.bool, device=ids.device)  # [K, B, S]
    for s, g in enumerate(hiddens):
        rows_b, rows_t = masks[s].nonzero(as_tuple=True)  # [N] each: the supervised (b, t) of step s
        if rows_b.numel() == 0:
            continue
        h = g[rows_b, rows_t]  # [N, H]
        args = (model, h, target_logits, rows_b, rows_t + 1 + s, vocab)  # the target's row t+1+s scores x_{t+2+s}
        if torch.is_grad_enabled():  # recompute the [N, V] tensors in backward instead of keeping 7 steps of them
            ce, guess, best, outside = checkpoint(_soft_ce, *args, use_reentrant=False)
        else:
            ce, guess, best, outside = _soft_ce(*args)
        step_loss = (ce * inv_len[rows_b]).sum() / B
        total = total + (step_decay**s) * step_loss
        with torch.no_grad():
            correct[s, rows_b, rows_t] = guess == best
            ce_sum += float(ce.detach().sum())
            outside_sum += float(outside.sum())
            n_valid += int(rows_b.numel())
    if n_valid == 0:  # nothing supervised in this batch: a zero loss that still has a graph
        total = total + 0.0 * hiddens[0].sum()
    with torch.no_grad():
        n = max(n_valid, 1)
        starts = masks[0]  # [B, S] chains that start at a supervised step-0 position
        run = correct.long().cumprod(dim=0).sum(dim=0)  # [B, S] correct steps before the first miss
        n0 = max(int(starts.sum()), 1)
        stats = {
            "loss": float(total.detach()),
            "ce": ce_sum / n,
            "acc": float(correct.sum()) / n,
            "acc0": float((correct[0] & starts).sum()) / n0,
            "tau": 1.0 + float((run * starts).sum()) / n0,
            "outside": outside_sum / n,
            "slots": float(n_valid),
        }
    return total, stats
