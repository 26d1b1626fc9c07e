"""``agentspark train-drafter --method dspark`` end to end on the CPU with the real default model,
kept tiny: regenerate answers with the target (batched HF generate), train a few steps online,
checkpoint, resume from the checkpoint, calibrate on the held-out split, export; the export loads
with ``learned:PATH`` and decodes exactly like plain greedy decoding."""

from __future__ import annotations

import json

import pytest

from agentspark import Engine, SamplingParams
from agentspark.cli import main
from agentspark.drafters.factory import build_drafter
from agentspark.training.data import load_samples

pytestmark = pytest.mark.slow


def test_regenerate_train_resume_calibrate_export(tmp_path, default_model):
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [q]}) + "\n" for q in
                               ["What is 12 + 30?", "Name a prime number.", "Say hello in French."]))
    out = tmp_path / "run"
    args = ["train-drafter", "--target", "default", "--method", "dspark", "--prompts", str(prompts), "--out", str(out),
            "--steps", "4", "--save-every", "2", "--batch-size", "1", "--anchors", "4", "--max-length", "96",
            "--regen-max-new-tokens", "12", "--regen-batch-size", "3", "--held-out", "0.34",
            "--calibration-prompts", "1", "--calibration-tokens", "8", "--draft-vocab", "512"]
    assert main(args) == 0
    samples = load_samples(out / "data" / "samples.jsonl")
    assert len(samples) == 3
    for s in samples:  # the prompt is masked out, the regenerated answer is in
        assert s.loss_mask[0] == 0 and s.loss_mask[-1] == 1 and len(s.input_ids) == len(s.loss_mask)
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["next_step"] == 4 and len(state["history"]) == 4

    assert main([*args[:args.index("--steps")], "--steps", "6", *args[args.index("--steps") + 2:], "--resume"]) == 0
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["next_step"] == 6 and [h["step"] for h in state["history"]] == [1, 2, 3, 4, 5, 6]  # continued

    report = json.loads((out / "report.json").read_text())
    assert report["held_out_samples"] == 1 and report["calibration"]
    config = json.loads((out / "drafter" / "config.json").read_text())
    assert len(config["agentspark_confidence_temperatures"]) == config["block_size"]
    assert len(config["agentspark_draft_vocab"]) <= 512

    drafter = build_drafter(f"learned:{out / 'drafter'}", default_model)
    ids = default_model.tokenizer.apply_chat_template([{"role": "user", "content": "Count to five."}],
                                                      add_generation_prompt=True, tokenize=True, return_dict=False)
    params = SamplingParams(max_new_tokens=24)
    spec = Engine(default_model, drafter, max_draft=7, schedule="full").generate(list(ids), params)
    assert spec.token_ids == Engine(default_model).generate(list(ids), params, speculative=False).token_ids
