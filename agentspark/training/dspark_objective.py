"""The DSpark / DFlash training objective on one batch (deepspec-format.md §3.3).

Anchors: response positions i whose next token is also a response token (a random subset, up to
``num_anchors`` per sequence). Block b = [x_a, MASK x (K-1)] at positions a..a+K-1 sees the
context strictly before a (the anchor's own feature does not exist yet at inference) and its own
K slots; labels are x_{a+1..a+K}, supervised over the contiguous valid prefix only.
Loss (weighted means, w_k = exp(-k / gamma) on valid slots):
  DSpark: 0.1 CE(z_k, x*) + 0.9 ||softmax(z_k) - p_t||_1 + 1.0 BCE(c_k, clamp(1 - ||.||_1 / 2, 0, 1))
  DFlash: CE only (no Markov head, no confidence head).
z_k = U_k + Markov bias from the teacher-forced previous token; p_t is the target's distribution
at the label's position (from the same target forward that gave the features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..drafters.dspark_model import DSparkModel


@dataclass(frozen=True)
class ObjectiveWeights:
    ce: float = 0.1
    l1: float = 0.9
    confidence: float = 1.0
    decay_gamma: float = 4.0

    @staticmethod
    def for_method(method: str) -> ObjectiveWeights:
        return ObjectiveWeights(ce=1.0, l1=0.0, confidence=0.0) if method == "dflash" else ObjectiveWeights()


@dataclass
class Batch:
    input_ids: Tensor  # [B, S] long, right-padded
    loss_mask: Tensor  # [B, S] bool, response tokens
    lengths: Tensor  # [B] long


def sample_anchors(batch: Batch, num_anchors: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """anchors [B, A] long (sorted) and keep [B, A] bool (False = padding anchor)."""
    B, S = batch.input_ids.shape
    ok = batch.loss_mask[:, :-1] & batch.loss_mask[:, 1:]  # [B, S-1] anchor and its next token are response
    anchors = torch.zeros(B, num_anchors, dtype=torch.long)
    keep = torch.zeros(B, num_anchors, dtype=torch.bool)
    for b in range(B):
        cand = ok[b].nonzero().flatten().cpu()
        if cand.numel() > num_anchors:
            cand = cand[torch.randperm(cand.numel(), generator=generator)[:num_anchors]].sort().values
        anchors[b, : cand.numel()] = cand
        keep[b, : cand.numel()] = True
    return anchors.to(batch.input_ids.device), keep.to(batch.input_ids.device)


def dspark_loss(
    model: DSparkModel,
    batch: Batch,
    features: Tensor,
    target_logits: Tensor,
    anchors: Tensor,
    keep: Tensor,
    weights: ObjectiveWeights,
) -> tuple[Tensor, dict[str, float]]:
    """features [B, S, m*H] and target_logits [B, S, V] from one target forward over the batch."""
    cfg = model.cfg
    ids, device = batch.input_ids, batch.input_ids.device
    B, S = ids.shape
    A, K = anchors.shape[1], cfg.block_size
    offsets = torch.arange(K, device=device)
    # --- blocks and labels ---
    pos = anchors[..., None] + offsets  # [B, A, K] positions of the block slots
    label_pos = pos + 1  # [B, A, K]
    in_seq = label_pos < batch.lengths[:, None, None]
    label_pos_c = label_pos.clamp(max=S - 1)
    labels = ids.gather(1, label_pos_c.view(B, -1)).view(B, A, K)
    valid = in_seq & batch.loss_mask.gather(1, label_pos_c.view(B, -1)).view(B, A, K) & keep[..., None]
    valid = valid.long().cumprod(dim=-1).bool()  # only a contiguous valid prefix is supervised
    block_ids = torch.full((B, A, K), cfg.mask_token_id, dtype=torch.long, device=device)
    block_ids[..., 0] = ids.gather(1, anchors)
    # --- attention: block b sees context < a_b and its own block ---
    N = A * K
    ctx_pos = torch.arange(S, device=device)
    sees_ctx = ctx_pos[None, None, :] < anchors[..., None]  # [B, A, S]
    sees_ctx = sees_ctx[:, :, None, :].expand(B, A, K, S).reshape(B, N, S)
    block_of = torch.arange(A, device=device).repeat_interleave(K)  # [N]
    # (padding blocks see their own slots too: a query that sees nothing would make NaNs; its loss is masked)
    sees_block = (block_of[:, None] == block_of[None, :])[None].expand(B, N, N)
    mask = torch.cat([sees_ctx, sees_block], dim=-1)[:, None]  # [B, 1, N, S+N]
    # --- forward ---
    context = model.fuse_context(features)  # [B, S, H]
    ctx = model.context_kv(context, ctx_pos[None].expand(B, S))
    h = model.block_hidden(block_ids.view(B, N), pos.view(B, N).clamp(max=model.rope_cos.shape[0] - 1), ctx, mask)
    h = h.view(B, A, K, -1)  # [B, A, K, H]
    z = model.base_logits(h).float()  # [B, A, K, Vd]
    prev = torch.cat([block_ids[..., :1], labels[..., :-1]], dim=-1)  # [B, A, K] teacher-forced x_{k-1}
    e_prev = None
    if model.markov_head is not None:
        e_prev = model.markov_head.prev_features(prev)  # [B, A, K, r]
        z = z + model.markov_head.block_bias(e_prev, h).float()
    # --- targets: the target's distribution at the label's position minus one = the slot's position ---
    t_logits = target_logits.gather(1, pos.clamp(max=S - 1).view(B, -1, 1).expand(-1, -1, target_logits.shape[-1]))
    p_t = t_logits.view(B, A, K, -1).float().softmax(-1)  # [B, A, K, V]
    if model.reduced_vocab:
        vocab = model.draft_vocab_ids
        p_t_in = p_t[..., vocab]  # [B, A, K, Vd]
        outside = (1.0 - p_t_in.sum(-1)).clamp_min(0.0)  # target mass the drafter cannot propose
        to_draft = torch.full((cfg.vocab_size,), -1, dtype=torch.long, device=device)
        to_draft[vocab] = torch.arange(vocab.numel(), device=device)
        d_labels = to_draft[labels]  # [B, A, K], -1 outside the draft vocabulary
    else:
        p_t_in, outside, d_labels = p_t, torch.zeros_like(p_t[..., 0]), labels
    p_d = z.softmax(-1)
    l1 = (p_d - p_t_in).abs().sum(-1) + outside  # [B, A, K] ||p_d - p_t||_1 over the whole vocabulary
    w = torch.exp(-offsets.float() / weights.decay_gamma)[None, None] * valid  # [B, A, K]
    denom = w.sum().clamp_min(1e-6)
    ce_w = w * (d_labels >= 0)
    ce = F.cross_entropy(z.view(-1, z.shape[-1]), d_labels.clamp_min(0).view(-1), reduction="none").view(B, A, K)
    loss_ce = (ce * ce_w).sum() / ce_w.sum().clamp_min(1e-6)
    loss_l1 = (l1 * w).sum() / denom
    total = weights.ce * loss_ce + weights.l1 * loss_l1
    stats = {"ce": float(loss_ce.detach()), "l1": float(loss_l1.detach()), "slots": float(valid.sum())}
    if model.confidence_head is not None and weights.confidence > 0:
        conf_logits = model.confidence_head(h, e_prev).float()  # [B, A, K]
        label = (1.0 - 0.5 * l1).clamp(0.0, 1.0).detach()
        bce = F.binary_cross_entropy_with_logits(conf_logits, label, reduction="none")
        loss_conf = (bce * w).sum() / denom
        total = total + weights.confidence * loss_conf
        stats["conf"] = float(loss_conf.detach())
    with torch.no_grad():  # greedy top-1 agreement with the label, for the progress bar
        stats["acc"] = float(((z.argmax(-1) == d_labels) & valid).sum() / valid.sum().clamp_min(1))
    stats["loss"] = float(total.detach())
    return total, stats
