"""Batched admission prefill (agentspark/model/prefill_rows.py): several slots' prefills in one
forward give each slot, in exact mode's route a, the very bits its prefill alone gives: the first
logits, the captured features and the K/V it leaves in the cache. On the CPU the kernels run under
Triton's interpreter (bfloat16, as tests/test_route_a.py); on CUDA the same test replays the graphs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agentspark.model.graph_runner import DeviceRunner
from agentspark.model.runner import PrefillItem

from test_kernels import DEVICE, kernels, pytestmark  # noqa: F401  (where the kernels run, and when they can)
from test_route_a import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from gpu_shapes import random_model  # noqa: E402

CAPACITY, SLOTS = 200, 5


def items(seed: int) -> list[PrefillItem]:
    """Four admissions of one step, each one 32-token chunk: two plain prompts, and two that
    capture features (batched apart from the others), one an appended turn after a kept prefix
    (start > 0). (A lone chunk size prefills alone: the test below.)"""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, TINY.vocab_size, (n,), generator=g).tolist()

    return [PrefillItem(0, ids(5), 0), PrefillItem(1, ids(31), 0),
            PrefillItem(3, ids(12), 30, capture=True), PrefillItem(4, ids(20), 0, capture=True)]


def prefilled(model, graphs: bool, exact: bool, batched: bool, work: list[PrefillItem],  # noqa: ANN001, ANN201
              prefixes: bool = True):
    runner = DeviceRunner(model, graphs=graphs, exact=exact, exact_route="a" if exact else None, capacity=CAPACITY,
                          slots=SLOTS, max_tokens=4, capture_layers=(0, 1))
    g = torch.Generator().manual_seed(99)
    with torch.inference_mode(), kernels():
        for item in work:  # the kept prefix of a request that starts past 0: the same in both runners
            if item.start and prefixes:
                runner.prefill(item.slot, torch.randint(0, TINY.vocab_size, (item.start,), generator=g).tolist(), 0)
        if batched:
            outs = runner.prefill_rows(work)
        else:
            outs = [runner.prefill(i.slot, i.ids, i.start, capture=i.capture) for i in work]
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    return runner, outs


@pytest.mark.parametrize("exact", [True, pytest.param(False, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="fast mode's SDPA chunks: the GPU's case (the CPU runs route a, bit for bit)"))],
    ids=["route-a", "fast"])
def test_batched_prefill_gives_each_slot_its_own_prefill(exact):
    model = random_model(TINY, device=DEVICE, dtype=torch.bfloat16, seed=5)
    graphs = DEVICE == "cuda"
    work = items(6)
    alone_runner, alone = prefilled(model, graphs, exact, False, work)
    rows_runner, rows = prefilled(model, graphs, exact, True, work)
    # two batched buckets of 32-token chunks, with and without features
    assert sorted((k.tokens, k.capture) for k in rows_runner.prefill_row_buckets) == [(32, False), (32, True)]
    same = torch.equal if exact else (lambda a, b: torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2))
    for item, a, b in zip(work, alone, rows):
        assert a.logits.shape == b.logits.shape == (1, TINY.vocab_size)
        assert same(a.logits, b.logits), item
        assert (a.hidden is None) == (b.hidden is None) == (not item.capture)
        if item.capture:
            assert a.hidden.shape == b.hidden.shape == (len(item.ids), 2 * TINY.hidden_size)
            assert same(a.hidden, b.hidden), item
        end = item.start + len(item.ids)
        for cache_a, cache_b in ((alone_runner.cache.k, rows_runner.cache.k), (alone_runner.cache.v, rows_runner.cache.v)):
            assert same(cache_a[:, item.slot, :, :end], cache_b[:, item.slot, :, :end]), item
    # the comparison sees a row's logits: another row's are different
    assert not torch.equal(rows[0].logits, rows[1].logits)


def test_rows_that_cannot_share_a_chunk_prefill_alone():
    """A lone admission of its chunk size and one whose chunk's padding would pass the cache's end
    take the single prefill: no batched bucket is made."""
    model = random_model(TINY, device=DEVICE, dtype=torch.bfloat16, seed=7)
    work = [PrefillItem(0, [1, 2, 3], 0), PrefillItem(1, [4, 5], CAPACITY - 10)]
    runner, outs = prefilled(model, DEVICE == "cuda", True, True, work, prefixes=False)
    assert not runner.prefill_row_buckets and all(o.logits.shape == (1, TINY.vocab_size) for o in outs)
