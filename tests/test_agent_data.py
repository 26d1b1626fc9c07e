"""Agent-shaped training data (training/agent_tasks.py, agent_data.py): seeded tasks, sessions of
the agent loop turned into samples whose loss mask covers exactly what the model generated, and
``train-drafter --agent-sessions`` end to end. A tiny random model with the default model's
tokenizer and chat template, and a scripted backend that reports token ids like a local one."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_hf_model

from agentspark.backends.base import Backend, BackendChunk, BackendResponse, finish_reason, reply_message
from agentspark.backends.local import prepare_request
from agentspark.datasets import PromptRecord
from agentspark.errors import InvalidRequestError
from agentspark.model.loading import LoadedModel, resolve_source
from agentspark.training.agent_data import (AgentDataParams, generate_agent_samples, refuse_eval_prompts,
                                            run_session, session_sample, target_backend)
from agentspark.training.agent_tasks import KINDS, AgentTask, make_task

PROMPTS = [PromptRecord("gsm8k", ("Tom has 3 apples and buys 4 more. How many apples does he have?",)),
           PromptRecord("livecodebench", ("Write a function that reverses a string.",))]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_source("default")[0]))  # the default model's, no weights


@pytest.fixture(scope="module")
def tiny_chat(tokenizer):
    """A random 2-layer model over the default model's vocabulary, with its tokenizer."""
    from agentspark.model.config import DecoderConfig
    from agentspark.model.weights import build_model

    hf = tiny_hf_model("llama", seed=5, vocab_size=len(tokenizer), max_position_embeddings=4096)
    model = build_model(DecoderConfig.from_hf(hf.config.to_dict()), hf.state_dict())
    return hf, LoadedModel(model, tokenizer=tokenizer, source="tiny", eos_token_ids=frozenset({tokenizer.eos_token_id}))


class TokenScript(Backend):
    """Scripted replies with the token ids a local backend reports: the prompt as prepared for the
    engine, the reply's tokens and the end-of-turn token."""

    name = "token-script"

    def __init__(self, tokenizer, replies):
        self.tok, self.replies, self.seen = tokenizer, list(replies), []

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        prepared = prepare_request(self.tok, messages, tools, sampling, tool_choice, close_forced_call=False)
        text = self.replies[len(self.seen)]
        ids = list(self.tok.encode(text, add_special_tokens=False)) + [self.tok.eos_token_id]
        self.seen.append((prepared.prompt_ids, ids))
        message = reply_message(prepared.prefix + text, parse_tools=bool(tools))
        message.raw_text = prepared.prefix + text
        yield BackendChunk(delta="", response=BackendResponse(
            message=message, finish_reason=finish_reason(message, "stop"), prompt_tokens=len(prepared.prompt_ids),
            completion_tokens=len(ids), backend=self.name, prompt_ids=prepared.prompt_ids, completion_ids=ids))


class Recording(Backend):
    """Passes requests on and keeps each response's (prompt ids, completion ids)."""

    def __init__(self, inner):
        self.inner, self.name, self.seen = inner, inner.name, []

    def stream(self, messages, tools=None, sampling=None, tool_choice="auto"):
        for chunk in self.inner.stream(messages, tools, sampling, tool_choice):
            if chunk.response is not None:
                self.seen.append((chunk.response.prompt_ids, chunk.response.completion_ids))
            yield chunk


