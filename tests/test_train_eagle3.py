"""Training EAGLE-3 drafters (training/eagle3_objective.py, deepspec-format.md §3.4): the TTT attention
mask, training computing exactly what inference computes, the trainer lowering the loss and raising
greedy acceptance on a tiny target, and ``agentspark train-drafter --method eagle3`` end to end on
the default model, its export loading and decoding losslessly.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ours_from_hf, tiny_hf_model
from test_learned_drafters import random_drafter_model

from agentspark import Engine, SamplingParams
from agentspark.drafters.checkpoint import build_model
from agentspark.drafters.eagle3 import Eagle3Drafter
from agentspark.drafters.factory import build_drafter
from agentspark.drafters.learned_config import LearnedDrafterConfig
from agentspark.training.data import Sample, save_samples
from agentspark.training.dspark_objective import Batch
from agentspark.training.eagle3_objective import (
    eagle3_attention_mask,
    eagle3_loss,
    position_masks,
    step_input_ids,
    ttt_hiddens,
)
from agentspark.training.trainer import TrainOptions, collate, train

VOCAB = 16
LAYERS = (-1, 0, 1)  # every layer a 3-layer target allows (its last is excluded)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_target():
    return ours_from_hf(tiny_hf_model("llama", seed=31, vocab_size=VOCAB, num_hidden_layers=3))


def random_prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


# ---- the mask and the TTT forward ------------------------------------------------------------

def test_attention_mask_is_causal_over_step0_plus_the_diagonal():
    S = 5
    for step in range(4):
        mask = eagle3_attention_mask(S, step)
        assert mask.dtype == torch.bool and mask.shape == (S, (step + 1) * S)
        for t in range(S):
            seen = {(int(c) // S, int(c) % S) for c in mask[t].nonzero().flatten()}  # (key's step, key's index)
            expected = {(0, u) for u in range(t + 1)} | {(j, t) for j in range(1, step + 1)}
            assert seen == expected, (step, t)
    assert torch.equal(eagle3_attention_mask(S, 0), torch.ones(S, S, dtype=torch.bool).tril())


def test_position_masks_and_shifted_inputs():
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 0, 0]])
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    batch = Batch(ids, loss_mask, torch.tensor([6, 4]))
    m = position_masks(batch, 3).int().tolist()
    # step 0: loss_mask with each sequence's last token zeroed; step s: shifted left by s
    assert m[0] == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]
    assert m[1] == [[0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert m[2] == [[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert step_input_ids(ids, 0).tolist() == [[11, 12, 13, 14, 15, 0], [21, 22, 23, 0, 0, 0]]
    assert step_input_ids(ids, 2).tolist() == [[13, 14, 15, 0, 0, 0], [23, 0, 0, 0, 0, 0]]
    # every supervised (s, t) reads its token x_{t+1+s} and target row t+1+s inside the sequence
    for s in range(3):
        for b, L in enumerate((6, 4)):
            assert all(t + 1 + s < L for t in range(6) if m[s][b][t])


def test_ttt_forward_equals_drafting_from_every_position(tiny_target):
    """Step s at index t of the batched TTT pass is exactly what the drafter computes when it drafts
    from the anchor t+1: committed pairs (feature i, x_{i+1}) at positions <= t, then the drafts
    (teacher-forced to x_{t+2}, ...) one position further each, each a causal pass over all rows."""
    model = random_drafter_model(tiny_target, "eagle3", seed=71, target_layer_ids=LAYERS)
    g = torch.Generator().manual_seed(72)
    S, K = 12, 4
    ids = torch.randint(0, VOCAB, (2, S), generator=g)
    ids[1, 8:] = 0  # a shorter second row, padded: its valid rows must not notice the padding
    with torch.no_grad():
        feats = tiny_target.model(ids, tiny_target.model.new_cache(S, batch_size=2), 0, capture_layers=LAYERS).hidden
        outs = ttt_hiddens(model, feats, ids, K)  # K x [2, S, H]
        for b, L in ((0, S), (1, 8)):
            for t in range(L - 1):
                gg = model.fuse_features(feats[b : b + 1, : t + 1])  # [1, t+1, H]
                e = model.embed(ids[b : b + 1, 1 : t + 2])  # [1, t+1, H]
                for s in range(K):
                    if t + 1 + s >= L:
                        break
                    out, _, _ = model.step(e, gg, torch.arange(t + 1 + s)[None])
                    assert torch.allclose(outs[s][b, t], out[0, -1], atol=1e-4), (b, t, s)
                    if t + 2 + s < L:
                        gg = torch.cat([gg, out[:, -1:]], dim=1)
                        e = torch.cat([e, model.embed(ids[b : b + 1, t + 2 + s : t + 3 + s])], dim=1)


def test_loss_matches_its_definition_and_handles_a_reduced_vocab(tiny_target):
    vocab = tuple(range(0, VOCAB, 2))
    model = random_drafter_model(tiny_target, "eagle3", seed=73, target_layer_ids=LAYERS, draft_vocab=vocab)
    samples = [Sample([1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 1, 1, 1, 1, 1, 1]), Sample([3, 1, 4, 1, 5, 9], [0, 1, 1, 1, 1, 1])]
    batch = collate(samples, 64, 0, torch.device("cpu"))
    with torch.no_grad():
        out = tiny_target.model(batch.input_ids, tiny_target.model.new_cache(16, batch_size=2), 0, capture_layers=LAYERS)
    loss, stats = eagle3_loss(model, batch, out.hidden, out.logits, ttt_steps=3)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values()) and grads["fc.weight"].abs().sum() > 0
    assert {"loss", "acc", "ce", "tau"} <= set(stats) and all(isinstance(v, float) for v in stats.values())
    assert 0 < stats["outside"] < 1  # the target puts mass on odd tokens; the drafter cannot
    # the definition, written out (no checkpointing): sum_s 0.8^s mean_b sum_t -sum_{v in vocab} p(v) log q(v) / L_b
    model.zero_grad()
    hs = ttt_hiddens(model, out.hidden, batch.input_ids, 3)
    masks = position_masks(batch, 3)
    ref = torch.zeros(())
    for s in range(3):
        for b, L in enumerate(batch.lengths.tolist()):
            for t in range(L):
                if masks[s, b, t]:
                    p = out.logits[b, t + 1 + s].softmax(-1)[list(vocab)]
                    log_q = model.logits(hs[s][b, t]).log_softmax(-1)
                    ref = ref + 0.8**s * -(p * log_q).sum() / L / 2
    ref.backward()
    ref = float(ref.detach())
    assert abs(stats["loss"] - ref) < 1e-4 * max(1.0, ref)
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name


# ---- training on a tiny target -----------------------------------------------------------------

def acceptance(target, model, prompts, references, params) -> float:
    """Accepted draft tokens per verification round, greedy, checking every output is plain greedy's."""
    engine = Engine(target, Eagle3Drafter(model), max_draft=model.cfg.block_size, schedule="full")
    accepted = rounds = 0
    for prompt, ref in zip(prompts, references):
        result = engine.generate(prompt, params)
        assert result.token_ids == ref
        accepted += sum(r.accepted for r in result.stats.rounds)
        rounds += len(result.stats.rounds)
    return accepted / rounds


