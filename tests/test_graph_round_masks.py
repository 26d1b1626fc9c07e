"""Rows under a grammar, and rows reporting logprobs, run in the device runner's round graphs
(graph_runner.py): the grammar's bitmask is applied on the device (``apply_masks_rows``) before the
verifier, and the raw logits come back for the host. The checks: the mask applied on the device
equals llguidance's own ``apply_token_bitmask_inplace`` (and so ``apply_masks``, held equal to it in
test_constraints.py), bit for bit; a greedy
row's verdict equals the reference verdict on its own raw logits with the mask applied by
llguidance; every sampled token is one the mask allows. The masks are built to forbid each
position's unmasked argmax, so a round that ignored them would fail every check (the control,
``ignore_masks``). On the CPU the round's body runs eagerly (graphs=False); the GPU suite runs the
same checks through captured graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agentspark.constraints import apply_masks, apply_masks_rows, mask_words
from agentspark.model.config import DecoderConfig
from agentspark.model.runner import RowWork, greedy_verdict
from agentspark.sampling import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from gpu_shapes import random_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY = DecoderConfig(family="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=1e4,
                     max_position_embeddings=256)  # V = 100: the last mask word is partly padding
SLOTS, T = 3, 4


def bits_of(allowed: torch.Tensor) -> torch.Tensor:
    """allowed [..., V] bool -> llguidance's bitmask [..., W] int32 (token t: bit t % 32 of word t // 32)."""
    V = allowed.shape[-1]
    padded = torch.zeros(*allowed.shape[:-1], mask_words(V) * 32, dtype=torch.int64)
    padded[..., :V] = allowed.long()
    words = (padded.view(*allowed.shape[:-1], -1, 32) << torch.arange(32)).sum(-1)  # [..., W] in [0, 2^32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def llguidance_masked(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """llguidance's own kernel (torch.compile'd: its first call compiles), the reference."""
    import llguidance.torch

    out = logits.float().clone()
    llguidance.torch.apply_token_bitmask_inplace(out, bits.to(out.device))
    return out


def test_the_device_mask_equals_llguidances_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for V in (100, 4096):
        allowed = torch.rand(2, 3, V, generator=g) < 0.3
        allowed[0, 0] = True  # a free position
        bits = bits_of(allowed)
        bits[1, 1] = -1  # a free row's words as the runner fills them (padding bits set too)
        allowed[1, 1] = True
        logits = torch.randn(2, 3, V, generator=g).to(torch.bfloat16)
        ours = apply_masks_rows(logits, bits)
        theirs = torch.stack([llguidance_masked(logits[r], bits[r]) for r in range(2)])
        assert ours.dtype == logits.dtype and torch.equal(ours.float(), theirs)
        assert torch.equal(torch.isfinite(ours), allowed)


class Rig:
    """A device runner over a tiny random model with SLOTS slots holding prompts, and rows of T
    tokens whose masks forbid each position's unmasked argmax (and a random half of the rest)."""

    def __init__(self, graphs: bool, dtype: torch.dtype) -> None:
        from agentspark.model.graph_runner import DeviceRunner

        self.model = random_model(TINY, device=DEVICE, dtype=dtype, seed=5)
        self.runner = DeviceRunner(self.model, graphs=graphs, exact=False, capacity=64, slots=SLOTS, max_tokens=T)
        g = torch.Generator().manual_seed(6)
        self.prompts = [torch.randint(0, TINY.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 13)]
        for s, p in enumerate(self.prompts):
            self.runner.prefill(s, p, 0)
        self.tokens = [torch.randint(0, TINY.vocab_size, (T,), generator=g).tolist() for _ in range(SLOTS)]
        free = [RowWork(s, len(p), self.tokens[s], SamplingParams(temperature=0.0), None, logits=True)
                for s, p in enumerate(self.prompts)]
        raw = [r.logits.float().cpu() for r in self.runner.round(free)]  # [T, V] per row: the unmasked logits
        self.allowed = []
        for s in range(SLOTS):
            allowed = torch.rand(T, TINY.vocab_size, generator=g) < 0.5
            allowed[torch.arange(T), raw[s].argmax(-1)] = False  # the unmasked pick is forbidden
            self.allowed.append(allowed)

    def rows(self, params: SamplingParams, masked: tuple[int, ...], generators=None) -> list[RowWork]:  # noqa: ANN001
        return [RowWork(s, len(p), self.tokens[s], params, None if generators is None else generators[s],
                        mask=bits_of(self.allowed[s]) if s in masked else None, logits=True)
                for s, p in enumerate(self.prompts)]


def check_greedy(rig: Rig) -> None:
    for masked in ((0,), (0, 2), (0, 1, 2)):  # grammar rows beside free ones, and alone
        rows = rig.rows(SamplingParams(temperature=0.0), masked)
        for s, (row, res) in enumerate(zip(rows, rig.runner.round(rows))):
            raw = res.logits.float().cpu()  # [T, V]
            want = greedy_verdict(raw if row.mask is None else apply_masks(raw, row.mask), row.tokens)
            assert (res.accepted, res.token) == want, (masked, s)
            if row.mask is not None:
                assert rig.allowed[s][res.accepted, res.token]


def check_sampled(rig: Rig) -> None:
    params = SamplingParams(temperature=1.0)
    gens = [torch.Generator(device=DEVICE).manual_seed(s) for s in range(SLOTS)]
    for _ in range(40):
        for s, res in enumerate(rig.runner.round(rig.rows(params, (0, 1), gens))):
            if s < 2:
                assert rig.allowed[s][res.accepted, res.token], s


@pytest.fixture
def ignore_masks(monkeypatch):
    """The control: a round body that drops the grammar's mask."""
    monkeypatch.setattr("agentspark.model.graph_runner.apply_masks_rows", lambda logits, bits: logits)


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU runs the graphed variant")
def test_masked_rows_in_the_round_body_follow_the_reference_rules():
    rig = Rig(graphs=False, dtype=torch.float32)
    check_greedy(rig)
    check_sampled(rig)


@pytest.mark.skipif(DEVICE != "cpu", reason="the GPU runs the graphed variant")
def test_a_round_body_that_drops_the_mask_is_caught(ignore_masks):
    rig = Rig(graphs=False, dtype=torch.float32)
    with pytest.raises(AssertionError):
        check_greedy(rig)
    with pytest.raises(AssertionError):
        check_sampled(rig)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="captured graphs")
@pytest.mark.parametrize("control", [False, True], ids=["graphs", "control-drops-the-mask"])
def test_masked_rows_in_captured_graphs_follow_the_reference_rules(control, monkeypatch):
    if control:
        monkeypatch.setattr("agentspark.model.graph_runner.apply_masks_rows", lambda logits, bits: logits)
    rig = Rig(graphs=True, dtype=torch.bfloat16)
    if control:
        with pytest.raises(AssertionError):
            check_greedy(rig)
        return
    check_greedy(rig)
    check_sampled(rig)
