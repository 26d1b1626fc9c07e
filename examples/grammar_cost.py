"""xgrammar against llguidance on the CPU, for the default model's tokenizer: what constrained
decoding would cost per token, plainly and under speculation (issue 13 asks to pick by measurement).

For each library and each grammar (a tool call's arguments schema, a nested object schema, any
JSON): the compile time, then along a real JSON text (its tokens, as the model would produce it):
the setup per tokenizer, what a request pays before its first token (compile its schema, make its
matcher, its first mask), the time of one mask (the allowed-token bitmask at a state) and of one token's advance, and a
speculative round's grammar work: masks along a 7-token draft (7 advances and 8 masks) then a
rollback of the 7. Medians of every step along the text, repeated ``--repeats`` times.

    python examples/grammar_cost.py [--repeats 5]

Prints one JSON object (examples/results/grammar_cost.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

DRAFT = 7
GRAMMARS = {
    "tool_args": ({"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"],
                   "additionalProperties": False}, '{"expression": "1234 * 5678 + 91011"}'),
    "nested": ({"type": "object", "required": ["name", "age", "tags", "address"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                               "tags": {"type": "array", "items": {"type": "string"}},
                               "address": {"type": "object", "required": ["city", "zip"], "additionalProperties": False,
                                           "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}}},
               '{"name": "Dana Reyes", "age": 41, "tags": ["falcon", "budget", "owner"], '
               '"address": {"city": "Lyon", "zip": "69001"}}'),
    "any_json": (None, '{"project": "Falcon", "deadline": "2027-03-14", "budget": 12500, "ok": true}'),
}


def median_us(xs: list[float]) -> float:
    return 1e6 * statistics.median(xs)


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab: int) -> None:
        import xgrammar as xg

        self.xg = xg
        self.compiler = xg.GrammarCompiler(xg.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab),
                                           cache_enabled=False)
        self.mask = xg.allocate_token_bitmask(1, vocab)

    def compile(self, schema):
        return (self.compiler.compile_builtin_json_grammar() if schema is None
                else self.compiler.compile_json_schema(json.dumps(schema)))

    def matcher(self, compiled):
        return self.xg.GrammarMatcher(compiled)

    def fill(self, m) -> None:
        m.fill_next_token_bitmask(self.mask)

    def advance(self, m, token: int) -> bool:
        return m.accept_token(token)

    def rollback(self, m, n: int) -> None:
        m.rollback(n)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg, self.torch_ = llguidance, llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.mask = llguidance.torch.allocate_token_bitmask(1, self.tok.vocab_size)

    def compile(self, schema):
        text = self.llg.LLMatcher.grammar_from_json_schema(json.dumps(schema if schema is not None else {}))
        return text

    def matcher(self, compiled):
        return self.llg.LLMatcher(self.tok, compiled)

    def fill(self, m) -> None:
        self.torch_.fill_next_token_bitmask(m, self.mask, 0)

    def advance(self, m, token: int) -> bool:
        return m.consume_token(token)

    def rollback(self, m, n: int) -> None:
        m.rollback(n)


def measure(lib, tokenizer, repeats: int) -> dict:
    out = {}
    for name, (schema, text) in GRAMMARS.items():
        ids = tokenizer.encode(text, add_special_tokens=False)
        t0 = time.perf_counter()
        compiled = lib.compile(schema)
        compile_s = time.perf_counter() - t0
        starts = []  # what a request with its own schema pays before its first token
        for _ in range(repeats):
            t0 = time.perf_counter()
            lib.fill(lib.matcher(lib.compile(schema)))
            starts.append(time.perf_counter() - t0)
        masks, advances, rounds = [], [], []
        for _ in range(repeats):
            m = lib.matcher(compiled)
            for t in ids:
                t0 = time.perf_counter()
                lib.fill(m)
                t1 = time.perf_counter()
                ok = lib.advance(m, t)
                t2 = time.perf_counter()
                assert ok, f"{lib.name} refused token {t} of its own text ({name})"
                masks.append(t1 - t0)
                advances.append(t2 - t1)
            m = lib.matcher(compiled)
            for i in range(len(ids) - DRAFT):  # a round at every position: 8 masks, 7 advances, rollback 7
                t0 = time.perf_counter()
                for t in ids[i:i + DRAFT]:
                    lib.fill(m)
                    lib.advance(m, t)
                lib.fill(m)
                lib.rollback(m, DRAFT)
                rounds.append(time.perf_counter() - t0)
                lib.advance(m, ids[i])
        out[name] = {"tokens": len(ids), "compile_ms": 1e3 * compile_s,
                     "request_start_ms": 1e3 * statistics.median(starts), "mask_us": median_us(masks),
                     "advance_us": median_us(advances), "spec_round_us": median_us(rounds)}
        print(f"[{lib.name}] {name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from agentspark.model.loading import resolve_folder

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_folder("default")))
    vocab = len(tokenizer)
    res = {"command": "python examples/grammar_cost.py " + " ".join(sys.argv[1:]), "vocab": vocab,
           "machine": platform.processor() or platform.machine(), "draft": DRAFT}
    for cls in (XGrammar, LLGuidance):
        try:
            t0 = time.perf_counter()
            lib = cls(tokenizer, vocab)
            setup_s = time.perf_counter() - t0  # once per tokenizer and process
            res[cls.name] = {"setup_ms": 1e3 * setup_s, **measure(lib, tokenizer, args.repeats)}
        except Exception as exc:  # noqa: BLE001 (the other library is still measured)
            res[cls.name] = {"error": repr(exc)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