def entropy_floor(batch, logits, steps: int, decay: float = 0.8) -> float:
    """The loss of a drafter that reproduces the target exactly: the soft CE's entropy part."""
    p = logits.float().softmax(-1)
    H = -(p * p.clamp_min(1e-30).log()).sum(-1)  # [B, S] entropy of the target row at each position
    masks = position_masks(batch, steps)
    B, S = H.shape
    total = 0.0
    for s in range(steps):
        Hs = torch.zeros(B, S)
        Hs[:, : S - 1 - s] = H[:, 1 + s :]  # the row t+1+s the step-s prediction at t is scored against
        total += decay**s * float(((Hs * masks[s]).sum(-1) / batch.lengths).mean())
    return total


def test_training_lowers_the_loss_and_raises_greedy_acceptance(tiny_target, tmp_path):
    params = SamplingParams(max_new_tokens=24)
    plain = Engine(tiny_target)

    def regenerate(prompts):  # the target's own greedy continuations (what it will be asked to draft)
        out = []
        for p in prompts:
            response = plain.generate(p, params, speculative=False).token_ids
            out.append(Sample(p + response, [0] * len(p) + [1] * len(response)))
        return out

    samples = regenerate(random_prompts(48, seed=1))
    held_out = regenerate(random_prompts(10, seed=2))
    prompts = [s.input_ids[: s.loss_mask.index(1)] for s in held_out]
    references = [s.input_ids[len(p) :] for s, p in zip(held_out, prompts)]
    batch = collate(held_out, 64, 0, torch.device("cpu"))
    with torch.no_grad():
        out = tiny_target.model(batch.input_ids, tiny_target.model.new_cache(64, batch_size=len(held_out)), 0,
                                capture_layers=LAYERS)
    floor = entropy_floor(batch, out.logits, 7)

    def held_out_excess(model) -> float:  # held-out loss above what a perfect drafter would get
        with torch.no_grad():
            return eagle3_loss(model, batch, out.hidden, out.logits)[0].item() - floor

    cfg = LearnedDrafterConfig.for_target(tiny_target.config, "eagle3", target_layer_ids=LAYERS)

    def fresh():
        torch.manual_seed(0)
        return build_model(cfg).attach_target(tiny_target.model)

    untrained = fresh()
    excess_before = held_out_excess(untrained)
    accept_before = acceptance(tiny_target, untrained, prompts, references, params)
    model = fresh()
    opts = TrainOptions(steps=150, batch_size=4, lr=5e-3, max_length=64, save_every=0)
    history = train(model, tiny_target, samples, opts, tmp_path, weights=None, pad_id=0)
    assert len(history) == 150 and all(isinstance(h["loss"], float) for h in history)
    assert sum(h["loss"] for h in history[-10:]) / 10 < sum(h["loss"] for h in history[:5]) / 5
    assert sum(h["acc"] for h in history[-10:]) / 10 > 3 * max(history[0]["acc"], 0.05)
    excess_after = held_out_excess(model)
    accept_after = acceptance(tiny_target, model, prompts, references, params)
    assert 0 < excess_after < 0.5 * excess_before, (excess_before, excess_after)
    assert accept_after > max(2 * accept_before, accept_before + 0.2), (accept_before, accept_after)


