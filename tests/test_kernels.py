"""The Triton kernels against the references beside them.

On a machine without a GPU they run under Triton's interpreter (conftest sets TRITON_INTERPRET=1
before triton is imported): that tests their logic (indexing, masks, the split-K merge, the
verifier's rule). The interpreter rounds float32 -> bfloat16 by truncation and cannot take a
bfloat16 ``tl.dot``, so bfloat16 is held to a few units in the last place here and checked on the
GPU (tests marked ``gpu`` in test_gpu_runtime.py); float32 is held tight everywhere. Shapes are
small: the interpreter runs each program in Python.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from agentspark.equivalence import homogeneity_test
from agentspark.kernels.decode_attention import SPLIT, decode_attention, decode_attention_reference
from agentspark.kernels.rms_norm import add_rms_norm, add_rms_norm_reference
from agentspark.kernels.rope_cache import rope_cache, rope_cache_reference
from agentspark.kernels.silu_mul import silu_mul, silu_mul_reference
from agentspark.kernels.support import cpu_interpreter, interpreting, triton_available
from agentspark.kernels.verify import verify_rows, verify_rows_reference
from agentspark.model.config import DecoderConfig
from agentspark.model.layers import rope_tables
from agentspark.verify import verify_chain, verify_chain_given

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not triton_available() or (DEVICE == "cpu" and not interpreting()),
    reason="needs triton (the test extra installs it) and, on the CPU, TRITON_INTERPRET=1 (conftest sets it)",
)


def kernels():
    """Where the kernels run: the GPU, or the CPU through the interpreter."""
    return cpu_interpreter() if DEVICE == "cpu" else contextlib.nullcontext()


def ulps(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference in units of b's dtype spacing at b's largest magnitude (elementwise ops
    with cancellations, x*cos + swap(x)*sin, are judged against the scale of their inputs)."""
    eps = torch.finfo(b.dtype).eps
    return ((a.float() - b.float()).abs().max() / (b.float().abs().max() * eps)).item()


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rms_norm_matches_reference(dtype, with_delta):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 96, generator=g).to(DEVICE, dtype)
    d = torch.randn(7, 96, generator=g).to(DEVICE, dtype) if with_delta else None
    w = (1 + 0.3 * torch.randn(96, generator=g)).to(DEVICE, dtype)
    with kernels():
        out, res = add_rms_norm(d, x, w, 1e-6)
    ref_out, ref_res = add_rms_norm_reference(d, x, w, 1e-6)
    assert torch.equal(res, ref_res) if dtype == torch.float32 else ulps(res, ref_res) <= 2
    assert ulps(out, ref_out) <= (8 if dtype == torch.float32 else 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_reference(dtype):
    gu = torch.randn(5, 2 * 1100, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)  # I spans two blocks
    with kernels():
        out = silu_mul(gu)
    ref = silu_mul_reference(gu)
    assert out.shape == ref.shape == (5, 1100)
    assert (out.float() - ref.float()).abs().max().item() <= (1e-5 if dtype == torch.float32 else 0.04)


def _rope_case(D: int, dtype: torch.dtype, qk_norm: bool):
    g = torch.Generator().manual_seed(D)
    Hq, Hkv, S, slots, N = 4, 2, 48, 3, 6
    cfg = DecoderConfig(family="qwen3", vocab_size=8, hidden_size=Hq * D, intermediate_size=8, num_layers=1,
                        num_heads=Hq, num_kv_heads=Hkv, head_dim=D)
    cos, sin = (t.to(DEVICE) for t in rope_tables(cfg, S))
    qkv = torch.randn(N, (Hq + 2 * Hkv) * D, generator=g).to(DEVICE, dtype)
    positions = torch.randperm(S, generator=g)[:N].to(DEVICE)
    token_slots = torch.randint(0, slots, (N,), generator=g).to(DEVICE)
    norms = tuple((1 + 0.2 * torch.randn(D, generator=g)).to(DEVICE, dtype) for _ in range(2)) if qk_norm else (None, None)
    return qkv, positions, token_slots, cos, sin, (slots, Hkv, S, D), Hq, norms


@pytest.mark.parametrize("D", [24, 64])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_cache_matches_reference_and_writes_only_its_positions(D, qk_norm, dtype):
    qkv, positions, token_slots, cos, sin, shape, Hq, norms = _rope_case(D, dtype, qk_norm)
    poison = 1234.0
    k1, v1 = torch.full(shape, poison, dtype=dtype, device=DEVICE), torch.full(shape, poison, dtype=dtype, device=DEVICE)
    k2, v2 = k1.clone(), v1.clone()
    with kernels():
        q = rope_cache(qkv, positions, token_slots, cos, sin, k1, v1, Hq, *norms, 1e-6)
    q_ref = rope_cache_reference(qkv, positions, token_slots, cos, sin, k2, v2, Hq, *norms, 1e-6)
    tol = 8 if dtype == torch.float32 else 4
    assert ulps(q, q_ref) <= tol and ulps(k1, k2) <= tol
    assert torch.equal(v1, v2)  # values are copied, bit for bit
    written = torch.zeros(shape[:1] + shape[2:3], dtype=torch.bool)  # [slots, S]
    written[token_slots.cpu(), positions.cpu()] = True
    untouched = (k1 == poison).all(dim=-1).all(dim=1).cpu()  # [slots, S]
    assert torch.equal(untouched, ~written)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (9, 3)])
