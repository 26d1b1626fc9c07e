"""Greedy speculative output equals plain output token for token on the real default model
(SmolLM2-135M-Instruct, float32, CPU): 10 prompts of the eval sample, 128 new tokens each, for
every drafter. The draft model is a truncated SmolLM2 (its first layers, the same tokenizer)
saved as an HF folder and loaded by name like a user's draft model."""

from __future__ import annotations

import json
import shutil

import pytest

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.drafters.factory import build_drafter
from agentspark.model.loading import resolve_folder

pytestmark = pytest.mark.slow
PARAMS = SamplingParams(max_new_tokens=128)
DRAFT_LAYERS = 6


@pytest.fixture(scope="module")
def references(default_model, eval_chat_prompts):
    """(prompt, plain result) for 10 prompts: the reference every drafter must reproduce."""
    plain = Engine(default_model)
    refs = [(p, plain.generate(p, PARAMS, speculative=False)) for p in eval_chat_prompts[:10]]
    assert all(r.stats.new_tokens == 128 or r.finish_reason == "stop" for _, r in refs)
    return refs


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


def check(engine: Engine, references) -> int:
    accepted = 0
    for prompt, ref in references:
        got = engine.generate(prompt, PARAMS)
        assert got.token_ids == ref.token_ids
        assert got.text == ref.text
        accepted += sum(r.accepted for r in got.stats.rounds)
    return accepted


def test_ngram_adaptive(default_model, references):
    assert check(Engine(default_model, NgramDrafter(), max_draft=8), references) > 50


def test_ngram_full_blocks_of_eight(default_model, references):
    assert check(Engine(default_model, NgramDrafter(), max_draft=8, schedule="full"), references[:3]) > 10


def test_draft_model(default_model, references, truncated_default):
    drafter = build_drafter(f"draft-model:{truncated_default}", default_model)
    assert check(Engine(default_model, drafter, max_draft=2, schedule="full"), references) > 20
