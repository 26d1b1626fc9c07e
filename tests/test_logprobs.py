"""Logprobs (agentspark/logprobs.py): every generated token's log-probability under the target,
and the k best at its position, identical under speculation to plain decoding's (the verify row
at a token's position computes the bits the plain step there does, on the CPU in float32), equal
to a teacher-forced forward of the whole sequence, cut with the tokens by stop strings, the same
in the batch as alone; and on the wire in OpenAI's shape, streamed and not."""

from __future__ import annotations

import pytest
import torch

from agentspark import Engine, NgramDrafter, SamplingParams
from agentspark.batch import BatchEngine
from agentspark.errors import InvalidSamplingError
from agentspark.logprobs import TokenLogprob, token_logprobs, wire_logprobs

from conftest import ours_from_hf, tiny_hf_model

PROMPT = [1, 5, 7, 9, 5, 7, 9, 5, 7, 11, 13]  # repeats: the n-gram drafter finds matches


@pytest.fixture(scope="module")
def tiny():
    return ours_from_hf(tiny_hf_model("qwen2"))


def teacher_forced(target, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log-softmax [n, V] of one forward over prompt + generated: row i at generated[i]'s position."""
    seq = torch.tensor([prompt + generated])
    cache = target.model.new_cache(len(seq[0]) + 1)
    with torch.inference_mode():
        logits = target.model(seq, cache, 0).logits[0]  # [P+n, V]
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)].float(), dim=-1)


def test_speculative_logprobs_equal_plain_and_the_teacher_forced_forward(tiny):
    params = SamplingParams(max_new_tokens=24, logprobs=3)
    plain = Engine(tiny, max_draft=4).generate(PROMPT, params, speculative=False)
    spec = Engine(tiny, NgramDrafter(), max_draft=4, schedule="full").generate(PROMPT, params)
    assert sum(r.accepted for r in spec.stats.rounds) > 0  # drafts were accepted: verify rows gave logprobs
    assert spec.token_ids == plain.token_ids and spec.logprobs == plain.logprobs  # bit for bit
    assert [e.token_id for e in plain.logprobs] == plain.token_ids
    ref = teacher_forced(tiny, PROMPT, plain.token_ids)
    for i, e in enumerate(plain.logprobs):
        assert e.logprob == pytest.approx(ref[i, e.token_id].item(), abs=1e-4)
        assert [t for t, _ in e.top] == ref[i].topk(3).indices.tolist()
        assert e.top[0][1] >= e.logprob  # greedy: the chosen token is the best one
        assert e.top[0][0] == e.token_id


def test_sampled_logprobs_are_the_targets_whatever_the_temperature(tiny):
    params = SamplingParams(max_new_tokens=16, temperature=1.5, top_k=5, seed=3, logprobs=0)
    out = Engine(tiny, NgramDrafter(), max_draft=4, schedule="full").generate(PROMPT, params)
    ref = teacher_forced(tiny, PROMPT, out.token_ids)
    assert len(out.logprobs) == len(out.token_ids) and all(e.top == () for e in out.logprobs)
    for i, e in enumerate(out.logprobs):  # the raw model's, before temperature and top-k
        assert e.logprob == pytest.approx(ref[i, e.token_id].item(), abs=1e-4)


def test_logprobs_stream_with_their_tokens_and_are_off_by_default(tiny):
    engine = Engine(tiny, NgramDrafter(), max_draft=4)
    chunks = list(engine.stream(PROMPT, SamplingParams(max_new_tokens=12, logprobs=1)))
    streamed = [e for c in chunks if c.result is None for e in c.logprobs]
    assert [e.token_id for e in streamed] == [t for c in chunks for t in c.token_ids]
    assert streamed == chunks[-1].result.logprobs
    off = engine.generate(PROMPT, SamplingParams(max_new_tokens=4))
    assert off.logprobs is None


def test_an_end_inside_an_accepted_block_cuts_the_logprobs_with_the_tokens(tiny):
    free = Engine(tiny, max_draft=4).generate(PROMPT, SamplingParams(max_new_tokens=24), speculative=False)
    eos = free.token_ids[5]  # a token the output reaches: with it as EOS the output ends there
    stopping = ours_from_hf(tiny_hf_model("qwen2"), eos=frozenset({eos}))
    out = Engine(stopping, NgramDrafter(), max_draft=4, schedule="full").generate(
        PROMPT, SamplingParams(max_new_tokens=24, logprobs=0))
    assert out.token_ids == free.token_ids[: free.token_ids.index(eos) + 1]
    assert [e.token_id for e in out.logprobs] == out.token_ids


def test_the_batch_reports_each_requests_logprobs_as_alone(tiny):
    params = [SamplingParams(max_new_tokens=12, logprobs=2), SamplingParams(max_new_tokens=12),
              SamplingParams(max_new_tokens=12, logprobs=0)]
    prompts = [PROMPT, PROMPT[3:], [2, 4, 6, 2, 4, 6, 2]]
    alone = [Engine(tiny, max_draft=4).generate(p, q, speculative=False) for p, q in zip(prompts, params)]
    batch = BatchEngine(tiny, NgramDrafter, slots=3, max_draft=4, reuse_prefix=False)
    got = batch.generate_many(prompts, params)
    assert [r.token_ids for r in got] == [r.token_ids for r in alone]
    assert [r.logprobs for r in got] == [r.logprobs for r in alone]
    assert got[1].logprobs is None


def test_logprobs_validation_and_the_wire_shape():
    with pytest.raises(InvalidSamplingError, match="logprobs"):
        SamplingParams(logprobs=21)
    with pytest.raises(InvalidSamplingError, match="logprobs"):
        SamplingParams(logprobs=True)
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    entries = token_logprobs(logits, [1, 0], top=2)
    assert entries[0].token_id == 1 and entries[0].top[0][0] == 2 and len(entries[1].top) == 2
    assert entries[0].logprob == pytest.approx(torch.log_softmax(logits[0], -1)[1].item())
    wire = wire_logprobs([TokenLogprob(7, -0.5, ((7, -0.5), (8, -1.25)))], lambda t: f"t{t}é")
    assert wire == [{"token": "t7é", "logprob": -0.5, "bytes": list("t7é".encode()),
                     "top_logprobs": [{"token": "t7é", "logprob": -0.5, "bytes": list("t7é".encode())},
                                      {"token": "t8é", "logprob": -1.25, "bytes": list("t8é".encode())}]}]