@pytest.mark.parametrize("T", [1, 4, 9])  # 9 x 3 query rows a group: two tiles of 16
def test_decode_attention_matches_reference(causal, heads, T):
    Hq, Hkv = heads
    D, S, n_slots = 32, 2 * SPLIT + 80, 3
    g = torch.Generator().manual_seed(Hq * 10 + T)
    k = torch.randn(n_slots, Hkv, S, D, generator=g).to(DEVICE)
    v = torch.randn(n_slots, Hkv, S, D, generator=g).to(DEVICE)
    q = torch.randn(3, T, Hq, D, generator=g).to(DEVICE)
    slots = torch.tensor([2, 0, 1], device=DEVICE)
    starts = torch.tensor([2 * SPLIT + 3, 5, SPLIT - 2], device=DEVICE)  # three chunks, one, across a boundary
    ref = decode_attention_reference(q, k, v, slots, starts, causal)
    # what lies past each row's length must not reach its output
    k_dirty, v_dirty = k.clone(), v.clone()
    for r in range(3):
        k_dirty[slots[r], :, int(starts[r]) + T :] = 50.0
        v_dirty[slots[r], :, int(starts[r]) + T :] = 1e4
    with kernels():
        out = decode_attention(q, k_dirty, v_dirty, slots, starts, causal)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5


def test_decode_attention_bf16_is_close():
    g = torch.Generator().manual_seed(9)
    k = torch.randn(2, 2, 300, 64, generator=g).to(DEVICE, torch.bfloat16)
    v = torch.randn(2, 2, 300, 64, generator=g).to(DEVICE, torch.bfloat16)
    q = torch.randn(2, 3, 4, 64, generator=g).to(DEVICE, torch.bfloat16)
    slots, starts = torch.tensor([1, 0], device=DEVICE), torch.tensor([280, 40], device=DEVICE)
    with kernels():
        out = decode_attention(q, k, v, slots, starts)
    ref = decode_attention_reference(q.float(), k.float(), v.float(), slots, starts)
    assert (out.float() - ref).abs().max().item() < 0.03


# ---- the fused verifier --------------------------------------------------------------------

V_BIG = 4500  # three vocabulary blocks of the kernel (BLOCK_V = 2048)


def _greedy_case(seed: int, R: int = 8, T: int = 5, V: int = V_BIG):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(R, T, V, generator=g)
    # ties across blocks: the first maximal index must win, as torch.argmax has it
    logits[0, 0, 4000] = logits[0, 0].max()
    logits[0, 0, 100] = logits[0, 0].max()
    logits[1, :, 2049] = logits[1].max() + 1
    logits[1, :, 10] = logits[1].max()
    draft = torch.randint(0, V, (R, T - 1), generator=g)
    keep = torch.rand(R, T - 1, generator=g) < 0.7  # most drafts right, some wrong
    draft = torch.where(keep, logits.argmax(-1)[:, : T - 1], draft)
    n = torch.tensor([T - 1, 0, 2, T - 1, 1, 3, T - 1, 2][:R])
    return logits, draft, n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verifier_greedy_is_bitwise_verify_chain(dtype):
    logits, draft, n = _greedy_case(0)
    logits = logits.to(dtype)
    with kernels():
        accepted, token = verify_rows(logits.to(DEVICE), draft.to(DEVICE), n.to(DEVICE), greedy=True)
    for r in range(logits.shape[0]):
        l = int(n[r])
        p = torch.nn.functional.one_hot(logits[r, : l + 1].float().argmax(-1), logits.shape[-1]).float()
        verdict = verify_chain(draft[r, :l], None, p, torch.Generator().manual_seed(r))
        assert (int(accepted[r]), int(token[r])) == (verdict.accepted, verdict.token)
    assert int(token[0]) == 100 or int(accepted[0]) > 0  # the first of the tied maxima
    assert int(token[1]) == 10  # n = 0: the bonus token, first of the tied maxima across blocks


