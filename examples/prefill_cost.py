"""What exact mode's route a costs a prompt's prefill on the GPU: the device runner's chunked
prefill (graphs) of a P-token prompt in route a (row-invariant chunks: gemv products, decode
attention over the cache) against fast mode (cuBLAS products, SDPA over a key window), random
weights at the default model's and larger shapes. Prints one JSON object: medians of 7 timed
prefills after 2 warm-ups, and the ratio.

    python examples/prefill_cost.py --shapes 135m,1.5b,8b --tokens 128,512 --out prefill_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_shapes import SHAPES, random_model, shape_config  # noqa: E402


def time_prefill(model, exact: bool, tokens: int, capacity: int) -> float:  # noqa: ANN001
    from agentspark.model.graph_runner import DeviceRunner

    runner = DeviceRunner(model, graphs=True, exact=exact, exact_route="a" if exact else None, capacity=capacity,
                          slots=1, max_tokens=2)
    ids = torch.randint(0, model.cfg.vocab_size, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    times = []
    for k in range(9):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner.prefill(0, ids, 0)
        torch.cuda.synchronize()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    del runner
    torch.cuda.empty_cache()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="135m,1.5b,8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--tokens", default="128,512", help="prompt lengths")
    ap.add_argument("--capacity", type=int, default=2048)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for name in args.shapes.split(","):
        model = random_model(shape_config(name), device="cuda", dtype=torch.bfloat16)
        for tokens in (int(t) for t in args.tokens.split(",")):
            fast = time_prefill(model, False, tokens, args.capacity)
            exact = time_prefill(model, True, tokens, args.capacity)
            rows.append({"shape": name, "tokens": tokens, "fast_ms": fast * 1e3, "route_a_ms": exact * 1e3,
                         "route_a_over_fast": exact / fast})
            print(json.dumps(rows[-1]), flush=True)
        del model
        torch.cuda.empty_cache()
    result = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "capacity": args.capacity, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
