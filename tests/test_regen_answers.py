"""Several answers per prompt in the regenerated data (``--regen-answers``, ``--regen-greedy``), and
a held-out split that keeps every answer of a prompt on one side."""

from __future__ import annotations

import json
import random

import pytest
import torch

from agentspark.errors import InvalidRequestError
from agentspark.training.data import RegenParams, Sample, regenerate, split_held_out

EOS, PAD = 2, 0


class _Tokenizer:
    """Just what ``regenerate`` reads: a chat template that is the prompt's characters as ids."""

    eos_token_id, pad_token_id = EOS, PAD

    def get_vocab(self):
        return {"<|im_end|>": EOS}

    def convert_tokens_to_ids(self, token):
        return EOS

    def apply_chat_template(self, messages, **kwargs):
        return [10 + (ord(ch) % 50) for ch in messages[0]["content"]]


class _Model:
    """Answers a row with [its last prompt id + 1, 7 if sampled else 5, EOS]; records each call."""

    def __init__(self):
        self.calls = []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self.weight

    def generate(self, input_ids, attention_mask, do_sample, **kw):
        self.calls.append((do_sample, input_ids.shape[0], kw))
        tail = torch.tensor([[int(r[-1]) + 1, 7 if do_sample else 5, EOS] for r in input_ids])
        return torch.cat([input_ids, tail], dim=1)


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"turns": [t]}) + "\n" for t in ["ab", "cde", "f", "ghij", "kl"]))
    return path


def test_answers_and_greedy_per_prompt(prompts_file):
    model = _Model()
    samples = regenerate(model, _Tokenizer(), prompts_file, RegenParams(answers=3, greedy=True, batch_size=4))
    assert len(samples) == 5 * 4  # one greedy and three sampled answers of each of the 5 prompts
    by_prompt: dict[tuple, list[int]] = {}
    for s in samples:
        first = s.loss_mask.index(1)
        assert s.input_ids[first:][-1] == EOS and s.input_ids[first] == s.input_ids[first - 1] + 1
        by_prompt.setdefault(tuple(s.input_ids[:first]), []).append(s.input_ids[first + 1])
    assert len(by_prompt) == 5 and all(sorted(v) == [5, 7, 7, 7] for v in by_prompt.values())
    # a batch is all greedy or all sampled, and the greedy ones carry no sampling parameters
    assert {c[0] for c in model.calls} == {False, True}
    for sampled, rows, kw in model.calls:
        assert rows <= 4
        assert ("temperature" in kw) == sampled
    assert sum(rows for sampled, rows, _ in model.calls if not sampled) == 5


def test_one_answer_is_the_old_recipe(prompts_file):
    model = _Model()
    samples = regenerate(model, _Tokenizer(), prompts_file, RegenParams(batch_size=64))
    assert len(samples) == 5 and [c[0] for c in model.calls] == [True]
    with pytest.raises(InvalidRequestError, match="at least 1"):
        regenerate(model, _Tokenizer(), prompts_file, RegenParams(answers=0))


def _sample(prompt: list[int], answer: int) -> Sample:
    return Sample(input_ids=prompt + [answer, EOS], loss_mask=[0] * len(prompt) + [1, 1])


def test_held_out_keeps_a_prompts_answers_together():
    samples = [_sample([p, p + 1], a) for p in range(40) for a in range(3)]
    train, held = split_held_out(samples, 0.1, seed=3)
    assert len(held) == 4 * 3 and len(train) + len(held) == len(samples)
    prompts = lambda xs: {tuple(s.input_ids[:2]) for s in xs}  # noqa: E731
    assert not prompts(train) & prompts(held)
    # the control: a split of the samples themselves (what it was) puts some prompt on both sides
    order = list(range(len(samples)))
    random.Random(3).shuffle(order)
    naive_held = [samples[i] for i in order[:12]]
    naive_train = [samples[i] for i in order[12:]]
    assert prompts(naive_train) & prompts(naive_held)


def test_distinct_prompts_split_as_before():
    samples = [_sample([p, 2 * p + 1, 3], p % 5) for p in range(50)]
    train, held = split_held_out(samples, 0.2, seed=7)
    order = list(range(len(samples)))
    random.Random(7).shuffle(order)
    assert held == [samples[i] for i in order[:10]] and train == [samples[i] for i in order[10:]]
