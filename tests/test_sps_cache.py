"""The SPS table is cheap and visible: a quick measurement (16 forwards, not 54), logged, cached per
model, dtype, device and machine, and read back from the cache by the next engine."""

from __future__ import annotations

import logging

import pytest
import torch

from agentspark import Engine, NgramDrafter
from agentspark.model.loading import load_model
from agentspark.scheduler import SpsTable, quick_sizes
from agentspark.sps_cache import load_sps, save_sps, sps_key
from conftest import tiny_hf_model


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTSPARK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AGENTSPARK_SPS_CACHE", raising=False)
    return tmp_path


@pytest.fixture()
def tiny_on_disk(isolated_cache):
    folder = isolated_cache / "tiny"
    tiny_hf_model("llama", seed=3).save_pretrained(folder, safe_serialization=True)
    return load_model(folder)


def key_for(loaded, **changes):
    args = dict(source=loaded.source, config=loaded.config, dtype=torch.float32, device=torch.device("cpu"),
                runner_kind="host", tokens=9)
    args.update(changes)
    return sps_key(**args)


def test_only_models_from_a_file_are_cached(isolated_cache, tiny_on_disk, monkeypatch):
    assert key_for(tiny_on_disk, source="tiny") is None  # a random test model has no identity
    assert key_for(tiny_on_disk) is not None
    monkeypatch.setenv("AGENTSPARK_SPS_CACHE", "0")
    assert key_for(tiny_on_disk) is None


def test_an_entry_is_read_back_only_under_its_own_key(isolated_cache, tiny_on_disk):
    key = key_for(tiny_on_disk)
    values = [10.0, 9.0, 8.0, 7.5, 7.0, 6.5, 6.0, 5.5, 5.0]
    assert save_sps(key, values) is not None
    assert load_sps(key) == values
    assert load_sps(key_for(tiny_on_disk, dtype=torch.bfloat16)) is None
    assert load_sps(key_for(tiny_on_disk, runner_kind="cuda-graphs")) is None
    assert load_sps(key_for(tiny_on_disk, tokens=5)) is None


def test_a_broken_entry_is_measured_again_not_an_error(isolated_cache, tiny_on_disk):
    key = key_for(tiny_on_disk)
    path = save_sps(key, [1.0] * 9)
    path.write_text("{not json")
    assert load_sps(key) is None


def test_a_quick_measurement_times_four_sizes():
    calls = []

    def step(t: int) -> None:
        calls.append(t)

    clock = iter(range(10_000)).__next__
    table = SpsTable.measure(step, 9, repeats=3, sizes=quick_sizes(9), clock=lambda: float(clock()))
    assert sorted(set(calls)) == [1, 2, 3, 9] and len(calls) == 4 + 12  # warm-up + 3 repeats
    assert len(table.values()) == 9


def test_the_engine_measures_once_logs_it_and_the_next_engine_reads_the_cache(isolated_cache, tiny_on_disk, caplog):
    caplog.set_level(logging.INFO, logger="agentspark")
    first = Engine(tiny_on_disk, NgramDrafter(), max_draft=8, max_seq_len=128)
    probes = []
    real_probe = first.runner.probe
    first.runner.probe = lambda t: (probes.append(t), real_probe(t))[1]
    table = first.steps_per_second()
    assert len(probes) == 16 and "measuring the target's speed" in caplog.text and "cached in" in caplog.text
    second = Engine(tiny_on_disk, NgramDrafter(), max_draft=8, max_seq_len=128)

    def no_probe(t: int) -> None:
        raise AssertionError("the cached table should have been used")

    second.runner.probe = no_probe
    assert second.steps_per_second() == table
    assert "from the cache" in caplog.text