# ---- the command line, on the default model ----------------------------------------------------

def test_train_drafter_cli_eagle3_end_to_end(default_model, tmp_path):
    from agentspark.cli import main
    from agentspark.prompts import encode_prompt

    tok = default_model.tokenizer
    plain = Engine(default_model)
    questions = ["Count to five.", "Name a color.", "What is 2+2?"]
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(max_new_tokens=20)
    references = [plain.generate(p, params, speculative=False).token_ids for p in prompts]
    samples = [Sample(p + r, [0] * len(p) + [1] * len(r), "tiny") for p, r in zip(prompts, references)]
    save_samples(samples, tmp_path / "samples.jsonl")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"turns": questions[0:1]}) + "\n")  # unused: --responses
    out = tmp_path / "run"
    rc = main(["train-drafter", "--method", "eagle3", "--target", "default", "--prompts", str(tmp_path / "prompts.jsonl"),
               "--responses", str(tmp_path / "samples.jsonl"), "--out", str(out), "--steps", "3", "--batch-size", "1",
               "--anchors", "4", "--max-length", "64", "--held-out", "0"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["method"] == "eagle3" and report["recipe"]["markov_rank"] == 0
    assert report["calibration"] == [] and "loss" in report["final_loss"] and "tau" in report["final_loss"]
    config = json.loads((out / "drafter" / "config.json").read_text())
    assert config["architectures"] == ["Qwen3Eagle3Model"] and config["ttt_length"] == 7

    drafter = build_drafter(f"learned:{out / 'drafter'}", default_model)
    assert isinstance(drafter, Eagle3Drafter)
    engine = Engine(default_model, drafter, max_draft=7, schedule="full")
    for prompt, ref in zip(prompts[:2], references[:2]):
        assert engine.generate(prompt, params).token_ids == ref
