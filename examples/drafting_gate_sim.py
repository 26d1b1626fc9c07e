"""DraftingRates (the batch engine's gate: draft this round or not) on synthetic one-row rounds whose
n-gram acceptance comes in bursts, shaped after run 35's 1.5B shape at C=1 on the H200.

The model: a plain round takes 1.82 ms. A drafting round takes 1.87 ms without a match and 1.94 ms
when a match is verified; each timing is scaled by a uniform 0.98-1.08. A match comes in 36% of
rounds and is accepted (3 tokens) only while the text is in a loop. The loop state persists
(each round it is redrawn with probability 0.2), so the text is in a loop about 12% of the time.
Drafting is then about 8% faster in expectation.

Per seed, the script reports the share of rounds 136-391 that drafted, with and without the
rounds' host time given to the gate:
- without it, the gate compares whole rounds (what it did in run 35);
- with it, drafting's host work (0.02 ms, about 1% of a round) makes it ``cheap``.

    python examples/drafting_gate_sim.py [--seeds 200]

The README cites its output: 47% of the runs mostly plain without the host time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark.drafting_rates import DraftingRates  # noqa: E402

PLAIN_S, DRAFT_S, VERIFY_S, HOST_S = 1.82e-3, 1.87e-3, 1.94e-3, 0.02e-3
MATCH, PERSIST, INTO_LOOP, ROUNDS = 0.36, 0.8, 0.139, 520


def share_drafting(seed: int, with_host: bool) -> float:
    rng, rates, loop, picks = random.Random(seed), DraftingRates(), False, []
    for _ in range(ROUNDS):
        if rng.random() > PERSIST:
            loop = rng.random() < INTO_LOOP if not loop else False
        drafted = rates.choose(1)
        picks.append(drafted)
        if drafted:
            match = rng.random() < MATCH
            tokens, seconds = 1 + (3 if match and loop else 0), (VERIFY_S if match else DRAFT_S)
        else:
            tokens, seconds = 1, PLAIN_S
        host = (HOST_S if drafted else 0.0) if with_host else None
        rates.observe(1, drafted, tokens, seconds * rng.uniform(0.98, 1.08), host_seconds=host)
    return sum(picks[136:392]) / 256


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    args = ap.parse_args(argv)
    for with_host in (False, True):
        shares = [share_drafting(s, with_host) for s in range(args.seeds)]
        label = "host time given (cheap)" if with_host else "whole rounds compared"
        print(f"{label:26s} median share of rounds drafting {statistics.median(shares):.2f}; "
              f"runs mostly plain {sum(x < 0.5 for x in shares) / len(shares):.0%} of {args.seeds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
