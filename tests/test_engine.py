"""Engine behaviour: EOS, stop strings and budgets cut a block where plain decoding stops; text
streams in deltas; every request returns its round statistics; bad requests are typed errors."""

from __future__ import annotations

import pytest

from agentspark import DraftModelDrafter, Engine, NgramDrafter, SamplingParams
from agentspark.drafters import check_same_tokenizer
from agentspark.errors import (
    DrafterMismatchError,
    EmptyPromptError,
    InvalidDraftLengthError,
    InvalidRequestError,
    PromptTooLongError,
)
from conftest import ours_from_hf, perturbed, tiny_hf_model


@pytest.fixture(scope="module")
def tiny():
    hf = tiny_hf_model("llama", seed=31)
    return hf, ours_from_hf(hf)


def test_eos_inside_an_accepted_block_cuts_there(tiny):
    hf, _ = tiny
    prompt = [3, 7, 3, 7, 3, 7, 3]
    free = Engine(ours_from_hf(hf)).generate(prompt, SamplingParams(max_new_tokens=30), speculative=False)
    eos = free.token_ids[9]  # make a token from the middle of the output the EOS
    target = ours_from_hf(hf, eos=frozenset({eos}))
    params = SamplingParams(max_new_tokens=30)
    plain = Engine(target).generate(prompt, params, speculative=False)
    assert plain.finish_reason == "stop" and plain.token_ids[-1] == eos
    draft = ours_from_hf(perturbed(hf, seed=1, scale=0.05))  # nearly always right: long blocks
    for drafter in (NgramDrafter(), DraftModelDrafter(draft, hf.config.vocab_size)):
        spec = Engine(target, drafter, max_draft=8, schedule="full").generate(prompt, params)
        assert spec.token_ids == plain.token_ids and spec.finish_reason == "stop"


@pytest.mark.parametrize("budget", [1, 2, 5, 13])
def test_token_budget_cuts_a_block(tiny, budget):
    hf, target = tiny
    draft = ours_from_hf(perturbed(hf, seed=2, scale=0.05))
    params = SamplingParams(max_new_tokens=budget)
    plain = Engine(target).generate([5, 6, 7], params, speculative=False)
    spec = Engine(target, DraftModelDrafter(draft, 96), max_draft=8, schedule="full").generate([5, 6, 7], params)
    assert len(spec.token_ids) == budget and spec.token_ids == plain.token_ids
    assert spec.finish_reason == "length"


def test_context_end_is_a_length_stop(tiny):
    _, target = tiny
    engine = Engine(target, NgramDrafter(), max_seq_len=40, schedule="full")
    prompt = [1, 2, 3, 1, 2, 3] * 5  # 30 tokens: room for 10 more
    plain = engine.generate(prompt, SamplingParams(max_new_tokens=100), speculative=False)
    spec = engine.generate(prompt, SamplingParams(max_new_tokens=100))
    assert len(plain.token_ids) == 10 and spec.token_ids == plain.token_ids


def test_round_statistics_add_up(tiny):
    hf, target = tiny
    draft = ours_from_hf(perturbed(hf, seed=3, scale=0.2))
    result = Engine(target, DraftModelDrafter(draft, 96), max_draft=4, schedule="full").generate(
        [9, 8, 7], SamplingParams(max_new_tokens=40)
    )
    s = result.stats
    assert s.new_tokens == 40 == 1 + sum(r.committed for r in s.rounds)  # first token comes from prefill
    assert all(r.accepted <= r.verified <= r.drafted <= 4 for r in s.rounds)
    assert all(1 <= r.committed <= r.accepted + 1 for r in s.rounds)
    assert s.mean_accepted_length == pytest.approx(sum(r.committed for r in s.rounds) / len(s.rounds))
    assert s.prefill_tokens == 3 and s.prefill_s > 0 and s.tokens_per_second > 0
    assert s.draft_s > 0 and s.verify_s > 0 and s.total_s >= s.prefill_s + s.draft_s + s.verify_s
    d = s.to_dict()
    for key in ("mean_accepted_length", "tokens_per_second", "rounds", "prefill_s", "draft_s", "verify_s", "other_s"):
        assert key in d


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda e: e.generate([], SamplingParams()), EmptyPromptError),
        (lambda e: e.generate("", SamplingParams()), EmptyPromptError),
        (lambda e: e.generate("text", SamplingParams()), InvalidRequestError),  # no tokenizer
        (lambda e: e.generate([1] * 600, SamplingParams()), PromptTooLongError),
        (lambda e: e.generate([1, 999], SamplingParams()), InvalidRequestError),
        (lambda e: e.generate([1, 2], SamplingParams(stop=("x",))), InvalidRequestError),
    ],
)
def test_bad_requests_are_typed_errors(tiny, call, error):
    with pytest.raises(error):
        call(Engine(tiny[1], max_seq_len=512))