def _sampled_case(seed: int, R: int, T: int, V: int, peaked: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(peaked * torch.randn(R, T, V, generator=g), -1)
    q = torch.softmax(peaked * torch.randn(R, T - 1, V, generator=g) + 0.5 * torch.log(p[:, : T - 1]), -1)
    draft = torch.multinomial(q.reshape(-1, V), 1, generator=g).view(R, T - 1)
    u = torch.rand(R, T - 1, generator=g)
    race = torch.empty(R, V).exponential_(generator=g).clamp_min_(1e-30)
    n = torch.randint(0, T, (R,), generator=g)
    return p, q, draft, u, race, n


@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("V", [7, V_BIG])
def test_verifier_sampling_is_verify_chain_on_the_same_random_numbers(with_q, V):
    p, q, draft, u, race, n = _sampled_case(3, R=12, T=4, V=V)
    q_arg = q if with_q else None
    if not with_q:  # a deterministic drafter: drafts that are not samples of anything
        draft = torch.randint(0, V, draft.shape, generator=torch.Generator().manual_seed(4))
        draft[:6] = p[:6, :3].argmax(-1)  # some likely, accepted often
    with kernels():
        got = verify_rows(*(t.to(DEVICE) if t is not None else None for t in (p, draft, n, q_arg, u, race)), greedy=False)
    for r in range(p.shape[0]):
        l = int(n[r])
        a, tok = verify_chain_given(draft[r, :l], None if q_arg is None else q[r, :l], p[r, : l + 1], u[r, :l], race[r])
        assert (int(got[0][r]), int(got[1][r])) == (int(a), int(tok)), f"row {r}, l = {l}"
    ref = verify_rows_reference(p, draft, n, q_arg, u, race, greedy=False)
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])


def _first_tokens(p, q, draft, accepted, token):
    """The first committed token of each row's round: d_1 if it survived, else the correction."""
    return torch.where(accepted > 0, draft[:, 0], token)


def test_verifier_keeps_the_target_distribution_and_catches_biased_controls():
    """Chi-square homogeneity of the first committed token against direct samples of p_1, at a
    sample size where the two known-wrong verifiers (accept every draft; resample from p instead
    of the residual after a rejection) are rejected by the same test."""
    R, T, V = 800, 2, 6  # small: the interpreter runs every program in Python
    g = torch.Generator().manual_seed(11)
    p1 = torch.tensor([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
    q1 = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.20, 0.30])  # far from p: many rejections
    p = p1.expand(R, T, V).contiguous()
    q = q1.expand(R, T - 1, V).contiguous()
    draft = torch.multinomial(q1, R * (T - 1), replacement=True, generator=g).view(R, T - 1)
    u = torch.rand(R, T - 1, generator=g)
    race = torch.empty(R, V).exponential_(generator=g).clamp_min_(1e-30)
    n = torch.full((R,), T - 1)
    with kernels():
        accepted, token = verify_rows(*(t.to(DEVICE) for t in (p, draft, n, q, u, race)), greedy=False)
    first = _first_tokens(p, q, draft, accepted.cpu(), token.cpu())
    direct = torch.multinomial(p1, R, replacement=True, generator=g)
    alpha = 0.01
    same = homogeneity_test(first.tolist(), direct.tolist())
    assert same.p_value >= alpha, same
    # negative controls, on the same draws
    accept_always = draft[:, 0]
    resample_p = torch.where(u[:, 0] * q1[draft[:, 0]] < p1[draft[:, 0]], draft[:, 0],
                             torch.multinomial(p1, R, replacement=True, generator=g))
    assert homogeneity_test(accept_always.tolist(), direct.tolist()).p_value < alpha
    assert homogeneity_test(resample_p.tolist(), direct.tolist()).p_value < alpha


def test_verifier_launcher_checks_its_inputs():
    logits, draft, n = torch.randn(2, 3, 16), torch.zeros(2, 2, dtype=torch.long), torch.tensor([2, 1])
    with kernels():
        with pytest.raises(ValueError, match="n must be"):
            verify_rows(logits.to(DEVICE), draft.to(DEVICE), n[:1].to(DEVICE), greedy=True)
        with pytest.raises(ValueError, match="float32"):
            verify_rows(logits.to(DEVICE, torch.bfloat16), draft.to(DEVICE), n.to(DEVICE),
                        u=torch.rand(2, 2, device=DEVICE), race=torch.ones(2, 16, device=DEVICE), greedy=False)
