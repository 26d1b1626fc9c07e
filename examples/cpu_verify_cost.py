"""What a speculative verify costs on the CPU, in plain decoding steps (random float32 weights).

A Qwen2.5-0.5B-shaped decoder (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads,
head_dim 64, vocab 151,936, tied embeddings, qkv bias; or --shape 1.5b) with random weights
prefills --context tokens; then, interleaved and --reps times each, it times the row-invariant
forward of T = 1..9 tokens at the next position (what HostRunner runs: T = 1 is the plain
decoding step, T = l+1 the verify of l drafted tokens), the runner's whole rounds for T = 1 and
T = 9 (forward, probabilities and verifier), and for reference the one-token forward outside
row-invariant mode (numpy's gemv: the plain step's cost before row-invariant mode had to
match it). Each route of row-invariant matmuls (linear.ROW_KERNEL: "blocks", "rows") is timed in
the same loop. Each route is also checked for exactness on this shape: the logits of one
9-token verify forward equal those of 9 one-token steps bit for bit.

    python examples/cpu_verify_cost.py [--shape 0.5b] [--context 512] [--reps 7] [--threads 1]
                                       [--spinners 0] [--kernels blocks rows]

--threads sets linear.CPU_THREADS (the matmuls' threads); --spinners starts that many busy
Python processes for the duration (a loaded machine). Prints one JSON object: medians in ms,
T(t)/T(1) per route, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_shapes import SHAPES, random_model  # noqa: E402

from agentspark import SamplingParams  # noqa: E402
from agentspark.model import linear  # noqa: E402
from agentspark.model.config import DecoderConfig  # noqa: E402
from agentspark.model.runner import HostRunner, RowWork  # noqa: E402

QWEN_05B = dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1e6,
                max_position_embeddings=32768, qkv_bias=True, tie_word_embeddings=True)
CPU_SHAPES = {"0.5b": QWEN_05B, "1.5b": SHAPES["1.5b"]}
MAX_T = 9  # 1 + the engine's longest draft (ModelRunner.max_tokens)


def default_kernels() -> list[str]:
    """Every route this linear.py offers; "current" for a linear.py without routes (to time the
    code before them, e.g. from an older checkout on PYTHONPATH)."""
    kernel = getattr(linear, "ROW_KERNEL", None)
    return ["blocks", "rows"] if kernel == "blocks" else [kernel or "current"]


def use_kernel(kernel: str | None) -> None:
    if kernel not in (None, "current"):
        linear.ROW_KERNEL = kernel


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_case(runner: HostRunner, ids: torch.Tensor, start: int, T: int, row_invariant: bool):
    """One forward of T tokens at ``start`` (the cache holds [0, start)), as HostRunner runs it."""
    return lambda: runner.model(ids[:, :T], runner.cache, start, row_invariant=row_invariant)


def round_case(runner: HostRunner, tokens: list[int], start: int):
    """One HostRunner round (greedy): the forward, probs_from_logits and the verifier."""
    work = RowWork(0, start, tokens, SamplingParams(), None)
    return lambda: runner.round([work])


def verify_equals_plain(runner: HostRunner, ids: torch.Tensor, start: int) -> bool:
    """Bitwise: the 9-token verify forward's logits are those of 9 one-token steps."""
    model, cache = runner.model, runner.cache
    block = model(ids[:, :MAX_T], cache, start, row_invariant=True).logits  # [1, 9, V]
    steps = [model(ids[:, t : t + 1], cache, start + t, row_invariant=True).logits for t in range(MAX_T)]
    return bool(torch.equal(block, torch.cat(steps, dim=1)))


def measure(runner: HostRunner, ids: torch.Tensor, start: int, kernels: list[str], reps: int) -> dict:
    cases = {("gemv_step", None): forward_case(runner, ids, start, 1, False)}
    for kernel in kernels:
        for T in range(1, MAX_T + 1):
            cases[(kernel, f"forward_{T}")] = forward_case(runner, ids, start, T, True)
        cases[(kernel, "round_1")] = round_case(runner, ids[0, :1].tolist(), start)
        cases[(kernel, f"round_{MAX_T}")] = round_case(runner, ids[0, :MAX_T].tolist(), start)
    times: dict = {key: [] for key in cases}
    for rep in range(reps + 1):  # the first pass warms up (and packs the weights of "blocks")
        for (kernel, name), fn in cases.items():
            use_kernel(kernel)
            t = timed(fn)
            if rep:
                times[(kernel, name)].append(t)
    return {key: statistics.median(ts) * 1e3 for key, ts in times.items()}


def report(ms: dict, kernels: list[str], exact: dict) -> dict:
    gemv = ms[("gemv_step", None)]
    out: dict = {"gemv_step_ms": round(gemv, 1)}
    for kernel in kernels:
        one = ms[(kernel, "forward_1")]
        out[kernel] = {
            "exact_verify_equals_plain": exact[kernel],
            "forward_ms": {T: round(ms[(kernel, f"forward_{T}")], 1) for T in range(1, MAX_T + 1)},
            "T(t)/T(1)": {T: round(ms[(kernel, f"forward_{T}")] / one, 2) for T in range(1, MAX_T + 1)},
            "plain_step_vs_gemv_step": round(one / gemv, 2),
            "round_ms": {1: round(ms[(kernel, "round_1")], 1), MAX_T: round(ms[(kernel, f"round_{MAX_T}")], 1)},
            f"round_{MAX_T}/round_1": round(ms[(kernel, f"round_{MAX_T}")] / ms[(kernel, "round_1")], 2),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(CPU_SHAPES), default="0.5b")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=getattr(linear, "CPU_THREADS", None))
    ap.add_argument("--spinners", type=int, default=0, help="busy Python processes running meanwhile")
    ap.add_argument("--kernels", nargs="+", default=None, help="row-invariant routes (default: all available)")
    args = ap.parse_args()
    kernels = args.kernels or default_kernels()
    if args.threads is not None:
        linear.CPU_THREADS = args.threads
    torch.manual_seed(0)
    model = random_model(DecoderConfig(**CPU_SHAPES[args.shape]), device="cpu", dtype=torch.float32)
    runner = HostRunner(model, capacity=args.context + 2 * MAX_T)
    ids = torch.randint(0, model.cfg.vocab_size, (1, args.context + MAX_T))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spinners)]
    load_before = os.getloadavg()
    try:
        with torch.inference_mode(), linear.blas_owns_the_cores(model.embed.weight):  # as the engine runs
            prefill_s = timed(lambda: runner.prefill(0, ids[0, : args.context].tolist(), 0))
            verify_ids = ids[:, args.context :]
            exact = {}
            for kernel in kernels:
                use_kernel(kernel)
                exact[kernel] = verify_equals_plain(runner, verify_ids, args.context)
            ms = measure(runner, verify_ids, args.context, kernels, args.reps)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    result = {
        "shape": args.shape, "context": args.context, "reps": args.reps, "threads": args.threads,
        "spinners": args.spinners, "cpu": cpu_name(), "cores": os.cpu_count(),
        "torch": torch.__version__, "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()], "prefill_s": round(prefill_s, 2),
        **report(ms, kernels, exact),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