@pytest.mark.parametrize("k", [0, -1, 65, 10_000])
def test_absurd_draft_lengths_are_refused(tiny, k):
    with pytest.raises(InvalidDraftLengthError, match="max_draft"):
        Engine(tiny[1], NgramDrafter(), max_draft=k)


def test_draft_vocab_mismatch_is_refused(tiny):
    _, target = tiny
    other = ours_from_hf(tiny_hf_model("llama", seed=1, vocab_size=80))
    with pytest.raises(DrafterMismatchError, match="vocab"):
        check_same_tokenizer(target, other)


def test_streaming_deltas_and_stop_strings_on_the_real_model(default_model):
    """A stop string inside an accepted block cuts the text exactly where plain decoding does."""
    prompt = "List the numbers from 1 to 30, separated by commas."
    base = SamplingParams(max_new_tokens=96)
    free = Engine(default_model).generate(prompt, base, chat=True, speculative=False)
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 4]  # a stop string mid-output
    params = SamplingParams(max_new_tokens=96, stop=(stop,))
    plain = Engine(default_model).generate(prompt, params, chat=True, speculative=False)
    engine = Engine(default_model, NgramDrafter(), max_draft=8, schedule="full")
    chunks = list(engine.stream(prompt, params, chat=True))
    spec = chunks[-1].result
    assert spec.text == plain.text and spec.token_ids == plain.token_ids
    assert stop not in spec.text and plain.finish_reason == spec.finish_reason == "stop"
    assert "".join(c.delta for c in chunks) == spec.text
    assert sum(len(c.token_ids) for c in chunks) == len(spec.token_ids)
    assert max(len(c.token_ids) for c in chunks) > 1  # some chunk carried a multi-token block


def test_mismatched_draft_tokenizer_is_refused(default_model, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=tok)
    other.save_pretrained(tmp_path)
    draft = ours_from_hf(tiny_hf_model("llama", seed=2))
    draft.tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(DrafterMismatchError, match="tokenizer"):
        check_same_tokenizer(default_model, draft)


def test_multi_turn_reuses_the_cache_and_stays_lossless(default_model):
    """Turn 2 extends turn 1's conversation: only the appended tokens are prefilled, and the
    speculative run reproduces the plain run that reused its cache the same way."""
    params = SamplingParams(max_new_tokens=40)
    turn1 = [{"role": "user", "content": "Name three primary colors."}]
    outputs = {}
    for name, engine in (("plain", Engine(default_model)), ("spec", Engine(default_model, NgramDrafter(), max_draft=4, schedule="full"))):
        first = engine.generate(turn1, params, speculative=name == "spec", reuse_cache=True)
        turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And three secondary ones?"}]
        second = engine.generate(turn2, params, speculative=name == "spec", reuse_cache=True)
        appended = len(second.prompt_ids) - len(first.prompt_ids) - len(first.token_ids)
        assert first.stats.prefill_tokens == len(first.prompt_ids)
        assert second.stats.prefill_tokens <= appended + 4  # the template may re-render the turn's end
        outputs[name] = (first.token_ids, second.token_ids)
    assert outputs["spec"] == outputs["plain"]
