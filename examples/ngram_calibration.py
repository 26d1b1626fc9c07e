"""How well the n-gram drafter's confidences predict survival, per draft position (CPU).

The default model, greedy, C eval prompts' first turns through a batch of 4 slots with every
drafted token verified (``schedule="full"``: the feedback does not depend on the confidences, so
both estimates below are judged on the very same rounds). Per verified draft token: the predicted
survival of its position (the product of the confidences up to it) and whether it survived, for

  per_position  the drafter's own confidences (P(d_j accepted | d_<j accepted), per match length)
  single_rate   one rate for every position, ``NgramDrafter.token_rate`` (survival c**j), the
                estimate the drafter used before per-position confidences

Printed as JSON: per position (tokens, mean predicted, observed) and by predicted-survival bin.

    python examples/ngram_calibration.py [--prompts 12] [--tokens 96] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agentspark import NgramDrafter, SamplingParams, load_model  # noqa: E402
from agentspark.batch import BatchEngine  # noqa: E402
from batch_bench import eval_prompts  # noqa: E402

ESTIMATES = ("per_position", "single_rate")


class RecordingNgram(NgramDrafter):
    """The n-gram drafter, recording (position, predicted survival per estimate, survived)."""

    def __init__(self, pairs: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pairs, self._pred = pairs, {}

    def sibling(self) -> RecordingNgram:
        return RecordingNgram(self.pairs, self.max_ngram, self.min_ngram)

    def propose(self, tokens, max_tokens):  # noqa: ANN001, ANN201
        draft = super().propose(tokens, max_tokens)
        rate = self.token_rate()
        own = single = 1.0
        self._pred = {"per_position": [], "single_rate": []}
        for c in draft.confidence_list():
            own, single = own * c, single * rate
            self._pred["per_position"].append(own)
            self._pred["single_rate"].append(single)
        return draft

    def feedback(self, verified: int, accepted: int) -> None:
        for j in range(verified):
            self.pairs.append((j + 1, {e: self._pred[e][j] for e in ESTIMATES}, j < accepted))
        super().feedback(verified, accepted)


def summarize(pairs: list, estimate: str) -> dict:
    positions = {}
    for j in sorted({p for p, _, _ in pairs}):
        at = [(pred[estimate], s) for p, pred, s in pairs if p == j]
        positions[str(j)] = {"tokens": len(at), "predicted": sum(p for p, _ in at) / len(at),
                             "observed": sum(s for _, s in at) / len(at)}
    bins = {}
    for _, pred, s in pairs:
        b = min(int(pred[estimate] * 5), 4)
        n, sp, ss = bins.get(b, (0, 0.0, 0))
        bins[b] = (n + 1, sp + pred[estimate], ss + s)
    return {"positions": positions,
            "bins": {f"{b / 5:.1f}-{(b + 1) / 5:.1f}": {"tokens": n, "predicted": sp / n, "observed": ss / n}
                     for b, (n, sp, ss) in sorted(bins.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    target = load_model("default")
    pairs: list = []
    engine = BatchEngine(target, RecordingNgram(pairs), slots=4, max_draft=7, schedule="full", reuse_prefix=False,
                         max_seq_len=1024)
    engine.generate_many(eval_prompts(target.tokenizer, args.prompts),
                         SamplingParams(max_new_tokens=args.tokens, temperature=0.0))
    res = {"command": "python examples/ngram_calibration.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "prompts": args.prompts, "tokens": args.tokens, "verified_tokens": len(pairs),
           **{e: summarize(pairs, e) for e in ESTIMATES}}
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