def spans(mask):
    """(start, end) of every run of 1s."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def assert_mask_is_what_was_generated(sample, requests):
    """1 exactly where some request generated that token at that position after that prefix."""
    ids = sample.input_ids
    assert ids == requests[-1][0] + requests[-1][1] and len(sample.loss_mask) == len(ids)
    generated = set()
    for prompt, completion in requests:
        seq = prompt + completion
        for p in range(len(prompt), len(seq)):
            if p < len(ids) and seq[: p + 1] == ids[: p + 1]:
                generated.add(p)
    assert {p for p, m in enumerate(sample.loss_mask) if m} == generated


# ---- tasks ----------------------------------------------------------------------------------

def test_tasks_are_seeded_and_cover_every_kind():
    tasks = [make_task(i, 7, PROMPTS) for i in range(60)]
    assert [make_task(i, 7, PROMPTS) for i in range(10)] == tasks[:10]  # task i depends on (seed, i) alone
    assert make_task(3, 8, PROMPTS) != tasks[3]
    assert {t.kind for t in tasks} == set(KINDS)
    assert {t.kind for t in (make_task(i, 7) for i in range(40))} <= set(KINDS) - {"prompt"}  # no prompts, none
    for t in tasks:
        assert t.turns and all(choice in ("auto", "calculator", "read_file", "list_dir") for _, choice in t.turns)
        if t.kind == "prompt":
            assert t.turns[0][0] in {r.turns[0] for r in PROMPTS}
        if t.kind in ("note", "multi", "listing"):  # the note the task names is in its workspace
            assert any(path in t.turns[-1][0] or path in t.turns[0][0] for path in t.files)


def test_eval_prompts_are_refused(tmp_path):
    from agentspark.datasets import bundled_eval_sample

    (tmp_path / "eval").mkdir()
    for bad in (tmp_path / "eval", tmp_path / "eval" / "gsm8k.jsonl", bundled_eval_sample()):
        with pytest.raises(InvalidRequestError, match="training prompts"):
            refuse_eval_prompts(bad)
    refuse_eval_prompts(tmp_path / "train")


# ---- sessions -> samples --------------------------------------------------------------------

def test_session_sample_keeps_the_mask_of_what_the_history_kept():
    requests = [([1, 2, 3], [4, 5]), ([1, 2, 3, 4, 9, 6, 7], [8]), ([1, 2, 3, 4, 9, 6, 7, 8, 0], [10, 11])]
    s = session_sample(requests, "agent-x")
    assert s.input_ids == [1, 2, 3, 4, 9, 6, 7, 8, 0, 10, 11]
    # 5 was re-rendered as 9: prompt from there on; 4 and 8 were generated and kept
    assert s.loss_mask == [0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1]


def test_scripted_session_masks_the_assistants_text_calls_and_end_of_turn(tokenizer):
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234 * 5678 + 91011"}}\n</tool_call>'
    replies = [call, "The result is 7097663.", "The number was 7097663."]
    backend = TokenScript(tokenizer, replies)
    task = AgentTask("arithmetic", {"notes.txt": "hello\n"},
                     (("What is 1234 * 5678 + 91011? Use the calculator.", "auto"), ("Repeat the number.", "auto")))
    sample = run_session(backend, task, AgentDataParams(force_tools=False), 0)
    assert sample.dataset == "agent-arithmetic"
    assert_mask_is_what_was_generated(sample, backend.seen)
    eot = tokenizer.decode([tokenizer.eos_token_id])
    got = [tokenizer.decode(sample.input_ids[a:b]) for a, b in spans(sample.loss_mask)]
    assert got == [r + eot for r in replies]  # each reply, its call included, and its end-of-turn token
    for a, _ in spans(sample.loss_mask):  # each starts the assistant's turn
        assert tokenizer.decode(sample.input_ids[:a]).endswith("<|im_start|>assistant\n")
    masked_out = tokenizer.decode([t for t, m in zip(sample.input_ids, sample.loss_mask) if not m])
    assert "# Tools" in masked_out and '"name": "read_file"' in masked_out  # the schemas, as the loop renders them
    assert "<tool_response>\n7097663\n</tool_response>" in masked_out  # the calculator's result, fed back
    assert masked_out.count("<|im_start|>user") == 3  # two turns and the tool result


def test_sessions_on_a_tiny_model_are_reproducible_and_masked_exactly(tiny_chat):
    _, target = tiny_chat
    params = AgentDataParams(sessions=3, max_new_tokens=6, max_rounds=2, seed=11)
    first = generate_agent_samples(target_backend(target, params), PROMPTS, params)
    assert len(first) == 3 and all(s.dataset.startswith("agent-") for s in first)
    recording = Recording(target_backend(target, params))
    for i, sample in enumerate(first):  # the same sessions one by one, their requests recorded
        recording.seen.clear()
        assert run_session(recording, make_task(i, params.seed, PROMPTS), params, i) == sample
        assert_mask_is_what_was_generated(sample, recording.seen)
        assert sample.loss_tokens > 0
    again = generate_agent_samples(target_backend(target, params), PROMPTS, params)
    assert again == first  # seeded per session and turn
    other = generate_agent_samples(target_backend(target, params), PROMPTS,
                                   AgentDataParams(sessions=3, max_new_tokens=6, max_rounds=2, seed=12))
    assert other != first


def test_batched_sessions_match_the_sequential_ones(tiny_chat):
    _, target = tiny_chat
    params = AgentDataParams(sessions=2, max_new_tokens=5, max_rounds=2, seed=3)
    sequential = generate_agent_samples(target_backend(target, params), PROMPTS, params)
    batched_params = AgentDataParams(sessions=2, max_new_tokens=5, max_rounds=2, seed=3, slots=2)
    backend = target_backend(target, batched_params)
    try:
        batched = generate_agent_samples(backend, PROMPTS, batched_params)
    finally:
        backend.close()
    assert batched == sequential  # CPU float32: each request's seeded output is its own alone


# ---- train-drafter --agent-sessions, on a tiny HF folder --------------------------------------

def test_train_drafter_mixes_in_agent_sessions_and_reuses_them(tiny_chat, tokenizer, tmp_path, capsys):
    from agentspark.cli import main
    from agentspark.training.data import load_samples

    hf, _ = tiny_chat
    folder = tmp_path / "tiny"
    hf.save_pretrained(folder)  # safetensors: the default
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"dataset": r.dataset, "turns": list(r.turns)}) + "\n" for r in PROMPTS))
    out = tmp_path / "run"
    args = ["train-drafter", "--target", str(folder), "--prompts", str(prompts), "--out", str(out),
            "--steps", "4", "--batch-size", "2", "--anchors", "4", "--max-length", "256", "--num-features", "2",
            "--markov-rank", "4", "--regen-max-new-tokens", "6", "--agent-sessions", "2",
            "--agent-max-new-tokens", "5", "--held-out", "0", "--stop-at-step", "2"]
    assert main(args) == 0
    assert "resume with --resume" in capsys.readouterr().out
    agent = load_samples(out / "data" / "agent_samples.jsonl")
    assert len(agent) == 2 and all(s.dataset.startswith("agent-") for s in agent)
    report = json.loads((out / "report.json").read_text())
    assert report["agent_samples"] == 2 and report["samples"] == 4 and not report["finished"]

    saved = (out / "data" / "agent_samples.jsonl").stat().st_mtime_ns
    assert main([*args[:-2], "--resume"]) == 0
    assert (out / "data" / "agent_samples.jsonl").stat().st_mtime_ns == saved  # reused, not run again
    report = json.loads((out / "report.json").read_text())
    assert report["finished"] and [r["end_step"] for r in report["runs"]] == [2, 4]
    assert (out / "drafter" / "model.safetensors").is_file()
