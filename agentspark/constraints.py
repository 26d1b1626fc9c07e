"""Constrained decoding: a grammar decides which tokens a request may produce (llguidance).

A request's ``SamplingParams.grammar`` (a ``Grammar``: JSON schema, any JSON, Lark or regex) gets
a ``Constraint`` when the request is made: the grammar compiled for the model's tokenizer, checked
then (a bad grammar is the request's error) and a matcher that follows the committed tokens.

Lossless under speculation (DESIGN.md, "Equivalence"): plain decoding samples every token from the
target's distribution with the grammar's mask applied (disallowed logits set to -inf, then the
usual temperature / top-k / top-p). A verify forward over [x0, d_1..d_l] applies at row k the mask
of the grammar state after x0, d_1..d_k (``masks``: the matcher walks the draft, then rolls back),
so each row's p is exactly what plain decoding would sample from at that position; a draft token
the grammar refuses has p = 0 there and is rejected, and rows after it are never used. The
drafter's own q is left as it was sampled (rejection sampling is exact for any q), and the
matcher advances only by what is committed (``commit``), so rejected drafts leave no trace.

Why llguidance (examples/results/grammar_cost.json, the default tokenizer, 2-core CPU): a
request's grammar (its own schema: response_format, a tool's arguments) is ready with its first
mask in 0.3-0.6 ms against xgrammar's 3.2-4.5 ms; a mask costs 3-11 us and a speculative round's
grammar work (8 masks, 7 advances, a rollback of 7) 30-65 us in both, against a 50 ms target step;
and it is one wheel with no dependencies, where xgrammar brings its own runtime and requirements on
torch, transformers and Triton. Its one-time cost, wrapping the tokenizer (1.7 s), is paid once per
tokenizer, at the first constrained request.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import InvalidRequestError

GRAMMAR_KINDS = ("json_schema", "json", "lark", "regex")


@dataclass(frozen=True)
class Grammar:
    """What a request's output must match. ``json_schema``: ``source`` is the schema (JSON text);
    ``json``: any JSON object (``source`` unused); ``lark``: a Lark grammar (llguidance's dialect);
    ``regex``: a regular expression the whole output matches."""

    kind: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise InvalidRequestError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise InvalidRequestError(f"a grammar's source is text, got {type(self.source).__name__}")

    @staticmethod
    def json_schema(schema: dict[str, Any] | str) -> Grammar:
        return Grammar("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    def llguidance_grammar(self) -> str:
        import llguidance

        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source)
        if self.kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(json.dumps({"type": "object"}))
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        return llguidance.LLMatcher.grammar_from_regex(self.source)


_TOKENIZERS: dict[tuple[int, int, tuple[int, ...]], Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer: Any, vocab: int, eos: tuple[int, ...]) -> Any:
    """llguidance's view of a tokenizer, made once per (tokenizer, vocabulary, EOS) per process."""
    import llguidance

    key = (id(tokenizer), vocab, eos)
    with _TOKENIZERS_LOCK:
        ll = _TOKENIZERS.get(key)
        if ll is None:
            spec = byte_level_spec(tokenizer_spec(tokenizer))
            ll = _TOKENIZERS[key] = (llguidance.LLTokenizer(json.dumps(spec), n_vocab=vocab, eos_token=list(eos)),
                                     tokenizer)  # the tokenizer kept alive: its id stays its own
        return ll[0]


def tokenizer_spec(tokenizer: Any) -> dict:
    """The fast tokenizer's JSON (tokenizers' own serialization, added tokens included), without
    padding or truncation: what ``llguidance.hf.from_tokenizer`` hands to llguidance."""
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise InvalidRequestError("constrained decoding needs a fast (tokenizers) tokenizer")
    backend = copy.copy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return json.loads(backend.to_str())


def _has(node: dict | None, kind: str) -> bool:
    if not node:
        return False
    return node.get("type") == kind or any(_has(n, kind) for n in node.get("pretokenizers") or node.get("decoders") or [])


def byte_level_spec(spec: dict) -> dict:
    """A byte-level BPE as llguidance must see it. transformers 5.17 (the GPU machine's) converts
    the default GGUF's tokenizer with ``byte_fallback: true`` and a decoder sequence of
    ByteFallback, ..., ByteLevel; llguidance then reads every token as the UTF-8 of its symbol
    ("Ċ" as C4 8A instead of the newline byte), refuses the newline its grammar forces, and a
    forced tool call failed on the H200 (run 23). When the pre-tokenizer and the decoder are both
    byte-level, the tokenizer is byte-level: say so plainly (5.24's conversion already does)."""
    model = spec.get("model") or {}
    if not (model.get("byte_fallback") and _has(spec.get("pre_tokenizer"), "ByteLevel")
            and _has(spec.get("decoder"), "ByteLevel")):
        return spec
    fixed = dict(spec, model=dict(model, byte_fallback=False))
    fixed["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return fixed


class Constraint:
    """One request's grammar state over its generated tokens."""

    def __init__(self, grammar: Grammar, tokenizer: Any, vocab: int, eos: frozenset[int]) -> None:
        import llguidance
        import llguidance.torch

        if tokenizer is None:
            raise InvalidRequestError("constrained decoding needs the model's tokenizer; this model has none")
        self._torch = llguidance.torch
        self.vocab = vocab
        self.eos = frozenset(eos)
        self.tokenizer = _ll_tokenizer(tokenizer, vocab, tuple(sorted(eos)))
        compiled = grammar.llguidance_grammar()
        error = llguidance.LLMatcher.validate_grammar(compiled, self.tokenizer)
        if error:
            raise InvalidRequestError(f"the {grammar.kind} grammar is not valid: {error}")
        self.matcher = llguidance.LLMatcher(self.tokenizer, compiled)
        if self.matcher.is_error():
            raise InvalidRequestError(f"the {grammar.kind} grammar is not valid: {self.matcher.get_error()}")

    def masks(self, draft: list[int]) -> Tensor:
        """[l+1, W] int32 bitmasks: row k allows what may follow the committed tokens and d_1..d_k.
        The walk stops at the first draft token the grammar refuses (or an end token): the rows
        after it repeat its row (that token is rejected, so they are never used). The matcher is
        back where it was on return."""
        rows = len(draft) + 1
        bits = self._torch.allocate_token_bitmask(rows, self.vocab)  # [rows, W]
        walk = self.matcher.validate_tokens(draft) if draft else 0
        for k, token in enumerate(draft[:walk]):
            if token in self.eos:
                walk = k
                break
        self._torch.fill_next_token_bitmask(self.matcher, bits, 0)
        for k in range(walk):
            self.matcher.consume_token(draft[k])
            self._torch.fill_next_token_bitmask(self.matcher, bits, k + 1)
        if walk:
            self.matcher.rollback(walk)
        if walk + 1 < rows:
            bits[walk + 1:] = bits[walk]
        return bits

    def commit(self, tokens: list[int]) -> None:
        """Committed tokens, in order (each was allowed: it came from a masked distribution)."""
        for token in tokens:
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"the grammar refused committed token {token}: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The grammar is complete: only an end token may follow."""
        return self.matcher.is_stopped()


def apply_masks(logits: Tensor, bits: Tensor) -> Tensor:
    """logits [K, V] with every token a row's bitmask [K, W] disallows at -inf (a new float32
    tensor); tokens past the mask's 32 W are disallowed. What llguidance's own
    ``apply_token_bitmask_inplace`` computes (tests/test_constraints.py holds the two equal, bit
    for bit), through ``apply_masks_rows``' unpacking instead of that kernel's ``torch.compile``,
    whose first call compiled for 3.8 s on a 2-core CPU inside the first constrained request of
    the process (the demo's speculative round 0, whose plain replay then found it compiled)."""
    out = logits.float()
    n = min(out.shape[-1], 32 * bits.shape[-1])
    head = apply_masks_rows(out[None, :, :n], bits[None].to(out.device))[0]  # a new tensor
    if n == out.shape[-1]:
        return head
    return torch.cat([head, torch.full_like(out[:, n:], float("-inf"))], dim=-1)


def mask_words(vocab: int) -> int:
    """W, the int32 words of one position's bitmask over ``vocab`` tokens (llguidance's layout:
    token t is bit t % 32 of word t // 32)."""
    return (vocab + 31) // 32


def apply_masks_rows(logits: Tensor, bits: Tensor) -> Tensor:
    """``apply_masks`` for a round's rows on the device, with no host value in it (the model
    runner captures it in its round graphs): logits [R, T, V], bits [R, T, W] int32 -> logits
    [R, T, V] (same dtype) with every disallowed token at -inf. A position whose words are all -1
    is left as it was, so free rows ride along. Allowed logits keep their bits, so a greedy pick
    equals ``apply_masks``' (which works in float32: the cast is exact)."""
    token = torch.arange(logits.shape[-1], device=logits.device)  # [V]
    words = bits.index_select(-1, token // 32)  # [R, T, V] the word holding each token's bit
    allowed = (words >> (token % 32).to(torch.int32)) & 1  # the shift is arithmetic: & 1 keeps one bit
    return logits.masked_fill(allowed == 0, float("-inf"))


def masked_logits(logits: Tensor, mask: Tensor | None) -> Tensor:
    return logits if mask is None else apply_masks(logits, mask)


