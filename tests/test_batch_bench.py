"""examples/batch_bench.py end to end on a tiny random model (CPU, seconds): every (C, mode) gets
its figures, greedy outputs equal plain decoding (the CPU in float32 is row-invariant), a part
that fails is recorded without stopping the others, and the JSON is written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import ours_from_hf, tiny_hf_model

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "batch_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("batch_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["batch_bench"] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_target(bench):
    loaded = ours_from_hf(tiny_hf_model("qwen3", seed=3), eos=frozenset({7}))

    def prompts(n: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(5)
        motifs = [torch.randint(8, 96, (3 + i % 3,), generator=g).tolist() for i in range(n)]
        return [(m * 5)[:12 + i] for i, m in enumerate(motifs)]  # repeats: the n-gram drafter finds matches

    return lambda: bench.Target(loaded, prompts, "ngram", "tiny random qwen3")


def test_every_mode_measured_and_identical(bench, tiny_target, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--models", "tiny", "--device", "cpu", "--concurrency", "1,3", "--modes", "k1,plain,k3,k5,plain3,adaptive",
            "--new-tokens", "10", "--warmup-tokens", "2", "--out", str(out)]
    assert bench.main(argv, loaders={"tiny": tiny_target}) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["modes"][:2] == ["plain", "plain3"]  # run first: the others count identity against them
    runs = res["models"]["tiny"]["concurrency"]
    assert set(runs) == {"1", "3"}
    for c, at_c in runs.items():
        c = int(c)
        for mode, ref in (("plain", "plain"), ("plain3", "plain3"), ("k1", "plain"), ("k3", "plain3"), ("adaptive", "plain")):
            f = at_c["modes"][mode]
            assert f["identical_vs"] == ref
            assert f["requests"] == c and f["new_tokens"] > 0 and f["tok_s"] > 0
            assert f["identical"] == c and f["identical_to_solo"] == c
            assert f["latency_p50_s"] <= f["latency_p99_s"] <= f["wall_s"]
            assert f["tau"] >= 1.0
        assert "error" in at_c["modes"]["k5"]  # not a mode: recorded, and the rest still ran
        adaptive = at_c["modes"]["adaptive"]
        assert adaptive["sps_len"] == c * (bench.ADAPTIVE_MAX_DRAFT + 1) and "1" in adaptive["sps_at"]
        cmp_ = at_c["comparison"]
        assert cmp_["best_fixed"] in ("k1", "k3")
        assert cmp_["adaptive_vs_plain"] > 0 and cmp_["adaptive_vs_best_fixed"] > 0
    assert "best fixed" in capsys.readouterr().out  # the summary table


def test_time_limit_skips_and_still_writes(bench, tiny_target, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--models", "tiny", "--device", "cpu", "--concurrency", "1", "--modes", "plain,k1", "--no-solo",
            "--time-limit-s", "1e-9", "--out", str(out)]
    assert bench.main(argv, loaders={"tiny": tiny_target}) == 0
    modes = json.loads(out.read_text())["models"]["tiny"]["concurrency"]["1"]["modes"]
    assert all(m.get("skipped") == "time limit" for m in modes.values())


def test_waves_queue_requests_behind_the_slots(bench, tiny_target, tmp_path):
    # --waves 3 at C = 2: six requests through two slots, four of them waiting for a slot to free;
    # each output still equals its prompt's plain decoding alone
    out = tmp_path / "bench.json"
    argv = ["--models", "tiny", "--device", "cpu", "--concurrency", "2", "--modes", "plain,k3,adaptive,k3/sync", "--waves", "3",
            "--new-tokens", "8", "--warmup-tokens", "2", "--out", str(out)]
    assert bench.main(argv, loaders={"tiny": tiny_target}) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["waves"] == 3
    for mode, f in res["models"]["tiny"]["concurrency"]["2"]["modes"].items():
        assert f["requests"] == 6 and f["identical"] == 6 and f["identical_to_solo"] == 6, mode
        assert f["time_split"]["rows_per_round"] <= 2  # never more rows than slots
        assert f["own_total_p50_s"] < f["latency_p99_s"]  # the last ones waited in the queue first
    # M/sync: M with the first token read at admission (the CPU's way already), set against M
    assert set(res["models"]["tiny"]["concurrency"]["2"]["comparison"]["round_admission_vs_sync"]) == {"k3"}


def test_waves_must_be_positive(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--waves", "0"])
