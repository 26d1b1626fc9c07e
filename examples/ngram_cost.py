"""What the n-gram lookup costs a round on the host (DESIGN.md: it stays there, under 0.1 ms).

The context is random token ids with repetitions, no tokenizer and no model: ids from SmolLM2's
vocabulary (49,152), half of them from 200 frequent ids (the commas and "the"s of real text), the
text made of fresh runs of 4-32 ids and of copies of earlier spans of 8-64 ids (an agent echoing
tool results and earlier turns). For each context length C: requests whose prompt is the first C
tokens of such a text, each generating 64 tokens in rounds as the engine runs them (propose 8
tokens, accept the leading ones that match the text's true continuation, commit those plus one),
until 2,000 rounds. Timed per round, each in its own pass over the same texts:
NgramDrafter.propose, HybridDrafter.propose (with a stub learned drafter that drafts nothing, so
what is timed is the lookup and the gate) and, for comparison, the old full scan that propose
ran before the index (NgramDrafter.lookup). Timed per request: NgramDrafter.start (index build).

    python examples/ngram_cost.py [--rounds 2000] [--contexts 512 2048 4096]

Prints one JSON object: microseconds, median and p99, per context length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from statistics import median

import torch

from agentspark import Draft, Drafter, HybridDrafter, NgramDrafter, SamplingParams

VOCAB = 49_152
FREQUENT = 200
MAX_DRAFT = 8
NEW_TOKENS = 64  # per request, as the demo's rounds


def make_text(rng: random.Random, length: int) -> list[int]:
    text: list[int] = []
    while len(text) < length:
        if len(text) > 64 and rng.random() < 0.5:  # a copy of an earlier span
            start = rng.randrange(len(text) - 8)
            text.extend(text[start : start + rng.randint(8, 64)])
        else:
            for _ in range(rng.randint(4, 32)):
                text.append(rng.randrange(FREQUENT) if rng.random() < 0.5 else rng.randrange(VOCAB))
    return text[:length]


class NoDraft(Drafter):
    """A learned drafter's stand-in that costs nothing: the hybrid's own overhead is what is left."""

    name = "none"

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        return Draft.empty(torch.device("cpu"))


def quantiles(ns: list[int]) -> dict[str, float]:
    us = sorted(x / 1000 for x in ns)
    return {"median": round(median(us), 2), "p99": round(us[int(0.99 * (len(us) - 1))], 2)}


def simulate(context: int, rounds: int, seed: int, drafter: Drafter, propose) -> dict[str, list[int]]:
    """Nanoseconds per ``propose(tokens, MAX_DRAFT)`` (-> draft token ids) over ``rounds`` rounds,
    and per ``drafter.start`` (one per request). The same seed gives the same texts, so every
    drafter is timed on the same work, each in its own pass (one's caches do not slow another)."""
    rng = random.Random(seed)
    times: dict[str, list[int]] = {"round": [], "start": [], "committed": []}
    params = SamplingParams()
    while len(times["round"]) < rounds:
        text = make_text(rng, context + NEW_TOKENS + MAX_DRAFT + 1)
        tokens = text[:context]  # grows in place, as the engine's committed sequence does
        t0 = time.perf_counter_ns()
        drafter.start(tokens, params, None)
        times["start"].append(time.perf_counter_ns() - t0)
        while len(tokens) < context + NEW_TOKENS and len(times["round"]) < rounds:
            t0 = time.perf_counter_ns()
            draft = propose(tokens, MAX_DRAFT)
            times["round"].append(time.perf_counter_ns() - t0)
            truth = text[len(tokens) : len(tokens) + MAX_DRAFT]
            accepted = 0
            for d, t in zip(draft, truth):
                if d != t:
                    break
                accepted += 1
            drafter.feedback(len(draft), accepted)
            tokens.extend(truth[: accepted + 1])
            times["committed"].append(accepted + 1)
    return times


def run(context: int, rounds: int, seed: int) -> dict:
    ngram, hybrid, scan = NgramDrafter(), HybridDrafter(NoDraft()), NgramDrafter()
    passes = {
        "ngram_propose_us": simulate(context, rounds, seed, ngram, lambda t, k: ngram.propose(t, k).tokens.tolist()),
        "hybrid_propose_us": simulate(context, rounds, seed, hybrid, lambda t, k: hybrid.propose(t, k).tokens.tolist()),
        "old_full_scan_us": simulate(context, rounds, seed, scan, lambda t, k: scan.lookup(t, k)[0]),
    }
    ngram_pass = passes["ngram_propose_us"]
    return {
        "context_tokens": context,
        "rounds": rounds,
        "requests": len(ngram_pass["start"]),
        "tau": round(sum(ngram_pass["committed"]) / rounds, 2),
        **{name: quantiles(p["round"]) for name, p in passes.items()},
        "start_index_build_us_median": round(median(ngram_pass["start"]) / 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [run(c, args.rounds, args.seed) for c in args.contexts]
    print(json.dumps({
        "context": "random ids with repetitions (no tokenizer): see the docstring",
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
