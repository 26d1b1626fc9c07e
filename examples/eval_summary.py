"""τ per eval set and their mean, per drafter, from eval-drafter's --json files (one line each).

    python examples/eval_summary.py eval_gpu_10x256_T0.json [more.json ...]

The device calls print it so that the call's output already holds the figures.
"""

from __future__ import annotations

import collections
import json
import sys


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """drafter -> {dataset: τ}, in the file's order."""
    taus: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for r in rows:
        taus[r["drafter"]][r["dataset"]] = r["tau"]
    return dict(taus)


def main(paths: list[str]) -> int:
    for path in paths:
        try:
            with open(path) as f:
                rows = json.load(f)
        except OSError as e:
            print(f"{path}: {e.strerror}")
            continue
        for drafter, taus in summary(rows).items():
            sets = {k: round(v, 3) for k, v in taus.items()}
            print(path, drafter, sets, "mean", round(sum(taus.values()) / len(taus), 3))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
