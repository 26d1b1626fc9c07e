"""Greedy draft-model speculative output equals plain output token for token on the real default
model (SmolLM2-135M-Instruct, float32, CPU): 10 eval prompts, 128 new tokens each. The draft model
is a truncated SmolLM2 (its first layers, the same tokenizer) saved as an HF folder and loaded by
name like a user's draft model."""

from __future__ import annotations

import json
import shutil

import pytest

from agentspark import Engine
from agentspark.drafters.factory import build_drafter
from agentspark.model.loading import resolve_folder
from conftest import assert_reproduces

pytestmark = pytest.mark.slow
DRAFT_LAYERS = 6


@pytest.fixture(scope="module")
def truncated_default(tmp_path_factory, default_model):
    from safetensors.torch import load_file, save_file

    src = resolve_folder("default")
    out = tmp_path_factory.mktemp("smollm2-first-layers")
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json", "converted.json"):
            shutil.copy(f, out / f.name)  # tokenizer files: the draft must share the target's
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = DRAFT_LAYERS
    (out / "config.json").write_text(json.dumps(config))
    keep = {k: v for k, v in load_file(str(src / "model.safetensors")).items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < DRAFT_LAYERS}
    save_file(keep, str(out / "model.safetensors"))
    return out


def test_draft_model(default_model, default_references, truncated_default):
    drafter = build_drafter(f"draft-model:{truncated_default}", default_model)
    engine = Engine(default_model, drafter, max_draft=2, schedule="full")
    assert assert_reproduces(engine, default_references) > 20
