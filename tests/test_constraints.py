"""Constrained decoding (agentspark/constraints.py, llguidance): the grammar's masks, and speculative
decoding under a grammar yielding exactly what plain decoding under it yields.

Greedy, on the default model: JSON-schema, any-JSON and regex grammars, n-gram and auto drafters
and the batch engine, token for token equal to plain decoding with the same grammar, the output
matching the grammar. Sampling, on a tiny random target with the default tokenizer (so the grammar
is a real one over a real vocabulary): a drafter that proposes grammar-relevant tokens from its own
q, chi-square homogeneity against plain runs; the negative control masks only each verify row's
first position (the bug of a grammar state not walked along the draft) and is caught.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from agentspark import BatchEngine, Engine, NgramDrafter, SamplingParams, build_drafter
from agentspark.constraints import Constraint, Grammar, apply_masks
from agentspark.drafters.base import Draft, Drafter
from agentspark.equivalence import homogeneity_test
from agentspark.errors import InvalidRequestError
from conftest import ours_from_hf, tiny_hf_model

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
REGEX = r"(yes|no), because [a-z ]{3,40}\."


def test_masks_walk_the_draft_and_leave_the_state(default_model):
    tok = default_model.tokenizer
    c = Constraint(Grammar.json_schema(PERSON), tok, default_model.config.vocab_size, default_model.eos_token_ids)
    good = tok.encode('{"name": "Ana", "age": 31}', add_special_tokens=False)
    bits = c.masks(good[:4])
    assert bits.shape[0] == 5
    logits = torch.zeros(5, default_model.config.vocab_size)
    allowed = apply_masks(logits, bits) > float("-inf")  # [5, V]
    assert all(bool(allowed[k, good[k]]) for k in range(5))  # each draft token allowed where it stands
    assert not bool(allowed[0, tok.encode("Hello", add_special_tokens=False)[0]])
    bad = good[:2] + tok.encode("Hello", add_special_tokens=False)[:1] + good[3:5]
    walked = c.masks(bad)
    assert torch.equal(walked[3], walked[2]) and torch.equal(walked[4], walked[2])  # stopped at the refused token
    assert torch.equal(c.masks(good[:4]), bits)  # the state is where it was
    c.commit(good)
    last = apply_masks(torch.zeros(1, default_model.config.vocab_size), c.masks([]))[0] > float("-inf")
    assert c.finished and set(last.nonzero().flatten().tolist()) <= set(default_model.eos_token_ids)


def test_apply_masks_is_llguidances_kernel_bit_for_bit():
    """Our mask (no torch.compile: the kernel's first call compiled for 3.8 s inside the first
    constrained request) against llguidance's apply_token_bitmask_inplace, on random bitmasks:
    a vocabulary that ends inside the last word, one past the mask's 32 W tokens (those are
    disallowed), free rows (every word -1) and rows allowing nothing. The control: a mask read
    with its bit order reversed differs."""
    import llguidance.torch

    g = torch.Generator().manual_seed(3)
    for vocab, words in ((100, 4), (4096, 128), (1000, 30)):  # 1000 > 32 * 30: the tail is cut
        bits = torch.randint(-2**31, 2**31 - 1, (5, words), generator=g, dtype=torch.int64).to(torch.int32)
        bits[1], bits[2] = -1, 0
        logits = torch.randn(5, vocab, generator=g)
        theirs = logits.clone()
        llguidance.torch.apply_token_bitmask_inplace(theirs, bits)
        ours = apply_masks(logits, bits)
        assert torch.equal(ours, theirs)
        assert torch.isfinite(ours[1, : 32 * words]).all() and not torch.isfinite(ours[2]).any()
        flipped = apply_masks(logits, bits.view(torch.uint8).flip(-1).contiguous().view(torch.int32).flip(-1))
        assert not torch.equal(flipped, theirs)


def test_bad_grammars_are_the_requests_error(default_model):
    with pytest.raises(InvalidRequestError, match="grammar"):
        Engine(default_model).generate("hi", SamplingParams(grammar=Grammar("json_schema", '{"type": "objectx"}')))
    with pytest.raises(InvalidRequestError, match="grammar kind"):
        Grammar("yaml")
    with pytest.raises(Exception, match="grammar"):
        SamplingParams(grammar="json")


@pytest.mark.slow
def test_greedy_speculation_under_a_grammar_equals_plain(default_model):
    t = default_model
    asks = [[{"role": "user", "content": "Describe a person named Ana, 31 years old, as JSON."}],
            [{"role": "user", "content": "Is the sky blue? Answer yes or no and why."}]]
    cases = [(asks[0], Grammar.json_schema(PERSON)), (asks[0], Grammar("json")), (asks[1], Grammar("regex", REGEX))]
    plain = Engine(t)
    spec = {"ngram": Engine(t, NgramDrafter(), max_draft=6), "auto": Engine(t, build_drafter("auto", t), max_draft=6)}
    for prompt, grammar in cases:
        params = SamplingParams(max_new_tokens=32, grammar=grammar)
        ref = plain.generate(prompt, params, chat=True, speculative=False)
        for name, engine in spec.items():
            got = engine.generate(prompt, params, chat=True)
            assert got.token_ids == ref.token_ids, (name, grammar.kind, got.text, ref.text)
        if ref.finish_reason == "stop":  # the grammar was completed: the text is what it describes
            if grammar.kind == "regex":
                import re

                assert re.fullmatch(REGEX, ref.text), ref.text
            else:
                value = json.loads(ref.text)
                assert isinstance(value, dict) and (grammar.kind == "json" or set(value) == {"name", "age"})
    params = SamplingParams(max_new_tokens=24, grammar=Grammar.json_schema(PERSON))
    refs = [plain.generate(p, params, chat=True, speculative=False).token_ids for p in asks]
    batch = BatchEngine(t, NgramDrafter(), slots=2, max_draft=6)
    assert [r.token_ids for r in batch.generate_many(asks, params, chat=True)] == refs


# ---- sampling: a tiny target over the real vocabulary ---------------------------------------

N = 1000
GRAMMAR = Grammar("regex", r"[ab]{3,5}c")  # a dozen and more token sequences, several tokens each
ALPHA = 1e-3


class GrammarTokensDrafter(Drafter):
    """Drafts 2 tokens from its own fixed q: uniform over a few tokens the grammar may use (and one
    it never allows), drawn with the request's generator; q is the distribution it drew from."""

    name = "grammar-tokens"

    def __init__(self, tokens: list[int], vocab: int) -> None:
        self.tokens, self.vocab = tokens, vocab
        self.generator: torch.Generator | None = None

    def start(self, prompt_ids, params, generator) -> None:
        self.generator = generator

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        n = min(2, max_tokens)
        q = torch.zeros(n, self.vocab)
        q[:, self.tokens] = 1.0 / len(self.tokens)
        picks = torch.multinomial(q, 1, generator=self.generator).flatten()
        return Draft(picks, q)


