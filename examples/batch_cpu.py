"""Concurrent requests on the CPU: the batch engine against the same requests one after another.

R eval prompts (first turns, chat template) x --new-tokens greedy tokens on the default model
(float32, CPU), plain and n-gram: wall time of ``Engine.generate`` for each in turn, then of one
``BatchEngine.generate_many`` with R slots; every batched output must equal its solo one. On the
CPU a batched round runs all rows of one length in one row-invariant forward
(``forward_host_rows``), reading the weights once for all of them.

    python examples/batch_cpu.py [--requests 4] [--new-tokens 64] [--repeats 3]

Prints one JSON object: per configuration the median wall times, the ratio, and identity.
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

from agentspark import BatchEngine, Engine, NgramDrafter, SamplingParams, load_model  # noqa: E402
from agentspark.commands.bench import _mixed  # noqa: E402
from agentspark.datasets import load_prompts  # noqa: E402
from agentspark.prompts import encode_prompt  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    target = load_model("default")
    prompts = [encode_prompt(target.tokenizer, [{"role": "user", "content": r.turns[0]}])
               for r in _mixed(load_prompts(), args.requests)]
    params = SamplingParams(max_new_tokens=args.new_tokens)
    out: dict = {"command": "python examples/batch_cpu.py " + " ".join(sys.argv[1:]), "requests": len(prompts),
                 "new_tokens": args.new_tokens, "machine": platform.processor() or platform.machine()}
    for name, drafter in (("plain", None), ("ngram", NgramDrafter)):
        solo = Engine(target, drafter() if drafter else None, max_draft=8, schedule="full")
        batch = BatchEngine(target, drafter, slots=len(prompts), max_draft=8, schedule="full")
        seq_s, batch_s, identical = [], [], 0
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            refs = [solo.generate(p, params, speculative=drafter is not None).token_ids for p in prompts]
            seq_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            got = [r.token_ids for r in batch.generate_many(prompts, params)]
            batch_s.append(time.perf_counter() - t0)
            identical = sum(a == b for a, b in zip(refs, got))
            print(f"[{name}] repeat {rep}: one after another {seq_s[-1]:.2f} s, batched {batch_s[-1]:.2f} s, "
                  f"identical {identical}/{len(prompts)}", file=sys.stderr, flush=True)
        tokens = sum(len(t) for t in refs)
        out[name] = {"sequential_s": statistics.median(seq_s), "batched_s": statistics.median(batch_s),
                     "speedup": statistics.median(seq_s) / statistics.median(batch_s), "identical": identical,
                     "tokens": tokens, "batched_tok_s": tokens / statistics.median(batch_s),
                     "sequential_tok_s": tokens / statistics.median(seq_s)}
    print(json.dumps(out, indent=1))
    return 0 if all(out[k]["identical"] == len(prompts) for k in ("plain", "ngram")) else 1


if __name__ == "__main__":
    sys.exit(main())
