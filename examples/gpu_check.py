"""One GPU call: correctness and speed of the engine on CUDA (the device tool runs this).

1. float32 and bfloat16 on CUDA: greedy n-gram speculative vs plain on eval prompts; every
   divergence is reported with the plain run's top-2 logit margin (DESIGN.md: acceptable only at a
   near-tie in non-invariant modes).
2. `agentspark bench` in bfloat16 on CUDA: ours plain / n-gram vs HF generate / prompt lookup.
Writes every figure as JSON under $OUT (or ./gpu-out).

    AGENTSPARK_DEFAULT_GGUF=/root/stage/SmolLM2-135M-Instruct.Q4_1.gguf python3 examples/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark import Engine, NgramDrafter, SamplingParams, load_model  # noqa: E402
from agentspark.datasets import load_prompts  # noqa: E402
from agentspark.divergence import first_divergence  # noqa: E402
from agentspark.prompts import encode_prompt  # noqa: E402

# Stated epsilon for a near-tie, in logits: bf16 logits of magnitude 16..32 are spaced 0.125 apart,
# so 0.5 is four representable steps. float32 on CUDA is held to the same rule.
NEAR_TIE = 0.5


def check_dtype(dtype: str, n_prompts: int, new_tokens: int, device: str) -> dict:
    target = load_model("default", dtype=dtype, device=device)
    plain, spec = Engine(target), Engine(target, NgramDrafter(), max_draft=8, schedule="full")
    records = load_prompts(limit=None)
    prompts = [encode_prompt(target.tokenizer, [{"role": "user", "content": r.turns[0]}]) for r in records][:n_prompts]
    params = SamplingParams(max_new_tokens=new_tokens)
    report = {"dtype": dtype, "prompts": len(prompts), "identical": 0, "divergences": []}
    for ids in prompts:
        a = plain.generate(ids, params, speculative=False)
        b = spec.generate(ids, params)
        d = first_divergence(target.model, ids, a.token_ids, b.token_ids)
        if d is None:
            report["identical"] += 1
        else:
            report["divergences"].append({**d.__dict__, "near_tie": d.is_near_tie(NEAR_TIE)})
    report["clear_margin_divergences"] = sum(not d["near_tie"] for d in report["divergences"])
    return report


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--check-prompts", type=int, default=None, help="prompts for the greedy check (default: --prompts)")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device, "torch": torch.__version__}
    t0 = time.time()
    for dtype in ("float32", "bfloat16"):
        results[f"greedy_{dtype}"] = check_dtype(dtype, args.check_prompts or args.prompts, args.new_tokens, args.device)
        print(json.dumps(results[f"greedy_{dtype}"]), flush=True)
    results["check_seconds"] = time.time() - t0
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1))
    if not args.skip_bench:
        from agentspark.cli import main as cli

        return cli(["bench", "--device", args.device, "--dtype", "bfloat16", "--num-prompts", str(args.prompts),
                    "--max-new-tokens", str(args.new_tokens), "--json-out", str(out_dir / "bench_cuda_bf16.json")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
