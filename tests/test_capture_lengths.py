"""DeviceRunner.capture_lengths: every round length of each bucket key met so far gets its bucket
(on CUDA its graph), so a rehearsal leaves no capture for a timed round to pay. On the CPU the
device runner runs eagerly (graphs=False): the buckets it makes are what a CUDA runner captures."""

from __future__ import annotations

from dataclasses import replace

import torch

from agentspark import SamplingParams
from agentspark.model.graph_runner import DeviceRunner
from agentspark.model.runner import RowWork

from conftest import ours_from_hf, tiny_hf_model


def test_every_length_of_the_keys_met_gets_its_bucket_and_nothing_else():
    tiny = ours_from_hf(tiny_hf_model("qwen3", seed=3), eos=frozenset({7}))
    runner = DeviceRunner(tiny.model, graphs=False, capacity=64, slots=2, max_tokens=5)
    greedy, sampled = SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        runner.round([RowWork(0, 4, [1, 2, 3], greedy, None)])  # one row, 3 tokens, greedy
        runner.round([RowWork(0, 8, [1], sampled, gen), RowWork(1, 4, [2, 3], greedy, None)])  # two rows, sampled
    met = set(runner.buckets)
    assert len(met) == 2
    assert runner.capture_lengths() == 2 * 5 - 2
    want = {replace(k, tokens=t) for k in met for t in range(1, 6)}
    assert set(runner.buckets) == want  # the lengths of the keys met, no other key
    assert runner.capture_lengths() == 0  # idempotent
    with torch.inference_mode():  # and the buckets made ahead run (the outputs a round needs)
        out = runner.round([RowWork(0, 4, [1, 2, 3, 4, 5], greedy, None)])
    assert len(set(runner.buckets)) == len(want) and out[0].accepted <= 4
