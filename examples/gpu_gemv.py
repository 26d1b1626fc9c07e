"""GPU micro-benchmark of kernels/gemv.py against torch.matmul at the decode shapes (bf16, 1-16 rows).

For every projection of the Qwen3-8B shape (qkv 4096x6144, o 4096x4096, gate_up 4096x24576,
down 12288x4096, lm_head 4096x151936) and of the Qwen2.5-1.5B shape (qkv with its bias), and
M in (1, 2, 4, 9, 16) rows, it times torch.matmul(x [M, K], weight_t [K, N]) (LinearT's product;
+ bias as linear_t adds it) and our gemv over ``sweep_configs`` (the default and a few tilings).
Each timing is a CUDA graph of back-to-back launches (at least --launches), replayed --repeats
times and timed with CUDA events (median), so launch overhead does not dominate. The launches
cycle through copies of the weight totalling >= 256 MB, so no launch finds its weight in the
50 MB L2 (a decode step streams 16 GB of distinct weights: every read is cold).

Checked on the GPU, per config: row invariance (row i of an M-row call == row 0 of a 1-row call
of the same x row, bit for bit, every M) and closeness to float32 (and torch's, for comparison).
Reported: ms and TB/s (weight bytes / time) per (shape, M, config), the best config per (shape,
M), the best single config per shape over all M (what row invariance needs a runtime to fix), and
the 8B decode step's sum (36 layers of qkv + o + gate_up + down, plus lm_head) torch vs ours,
beside the weight-read floor at the measured copy bandwidth. One JSON object on stdout (and in
--out); progress on stderr. Budget: ~90 s on an H200, most of it Triton compiling ~30 variants.

    python3 examples/gpu_gemv.py --out $OUT/gpu_gemv_h200.json
    python3 examples/gpu_gemv.py --plan      # no GPU needed: the shapes, copies and configs
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

MODELS = {  # the projections' shapes only (the attention and norms are not products)
    "8b": dict(hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128, vocab=151936, layers=36, qkv_bias=False),
    "1.5b": dict(hidden=1536, intermediate=8960, heads=12, kv_heads=2, head_dim=128, vocab=151936, layers=28, qkv_bias=True),
}
PROJECTIONS = ("qkv", "o", "gate_up", "down", "lm_head")
ROTATE_BYTES = 256 << 20  # the weight copies a graph cycles through: ~5x the H100/H200 L2
MAX_ROWS = 16
DEVICE = "cuda"


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def load_gemv():
    """kernels/gemv.py of this checkout, as a package of its own (relative imports kept), whether or
    not agentspark is installed (``agentspark.kernels`` exists only through the install's mapping)."""
    name = "agentspark_kernels_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"{name}.gemv")


def projections(model: str) -> list[tuple[str, int, int, bool]]:
    """(name, K, N, has_bias) of one model shape's products, weight_t [K, N]."""
    m = MODELS[model]
    q, kv = m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    shapes = {
        "qkv": (m["hidden"], q + 2 * kv, m["qkv_bias"]),
        "o": (q, m["hidden"], False),
        "gate_up": (m["hidden"], 2 * m["intermediate"], False),
        "down": (m["intermediate"], m["hidden"], False),
        "lm_head": (m["hidden"], m["vocab"], False),
    }
    return [(p, *shapes[p]) for p in PROJECTIONS]


def plan(models: list[str], launches: int, gemv_mod) -> list[dict]:
    out = []
    for model in models:
        for proj, K, N, bias in projections(model):
            wbytes = 2 * K * N
            copies = max(1, math.ceil(ROTATE_BYTES / wbytes))
            out.append(dict(key=f"{model}.{proj}", model=model, proj=proj, K=K, N=N, bias=bias,
                            weight_mb=wbytes / 1e6, copies=copies, launches=max(launches, copies),
                            configs=[c.name for c in gemv_mod.sweep_configs(K, N)]))
    return out


def copy_bandwidth(gib: float = 2.0, reps: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (median), as examples/gpu_shapes.py."""
    n = int(gib * (1 << 30)) // 2
    a = torch.empty(n, device=DEVICE, dtype=torch.bfloat16).normal_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    return 2 * n * 2 / statistics.median(times)


def graph_ms(fn, weights: list[torch.Tensor], launches: int, repeats: int) -> float:
    """ms per launch of fn(weight): a CUDA graph of ``launches`` calls cycling over the weights."""
    side = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graph's docs ask
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for w in weights[:2]:
            fn(w)  # compiles (Triton) / sets up cuBLAS outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(launches):
            fn(weights[i % len(weights)])
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    del g
    return statistics.median(times) / launches


def row_checks(op, x16: torch.Tensor, ms: list[int], ref: torch.Tensor) -> dict:
    """Row i of an M-row call vs row 0 of a 1-row call of the same row (bitwise), and the error of
    the 16-row call against the float32 product, relative to its largest magnitude."""
    singles = torch.cat([op(x16[i : i + 1]) for i in range(MAX_ROWS)])  # [16, N]
    differing = {}
    for M in ms:
        out = op(x16[:M].contiguous())
        bad = (out != singles[:M]).any(dim=1).sum().item()
        if bad:
            differing[str(M)] = int(bad)
    full = op(x16).float()
    return {"row_invariant": not differing, "rows_differing_by_m": differing,
            "rel_err_vs_fp32": ((full - ref).abs().max() / ref.abs().max()).item()}


def bench_shape(item: dict, ms: list[int], repeats: int, gemv_mod, deadline: float) -> dict:
    K, N, launches = item["K"], item["N"], item["launches"]
    gen = torch.Generator(device=DEVICE).manual_seed(K * 7 + N)
    big = torch.empty(item["copies"], K, N, device=DEVICE, dtype=torch.bfloat16).normal_(0.0, 0.02, generator=gen)
    weights = [big[i] for i in range(item["copies"])]  # each [K, N] contiguous
    bias = (0.02 * torch.randn(N, device=DEVICE, generator=gen)).to(torch.bfloat16) if item["bias"] else None
    x16 = torch.randn(MAX_ROWS, K, device=DEVICE, generator=gen).to(torch.bfloat16)
    configs = gemv_mod.sweep_configs(K, N)
    wbytes = 2 * K * N

    def torch_op(x, w=weights[0]):
        out = torch.matmul(x, w)
        return out if bias is None else out + bias  # linear_t's order: two kernels, two roundings

    res: dict = {k: item[k] for k in ("K", "N", "bias", "weight_mb", "copies", "launches")}
    res["torch_op"] = "torch.matmul(x, w)" + (" + bias (a second kernel, as linear_t adds it)" if bias is not None else "")
    res["by_m"], res["skipped_configs"] = {}, []
    t0 = time.time()
    for M in ms:
        x = x16[:M].contiguous()
        row = {"torch_ms": graph_ms(lambda w: torch_op(x, w), weights, launches, repeats), "ours": {}}
        for cfg in configs:
            if cfg is not configs[0] and time.time() > deadline:
                res["skipped_configs"].append(f"M{M}:{cfg.name}")
                continue
            t = graph_ms(lambda w, c=cfg: gemv_mod.gemv(x, w, bias, config=c), weights, launches, repeats)
            row["ours"][cfg.name] = {"ms": t, "tb_s": wbytes / t / 1e9}
        row["torch_tb_s"] = wbytes / row["torch_ms"] / 1e9
        best = min(row["ours"], key=lambda n: row["ours"][n]["ms"])
        row.update(best=best, best_ms=row["ours"][best]["ms"], best_tb_s=row["ours"][best]["tb_s"],
                   default_ms=row["ours"][configs[0].name]["ms"], speedup_vs_torch=row["torch_ms"] / row["ours"][best]["ms"])
        res["by_m"][str(M)] = row
        log(f"  {item['key']:14s} M={M:2d} torch {row['torch_ms'] * 1e3:8.1f} us {row['torch_tb_s']:5.2f} TB/s | "
            f"best {best:16s} {row['best_ms'] * 1e3:8.1f} us {row['best_tb_s']:5.2f} TB/s")
    res["timing_s"] = time.time() - t0
    # one config for every M: the one with the least total time over the M's (all timed at every M)
    common = [c.name for c in configs if all(c.name in res["by_m"][str(M)]["ours"] for M in ms)]
    fixed = min(common, key=lambda n: sum(res["by_m"][str(M)]["ours"][n]["ms"] for M in ms))
    res["fixed_best"] = {"config": fixed, "ms_by_m": {str(M): res["by_m"][str(M)]["ours"][fixed]["ms"] for M in ms}}
    # checks on the first weight copy
    t0 = time.time()
    ref = x16.float() @ weights[0].float()  # [16, N] float32
    if bias is not None:
        ref += bias.float()
    res["checks"] = {"torch": row_checks(lambda x: torch_op(x), x16, ms, ref), "ours": {}}
    for cfg in configs:
        res["checks"]["ours"][cfg.name] = row_checks(
            lambda x, c=cfg: gemv_mod.gemv(x, weights[0], bias, config=c), x16, ms, ref)
    res["all_ours_row_invariant"] = all(c["row_invariant"] for c in res["checks"]["ours"].values())
    res["check_s"] = time.time() - t0
    return res


def step_totals(shapes: dict, model: str, ms: list[int], copy_bw: float) -> dict:
    """Sum over a decode step: layers x (qkv + o + gate_up + down) + lm_head, per M."""
    layers = MODELS[model]["layers"]
    count = {p: (1 if p == "lm_head" else layers) for p in PROJECTIONS}
    wbytes = sum(count[p] * 2 * K * N for p, K, N, _ in projections(model))
    out = {"weight_gb": wbytes / 1e9, "floor_ms_at_copy_bw": 1e3 * wbytes / copy_bw, "by_m": {}}
    for M in ms:
        rows = {p: shapes[f"{model}.{p}"]["by_m"][str(M)] for p in PROJECTIONS}
        t = sum(count[p] * rows[p]["torch_ms"] for p in PROJECTIONS)
        best = sum(count[p] * rows[p]["best_ms"] for p in PROJECTIONS)
        fixed = sum(count[p] * shapes[f"{model}.{p}"]["fixed_best"]["ms_by_m"][str(M)] for p in PROJECTIONS)
        default = sum(count[p] * rows[p]["default_ms"] for p in PROJECTIONS)
        out["by_m"][str(M)] = {"torch_ms": t, "ours_best_per_shape_and_m_ms": best, "ours_fixed_per_shape_ms": fixed,
                               "ours_default_ms": default, "torch_tb_s": wbytes / t / 1e9,
                               "ours_fixed_tb_s": wbytes / fixed / 1e9, "speedup_fixed_vs_torch": t / fixed}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="8b,1.5b", help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--rows", default="1,2,4,9,16", help="the M values (1..16)")
    ap.add_argument("--launches", type=int, default=20, help="launches per graph (more for small weights)")
    ap.add_argument("--repeats", type=int, default=5, help="graph replays timed (median)")
    ap.add_argument("--budget-s", type=float, default=80.0, help="past this, only the default config is timed")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--plan", action="store_true", help="print the shapes and configs and exit (no GPU needed)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    ms = sorted({int(v) for v in args.rows.split(",") if v})
    if not all(m in MODELS for m in models):
        ap.error(f"--models: unknown in {models}; known: {sorted(MODELS)}")
    if not all(1 <= m <= MAX_ROWS for m in ms):
        ap.error(f"--rows must lie in 1..{MAX_ROWS}, got {ms}")
    gemv_mod = load_gemv()
    items = plan(models, args.launches, gemv_mod)
    if args.plan:
        print(json.dumps({"rows": ms, "shapes": items}, indent=1))
        return 0
    if not torch.cuda.is_available():
        log("gpu_gemv.py: needs a CUDA device with Triton (run it on the GPU machine); --plan shows what it would time")
        return 2
    import triton

    start = time.time()
    deadline = start + args.budget_s
    props = torch.cuda.get_device_properties(0)
    res: dict = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
                 "triton": triton.__version__, "rows": ms, "launches_min": args.launches, "repeats": args.repeats}
    res["copy_tb_s"] = copy_bandwidth() / 1e12
    log(f"gpu_gemv: {props.name}, copy {res['copy_tb_s']:.2f} TB/s; {len(items)} shapes x {len(ms)} row counts")
    res["shapes"] = {}
    for item in items:
        log(f"[{time.time() - start:5.1f}s] {item['key']} K={item['K']} N={item['N']} "
            f"({item['weight_mb']:.1f} MB, {item['copies']} copies, {len(item['configs'])} configs)")
        res["shapes"][item["key"]] = bench_shape(item, ms, args.repeats, gemv_mod, deadline)
        torch.cuda.empty_cache()  # the shape's weights are gone with bench_shape's frame
    for model in models:
        res[f"step_{model}"] = step_totals(res["shapes"], model, ms, res["copy_tb_s"] * 1e12)
    res["all_ours_row_invariant"] = all(s["all_ours_row_invariant"] for s in res["shapes"].values())
    res["best_configs"] = {k: {M: s["by_m"][M]["best"] for M in s["by_m"]} | {"fixed": s["fixed_best"]["config"]}
                           for k, s in res["shapes"].items()}
    res["seconds"] = time.time() - start
    for model in models:
        for M, r in res[f"step_{model}"]["by_m"].items():
            log(f"step {model} M={M:>2s}: torch {r['torch_ms']:.3f} ms | ours (one config per shape) "
                f"{r['ours_fixed_per_shape_ms']:.3f} ms ({r['speedup_fixed_vs_torch']:.2f}x) | floor "
                f"{res[f'step_{model}']['floor_ms_at_copy_bw']:.3f} ms")
    log(f"row invariant (every config, every shape): {res['all_ours_row_invariant']}; {res['seconds']:.1f} s")
    text = json.dumps(res, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
