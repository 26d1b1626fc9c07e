"""The shipped default drafter (DSpark for SmolLM2-135M-Instruct, package data): within the size
budget, loaded by ``--drafter default``, and lossless on the real default model (greedy, float32,
CPU): 10 eval prompts x 128 new tokens identical to plain decoding (4 with full blocks, 6 adaptive)."""

from __future__ import annotations

import json

import pytest

from agentspark import Engine
from agentspark.cli import main
from agentspark.drafters.factory import build_drafter, default_drafter_dir
from conftest import assert_reproduces

pytestmark = pytest.mark.slow


def test_shipped_files_fit_the_budget():
    files = list(default_drafter_dir().iterdir())
    assert {f.name for f in files} == {"config.json", "model.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 16 * 2**20
    cfg = json.loads((default_drafter_dir() / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3DSparkModel"] and cfg["markov_rank"] > 0 and cfg["enable_confidence_head"]
    assert len(cfg["agentspark_confidence_temperatures"]) == cfg["block_size"]  # calibrated


def test_default_drafter_is_lossless_on_the_default_model(default_model, default_references):
    drafter = build_drafter("default", default_model)
    assert drafter.name == "dspark"
    # all 10 references: 4 with every drafted token verified, 6 with the adaptive schedule (on the
    # CPU a full block of 7 costs ~7 extra row reads per round; both paths must be exact)
    full = Engine(default_model, drafter, max_draft=7, schedule="full")
    assert assert_reproduces(full, default_references[:4]) > 40  # the drafter is trained: drafts survive
    adaptive = Engine(default_model, build_drafter("default", default_model), max_draft=7)
    assert_reproduces(adaptive, default_references[4:])


def test_generate_with_the_default_drafter_compares_equal(reuse_default_model, capsys):
    code = main(["generate", "--drafter", "default", "--chat", "--prompt", "Name three primary colors.",
                 "--max-new-tokens", "48", "--compare-plain", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["identical"] is True and out["stats"]["drafter"] == "dspark"