def test_a_byte_level_tokenizer_marked_byte_fallback_is_read_as_byte_level(default_model):
    """transformers 5.17 (the GPU machine's) converts the default GGUF's tokenizer with
    byte_fallback and a ByteFallback..ByteLevel decoder sequence; llguidance read token 198 ("Ċ")
    as the bytes C4 8A instead of a newline there and refused a forced tool call's newline (run
    23). The spec is normalized to plain byte-level; the control, that spec as it is, is misread."""
    import llguidance

    from agentspark.constraints import byte_level_spec, tokenizer_spec

    tok = default_model.tokenizer
    spec = tokenizer_spec(tok)
    as_517 = dict(spec, model=dict(spec["model"], byte_fallback=True), decoder={"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        spec["decoder"]]})
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1

    def read(s: dict) -> bytes:
        return llguidance.LLTokenizer(json.dumps(s), n_vocab=default_model.config.vocab_size).decode_bytes(newline)

    assert read(as_517) != b"\n"  # the control: llguidance misreads the 5.17 form
    assert read(byte_level_spec(as_517)) == b"\n"
    assert byte_level_spec(spec) is spec  # the form 5.24 writes is left as it is
    assert read(spec) == b"\n"


@pytest.fixture(scope="module")
def tiny_with_tokenizer(default_model):
    vocab = default_model.config.vocab_size
    hf = tiny_hf_model("llama", seed=41, init_std=0.5, vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1)
    return replace(ours_from_hf(hf, eos=default_model.eos_token_ids), tokenizer=default_model.tokenizer)


def outcomes(engine: Engine, seeds: range, speculative: bool) -> list[tuple[int, ...]]:
    out = []
    for s in seeds:
        r = engine.generate([1, 2, 3], SamplingParams(temperature=1.0, seed=s, max_new_tokens=5, grammar=GRAMMAR),
                            speculative=speculative)
        out.append(tuple(r.token_ids))
        engine.accepted = getattr(engine, "accepted", 0) + sum(x.accepted for x in r.stats.rounds)
    return out


def drafter_for(target) -> GrammarTokensDrafter:
    tok = target.tokenizer
    pieces = ["a", "b", "c", "ab", "bc", "ba", "x"]
    ids = sorted({tok.encode(p, add_special_tokens=False)[0] for p in pieces} | set(target.eos_token_ids))
    return GrammarTokensDrafter(ids, target.config.vocab_size)


def p_values(a, b) -> dict[str, float]:
    return {"first": homogeneity_test([o[0] for o in a], [o[0] for o in b]).p_value,
            "length": homogeneity_test([len(o) for o in a], [len(o) for o in b]).p_value,
            "joint": homogeneity_test(a, b).p_value}


@pytest.fixture(scope="module")
def plain_sampled(tiny_with_tokenizer):
    return outcomes(Engine(tiny_with_tokenizer), range(20_000, 20_000 + N), speculative=False)


@pytest.mark.slow
def test_sampling_under_a_grammar_is_lossless(tiny_with_tokenizer, plain_sampled):
    engine = Engine(tiny_with_tokenizer, drafter_for(tiny_with_tokenizer), max_draft=2, schedule="full")
    got = outcomes(engine, range(30_000, 30_000 + N), speculative=True)
    assert len(set(plain_sampled)) >= 8  # the grammar leaves a real distribution to compare
    assert engine.accepted >= N // 10  # and the drafts land often enough to matter
    ps = p_values(got, plain_sampled)
    print(f"lossless p-values {ps}")
    assert min(ps.values()) >= ALPHA / len(ps), ps


@pytest.mark.slow
def test_a_grammar_state_not_walked_along_the_draft_is_caught(tiny_with_tokenizer, plain_sampled, monkeypatch):
    """The control: every verify row but the first unmasked (the state never walked along the
    draft), and commits no longer checked, so what that lets through is counted, not raised."""
    real_masks = Constraint.masks

    def first_row_only(self, draft):
        bits = real_masks(self, draft)
        bits[1:] = -1  # all bits set: every token allowed
        return bits

    monkeypatch.setattr(Constraint, "masks", first_row_only)
    monkeypatch.setattr(Constraint, "commit", lambda self, tokens: [self.matcher.consume_token(t) for t in tokens])
    engine = Engine(tiny_with_tokenizer, drafter_for(tiny_with_tokenizer), max_draft=2, schedule="full")
    got = outcomes(engine, range(40_000, 40_000 + N), speculative=True)
    ps = p_values(got, plain_sampled)
    print(f"control p-values {ps}")
    assert min(ps.values()) < ALPHA / len(ps), f"not caught: {ps}"


def test_a_required_tool_choice_allows_several_calls_only_when_asked(default_model):
    """tool_choice "required" under the constrained grammar: exactly one call, or with
    parallel_tool_calls one or more, each naming an offered tool with its own arguments; the
    server passes the request's parallel_tool_calls on (a scripted backend sees it)."""
    import json as json_

    from agentspark.backends.local import tool_call_grammar
    from agentspark.constraints import Constraint

    tools = [{"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}} for n in ("f", "g")]
    tok, vocab = default_model.tokenizer, default_model.model.cfg.vocab_size

    def call(name: str, x: int) -> str:
        return "<tool_call>\n" + json_.dumps({"name": name, "arguments": {"x": x}}) + "\n</tool_call>"

    def accepted(grammar, text: str) -> bool:
        c = Constraint(grammar, tok, vocab, default_model.eos_token_ids)
        ids = list(tok.encode(text, add_special_tokens=False))
        if c.matcher.validate_tokens(ids) != len(ids):
            return False
        c.commit(ids)
        return c.matcher.is_accepting()  # the grammar may end here

    one, several = tool_call_grammar(tools, "required"), tool_call_grammar(tools, "required", parallel=True)
    two = call("f", 1) + "\n" + call("g", 2)
    assert accepted(one, call("f", 1)) and not accepted(one, two)
    assert accepted(several, call("g", 3)) and accepted(several, two)
    assert not accepted(several, call("h", 1)) and not accepted(several, call("f", 1) + "\n" + call("h", 2))
    named = tool_call_grammar(tools, "f", parallel=True)  # a named choice stays one call of that tool
    assert accepted(named, call("f", 1)) and not accepted(named, two)
