"""The GPU runtime benchmark: one script, one GPU call, every figure as JSON (GPU.md's rules).

Parts (``--parts``, comma-separated, run in this order):
  tests    pytest of the kernel, runner and GPU tests on the device (their output is committed)
  shapes   random-weight Qwen3-8B / Qwen2.5-1.5B / SmolLM2-135M shapes, bf16, batch 1, 512-token
           context: the weight-read floor (measured copy bandwidth), our plain decoding per token
           (engine, CUDA graphs), the same step eager, and the verify cost T(t)/T(1), t = 1..9
  profile  where an 8B-shape step's GPU time goes: the kernels of one eager forward_rows, by name
  hf       HF transformers generate with the static cache, compiled, at the same shapes
  default  the real default model: 20 eval prompts x 128 new tokens, greedy: plain, n-gram, the
           shipped DSpark drafter, auto; HF's static compiled generate beside them
  hostprofile  the auto engine's rounds under cProfile: where a speculative round's host time goes
  whatif   the speculative loop at the 8B shape replaying the acceptance recorded by ``default``'s
           auto run (costs real, acceptance real, weights random)
  agent    the demo's agent tasks: wall time with auto vs plain vs HF generate re-prefilling
  exact    exact mode (graph_runner.py), routes a and b: default-model greedy identity for n-gram,
           DSpark and auto against plain in the same mode, beside fast mode; plain and speculative
           tok/s of each; the plain cost at the 8B shape of each route
  exact_batch  route a under batching: 20 eval prompts through BatchEngine at 4 and 16 slots
           (plain, n-gram, DSpark, auto; adaptive schedule), each output against plain decoding of
           it alone; fast mode's count beside it (the control)

Every part but ``exact`` and ``exact_batch`` runs the engine in fast mode (``exact=False``: each forward at its own
size), the mode the runtime's speed figures were first taken in; those two measure both.

    PYTHONPATH=. python3 examples/gpu_runtime.py --parts shapes,hf,default,whatif,agent
Writes $OUT/gpu_runtime_h200.json (or ./gpu-out/) and prints a summary table last.
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
import traceback
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_shapes import HF_NAMES, copy_bandwidth, random_model, shape_config, weight_bytes_per_step  # noqa: E402

from agentspark import Engine, SamplingParams  # noqa: E402
from agentspark.model.loading import LoadedModel  # noqa: E402
from agentspark.model.runner import RowWork  # noqa: E402

CONTEXT = 512
NEW_TOKENS = 256
DEVICE = os.environ.get("AGENTSPARK_BENCH_DEVICE", "cuda")  # "cpu": a dry run of the default/agent parts
DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"


def median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def random_loaded(name: str) -> LoadedModel:
    return LoadedModel(random_model(shape_config(name)), tokenizer=None, source=f"random {name}")


def decode_ms_per_token(engine: Engine, prompt: list[int], new: int) -> dict:
    """Per-token time of plain decoding after prefill, as the engine runs it (host work included)."""
    engine.generate(prompt, SamplingParams(max_new_tokens=16), speculative=False)  # warm-up, graph capture
    r = engine.generate(prompt, SamplingParams(max_new_tokens=new), speculative=False)
    rounds = r.stats.rounds
    return {"ms_per_token": 1e3 * (r.stats.total_s - r.stats.prefill_s) / len(rounds),
            "median_round_ms": median_ms([x.verify_s for x in rounds]), "tokens": r.stats.new_tokens}


def verify_costs(engine: Engine, start: int, reps: int = 40) -> dict[str, float]:
    """Wall time of a greedy round of t tokens (fill, replay, the one sync), t = 1..9, interleaved."""
    g = torch.Generator().manual_seed(0)
    vocab = engine.model.cfg.vocab_size
    rows = {t: [RowWork(0, start, torch.randint(0, vocab, (t,), generator=g).tolist(), SamplingParams(), None)]
            for t in range(1, 10)}
    for t in rows:
        engine.runner.round(rows[t])
    times: dict[int, list[float]] = {t: [] for t in rows}
    for _ in range(reps):
        for t, r in rows.items():
            t0 = time.perf_counter()
            engine.runner.round(r)
            times[t].append(time.perf_counter() - t0)
    return {str(t): median_ms(v) for t, v in times.items()}


def graph_gpu_ms(engine: Engine, tokens: int = 1, reps: int = 50) -> float:
    """GPU time of one replay of the (1, tokens) greedy bucket, back to back (no host in between)."""
    runner = engine.runner
    key = next(k for k in runner.buckets if k.tokens == tokens and k.greedy and k.rows == 1)
    b = runner.buckets[key]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    b.graph.replay()
    start.record()
    for _ in range(reps):
        b.graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def part_shapes(res: dict, names: list[str]) -> None:
    bw = copy_bandwidth()
    res["copy_bandwidth_tb_s"] = bw / 1e12
    for name in names:
        loaded = random_loaded(name)
        prompt = torch.randint(0, loaded.config.vocab_size, (CONTEXT,), generator=torch.Generator().manual_seed(1)).tolist()
        floor_ms = 1e3 * weight_bytes_per_step(loaded.model) / bw
        graphs = Engine(loaded, max_seq_len=CONTEXT + NEW_TOKENS + 16, exact=False)
        plain = decode_ms_per_token(graphs, prompt, NEW_TOKENS)
        eager = decode_ms_per_token(Engine(loaded, max_seq_len=CONTEXT + 80, graphs=False), prompt, 64)
        costs = verify_costs(graphs, CONTEXT)
        entry = {
            "model": HF_NAMES[name], "weight_gb": weight_bytes_per_step(loaded.model) / 1e9, "floor_ms": floor_ms,
            "ms_per_token": plain["ms_per_token"], "median_round_ms": plain["median_round_ms"],
            "fraction_of_floor": floor_ms / plain["ms_per_token"],
            "graph_gpu_ms_t1": graph_gpu_ms(graphs, 1), "eager_ms_per_token": eager["ms_per_token"],
            "round_ms": costs, "verify_cost": {t: v / costs["1"] for t, v in costs.items()},
        }
        res[f"shape_{name}"] = entry
        print(f"[shapes] {name}: {json.dumps(entry)}", flush=True)
        del graphs, loaded
        torch.cuda.empty_cache()


def part_profile(res: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    loaded = random_loaded("8b")
    model = loaded.model
    out = {}
    for T in (1, 9):
        cache = model.new_cache(CONTEXT + 16, batch_size=2)
        ids = torch.randint(0, 1000, (1, T), device="cuda")
        slots, starts = torch.zeros(1, dtype=torch.long, device="cuda"), torch.full((1,), CONTEXT, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                model.forward_rows(ids, cache, slots, starts)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    model.forward_rows(ids, cache, slots, starts)
                torch.cuda.synchronize()
        rows = []
        total = 0.0
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
            if t <= 0:
                continue
            rows.append({"kernel": e.key[:90], "ms_per_step": t / 5 / 1e3, "calls_per_step": e.count / 5})
            total += t / 5 / 1e3
        rows.sort(key=lambda r: -r["ms_per_step"])
        out[f"t{T}"] = {"gpu_ms_per_step": total, "kernels": rows[:25]}
        print(f"[profile] 8b T={T}: {total:.3f} GPU ms/step; top: "
              + "; ".join(f"{r['kernel'][:40]} {r['ms_per_step']:.3f}" for r in rows[:6]), flush=True)
    res["profile_8b"] = out
    del loaded, model
    torch.cuda.empty_cache()


def part_micro(res: dict) -> None:
    """Choices the runtime makes, timed on their own (graph replays of 20 calls, CUDA events):
    decode attention's chunk size, and each 8B-shape matmul in the two weight layouts."""
    import triton.testing

    import agentspark.kernels.decode_attention as da
    from agentspark.model.runner import HostRunner

    out: dict = {"attention": {}, "matmul": {}}
    for name, (Hq, Hkv, D) in {"8b": (32, 8, 128), "135m": (9, 3, 64)}.items():
        for ctx in (512, 2048):
            k = torch.randn(2, Hkv, 4096, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            for T in (1, 9):
                q = torch.randn(1, T, Hq, D, device="cuda", dtype=torch.bfloat16)
                slots, starts = torch.zeros(1, dtype=torch.long, device="cuda"), torch.full((1,), ctx, device="cuda")
                for split in (64, 128, 256):
                    da.SPLIT = split
                    ms = triton.testing.do_bench(lambda: da.decode_attention(q, k, v, slots, starts), return_mode="median")
                    out["attention"][f"{name}_ctx{ctx}_T{T}_split{split}"] = ms * 1e3  # microseconds
        da.SPLIT = 256
    for (n_in, n_out), label in {(4096, 6144): "qkv", (4096, 4096): "o", (4096, 24576): "gate_up", (12288, 4096): "down",
                                 (4096, 151936): "lm_head"}.items():
        w_t = torch.randn(n_in, n_out, device="cuda", dtype=torch.bfloat16) * 0.02  # [in, out]
        w = w_t.t().contiguous()  # [out, in]
        for rows in (1, 9):
            x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16)
            a = triton.testing.do_bench(lambda: torch.matmul(x, w_t), return_mode="median")
            b = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w), return_mode="median")
            gb = n_in * n_out * 2 / 1e9
            out["matmul"][f"{label}_rows{rows}"] = {"in_out_us": a * 1e3, "out_in_us": b * 1e3,
                                                    "in_out_tb_s": gb / a, "out_in_tb_s": gb / b}
    print(f"[micro] {json.dumps(out)}", flush=True)
    # where the eager step's host time goes (the CPU side of one eager step, 135M shape)
    from torch.profiler import ProfilerActivity, profile

    loaded = random_loaded("135m")
    runner = HostRunner(loaded.model, capacity=600, max_tokens=9)
    runner.prefill(0, list(range(500)), 0)
    row = [RowWork(0, 500, [3], SamplingParams(), None)]
    with torch.inference_mode():
        for _ in range(3):
            runner.round(row)
        t0 = time.perf_counter()
        for _ in range(5):
            runner.round(row)
        eager_ms = (time.perf_counter() - t0) / 5 * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runner.round(row)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    out["eager_step_ms"] = eager_ms
    out["eager_step_cpu_ops"] = [{"op": e.key[:80], "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in ops]
    print(f"[micro] eager 135m step {eager_ms:.2f} ms; top CPU: " + "; ".join(f"{e.key[:30]} {e.self_cpu_time_total / 1e3:.2f}ms x{e.count}" for e in ops[:8]), flush=True)
    res["micro"] = out


def hf_config(name: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cfg = shape_config(name)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, rms_norm_eps=cfg.rms_norm_eps,
                  max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
                  rope_theta=cfg.rope_theta)
    if cfg.family == "qwen3":
        return Qwen3Config(head_dim=cfg.head_dim, **common)
    return (Qwen2Config if cfg.family == "qwen2" else LlamaConfig)(**common)


def hf_static_ms_per_token(hf, prompt: list[int], new: int) -> dict:
    """HF generate with the static cache (compiled on its first call), greedy, batch 1."""
    ids = torch.tensor([prompt], device="cuda")
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static",
              pad_token_id=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        hf.generate(ids, **kw)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, **kw)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with torch.inference_mode():  # one prefill, to take it out of the per-token figure
        for _ in range(2):
            hf(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        hf(ids)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
    total = min(times)
    return {"first_call_s": first, "total_s": total, "prefill_s": prefill, "new_tokens": out.shape[1] - len(prompt),
            "ms_per_token": 1e3 * (total - prefill) / new, "ms_per_token_incl_prefill": 1e3 * total / new}


def part_hf(res: dict, names: list[str]) -> None:
    from transformers import AutoModelForCausalLM

    for name in names:
        try:
            with torch.device("cuda"):
                hf = AutoModelForCausalLM.from_config(hf_config(name), dtype=torch.bfloat16).eval()
            prompt = torch.randint(0, 1000, (CONTEXT,), generator=torch.Generator().manual_seed(1)).tolist()
            entry = hf_static_ms_per_token(hf, prompt, NEW_TOKENS)
        except Exception as exc:  # a failed baseline is reported, the run goes on
            entry = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        res[f"hf_static_{name}"] = entry
        print(f"[hf] {name}: {json.dumps(entry)}", flush=True)
        hf = None
        torch._dynamo.reset()
        torch.cuda.empty_cache()


# ---- the real default model -------------------------------------------------------------------

def eval_prompts(tokenizer, n: int) -> list[list[int]]:
    from agentspark.commands.bench import _mixed
    from agentspark.datasets import load_prompts
    from agentspark.prompts import encode_prompt

    return [encode_prompt(tokenizer, [{"role": "user", "content": r.turns[0]}]) for r in _mixed(load_prompts(), n)]


class RecordingHybrid:
    """Wraps a drafter: records who drafted each round (for the what-if replay)."""

    def __init__(self, inner) -> None:
        self.inner, self.sources = inner, []
        for attr in ("name", "capture_layers"):
            setattr(self, attr, getattr(inner, attr))

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def propose(self, tokens, max_tokens):
        draft = self.inner.propose(tokens, max_tokens)
        src = getattr(self.inner, "source", None)
        self.sources.append("none" if src is None else src.name)
        return draft


def part_default(res: dict, n_prompts: int, new: int) -> dict:
    from agentspark.drafters.factory import build_drafter
    from agentspark.model.loading import load_model

    target = load_model("default", dtype=DTYPE, device=DEVICE)
    prompts = eval_prompts(target.tokenizer, n_prompts)
    params = SamplingParams(max_new_tokens=new)
    auto = RecordingHybrid(build_drafter("auto", target))
    engines = {"plain": Engine(target, exact=False), "ngram": Engine(target, build_drafter("ngram", target), exact=False),
               "dspark": Engine(target, build_drafter("default", target), exact=False),
               "auto": Engine(target, auto, exact=False)}
    for e in engines.values():
        if e.drafter is not None:
            e.steps_per_second()
        for n in (64, 20):  # both prefill chunk sizes (graph_runner.PREFILL_TOKENS) captured before timing
            e.generate(prompts[0][:n], SamplingParams(max_new_tokens=32), speculative=e.drafter is not None)
    auto.sources.clear()
    rows = {k: [] for k in engines}
    record = []  # (verified, accepted, source) per auto round
    for ids in prompts:
        ref = None
        for name, e in engines.items():
            r = e.generate(ids, params, speculative=e.drafter is not None)
            ref = r.token_ids if ref is None else ref
            st = r.stats
            decode_s = st.total_s - st.prefill_s
            rows[name].append({"tok_s": st.tokens_per_second, "decode_tok_s": (st.new_tokens - 1) / decode_s if decode_s > 0 else 0.0,
                               "prefill_ms": 1e3 * st.prefill_s, "identical": r.token_ids == ref, "tau": st.mean_accepted_length,
                               "drafted": sum(x.drafted for x in st.rounds), "verified": sum(x.verified for x in st.rounds),
                               "accepted": sum(x.accepted for x in st.rounds), "draft_ms": median_ms([x.draft_s for x in st.rounds]),
                               "verify_ms": median_ms([x.verify_s for x in st.rounds]), "new_tokens": st.new_tokens})
            if name == "auto":
                record += [(x.verified, x.accepted, src) for x, src in zip(st.rounds, auto.sources)]
                auto.sources.clear()
    summary = {}
    for name, rs in rows.items():
        summary[name] = {"tok_s": statistics.median(r["tok_s"] for r in rs), "identical": sum(r["identical"] for r in rs),
                         "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                         "prefill_ms": statistics.median(r["prefill_ms"] for r in rs),
                         "tau": sum(r["tau"] for r in rs) / len(rs),
                         "verified_fraction": sum(r["verified"] for r in rs) / max(1, sum(r["drafted"] for r in rs)),
                         "draft_ms": statistics.median(r["draft_ms"] for r in rs),
                         "verify_ms": statistics.median(r["verify_ms"] for r in rs)}
    plain_tok_s = summary["plain"]["tok_s"]
    ratios = [a["tok_s"] / p["tok_s"] for a, p in zip(rows["auto"], rows["plain"])]
    entry = {
        "plain_tok_s": plain_tok_s, "ngram_tok_s": summary["ngram"]["tok_s"], "dspark_tok_s": summary["dspark"]["tok_s"],
        "auto_tok_s": summary["auto"]["tok_s"], "auto_speedup": summary["auto"]["tok_s"] / plain_tok_s,
        "auto_speedup_median_per_prompt": statistics.median(ratios),
        "plain_decode_tok_s": summary["plain"]["decode_tok_s"], "auto_decode_tok_s": summary["auto"]["decode_tok_s"],
        "auto_decode_speedup": summary["auto"]["decode_tok_s"] / summary["plain"]["decode_tok_s"],
        "identical": min(summary[k]["identical"] for k in ("ngram", "dspark", "auto")), "prompts": len(prompts),
        "new_tokens": new, "summary": summary, "per_prompt": rows,
    }
    try:
        from transformers import AutoModelForCausalLM

        from agentspark.model.loading import resolve_folder

        if DEVICE != "cuda" or os.environ.get("AGENTSPARK_BENCH_SKIP_HF_DEFAULT"):
            raise RuntimeError("HF's static compiled generate on the default model: not timed in this run")
        hf = AutoModelForCausalLM.from_pretrained(str(resolve_folder("default")), dtype=torch.bfloat16).cuda().eval()
        hf_times = []
        for ids in prompts[:5]:
            hf_times.append(hf_static_ms_per_token(hf, ids, new))
        entry["hf_static_compiled_tok_s"] = statistics.median(1e3 / h["ms_per_token_incl_prefill"] for h in hf_times)
        entry["hf_static_first_call_s"] = hf_times[0]["first_call_s"]
        del hf
        torch._dynamo.reset()
    except Exception as exc:
        entry["hf_static_error"] = f"{type(exc).__name__}: {exc}"[:400]
    res["default_model"] = entry
    print(f"[default] {json.dumps({k: v for k, v in entry.items() if k not in ('per_prompt', 'summary')})}", flush=True)
    print(f"[default] summary {json.dumps(summary)}", flush=True)
    return {"record": record, "engines": engines, "target": target}


def part_hostprofile(res: dict, state: dict, n_prompts: int = 5, new: int = 128) -> None:
    """Where a speculative round's host time goes: the auto engine on a few eval prompts under
    cProfile (its overhead inflates every Python call alike, so read shares, not absolutes), next
    to the rounds' own draft/verify/other split without the profiler."""
    import cProfile
    import pstats

    engine, target = state["engines"]["auto"], state["target"]
    prompts = eval_prompts(target.tokenizer, n_prompts)
    params = SamplingParams(max_new_tokens=new)
    split = {"draft_s": 0.0, "verify_s": 0.0, "other_s": 0.0, "rounds": 0, "wall_s": 0.0}
    for ids in prompts:
        st = engine.generate(ids, params).stats
        split["rounds"] += len(st.rounds)
        split["wall_s"] += st.total_s - st.prefill_s
        for x in st.rounds:
            split["draft_s"] += x.draft_s
            split["verify_s"] += x.verify_s
            split["other_s"] += x.other_s
    rounds = max(1, split["rounds"])
    per_round = {k: 1e3 * split[k] / rounds for k in ("draft_s", "verify_s", "other_s", "wall_s")}
    prof = cProfile.Profile()
    prof.enable()
    for ids in prompts:
        engine.generate(ids, params)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}:{fn}", "calls": nc, "tottime_ms": 1e3 * tt, "cumtime_ms": 1e3 * ct})
    total = sum(r["tottime_ms"] for r in rows)
    top = sorted(rows, key=lambda r: -r["tottime_ms"])[:25]
    cum = sorted(rows, key=lambda r: -r["cumtime_ms"])[:30]
    res["host_profile"] = {"per_round_ms_unprofiled": per_round, "rounds": split["rounds"],
                           "profiled_total_ms": total, "top_tottime": top, "top_cumtime": cum}
    print(f"[hostprofile] per round (unprofiled) {json.dumps(per_round)}", flush=True)
    for r in top[:12]:
        print(f"[hostprofile] {r['tottime_ms']:8.1f} ms {r['calls']:7d}x {r['function']}", flush=True)


EXACT_MODES = (("exact_a", "a"), ("exact_b", "b"), ("fast", False))  # (name, Engine's exact)


def part_exact(res: dict, n_prompts: int, new: int, shape: str = "8b") -> None:
    """Exact mode (graph_runner.py), both routes: on the default model with its real weights, bf16
    greedy speculative output against plain decoding in the same mode, token for token, for
    n-gram, DSpark and auto, next to fast mode's count on the same prompts, with each engine's
    median tok/s; and the cost at the 8B shape, plain decoding ms per token per mode (random weights)."""
    from agentspark.drafters.factory import build_drafter
    from agentspark.model.loading import load_model

    target = load_model("default", dtype=DTYPE, device=DEVICE)
    prompts = eval_prompts(target.tokenizer, n_prompts)
    params = SamplingParams(max_new_tokens=new)
    out: dict = {"prompts": len(prompts), "new_tokens": new}
    for mode, exact in EXACT_MODES:
        plain = Engine(target, exact=exact)
        engines = {name: Engine(target, build_drafter(name, target), exact=exact) for name in ("ngram", "default", "auto")}
        for e in (plain, *engines.values()):
            if e.drafter is not None:
                e.steps_per_second()
            for n in (64, 20):
                e.generate(prompts[0][:n], SamplingParams(max_new_tokens=32), speculative=e.drafter is not None)
        refs, tok_s = [], {"plain": []}
        for ids in prompts:
            r = plain.generate(ids, params, speculative=False)
            refs.append(r.token_ids)
            tok_s["plain"].append(r.stats.tokens_per_second)
        identical = {}
        for name, e in engines.items():
            same, speeds = 0, []
            for ids, ref in zip(prompts, refs):
                r = e.generate(ids, params)
                same += r.token_ids == ref
                speeds.append(r.stats.tokens_per_second)
            identical[name] = same
            tok_s[name] = speeds
        out[mode] = {"runner": plain.runner.kind, "identical": identical,
                     "tok_s": {k: statistics.median(v) for k, v in tok_s.items()}}
        print(f"[exact] {mode}: {json.dumps(out[mode])}", flush=True)
        del plain, engines
        torch.cuda.empty_cache()
    out["identical"] = min(min(out[m]["identical"].values()) for m in ("exact_a", "exact_b"))
    loaded = random_loaded(shape)
    prompt = torch.randint(0, loaded.config.vocab_size, (CONTEXT,), generator=torch.Generator().manual_seed(1)).tolist()
    ms = {}
    for mode, exact in EXACT_MODES:
        engine = Engine(loaded, max_seq_len=CONTEXT + NEW_TOKENS + 16, exact=exact)
        ms[mode] = decode_ms_per_token(engine, prompt, NEW_TOKENS)["ms_per_token"]
        del engine
        torch.cuda.empty_cache()
    out[f"plain_{shape}_ms_per_token"] = ms
    # 1 - exact tok/s / fast tok/s, per route; speed_cost: the faster route's (the one used at batch 1)
    out["speed_cost_by_route"] = {m: 1.0 - ms["fast"] / ms[m] for m in ("exact_a", "exact_b")}
    out["faster_route"] = min(("exact_a", "exact_b"), key=lambda m: ms[m])[-1]
    out["speed_cost"] = min(out["speed_cost_by_route"].values())
    res["exact_mode"] = out
    print(f"[exact] {json.dumps({k: v for k, v in out.items() if k not in ('exact_a', 'exact_b', 'fast')})}", flush=True)
    del loaded
    torch.cuda.empty_cache()


def part_exact_batch(res: dict, n_prompts: int, new: int, slots: tuple[int, ...] = (4, 16)) -> None:
    """Route a under batching: every prompt's greedy output through BatchEngine (the adaptive
    schedule, no prefix reuse: each request computed from its own prefill) with 4 and 16 slots,
    for plain batched decoding, n-gram, DSpark and auto, against plain decoding of it alone (Engine,
    batch 1, the same mode); fast mode beside it, where cuBLAS sees each row bucket's shapes."""
    from agentspark.batch import BatchEngine
    from agentspark.drafters.factory import build_drafter
    from agentspark.model.loading import load_model

    target = load_model("default", dtype=DTYPE, device=DEVICE)
    prompts = eval_prompts(target.tokenizer, n_prompts)
    params = SamplingParams(max_new_tokens=new)
    out: dict = {"prompts": len(prompts), "new_tokens": new, "slots": list(slots)}
    for mode, exact in (("exact_a", "a"), ("fast", False)):
        alone = Engine(target, exact=exact)
        refs = [alone.generate(ids, params, speculative=False).token_ids for ids in prompts]
        del alone
        cells = {}
        for name in ("plain", "ngram", "default", "auto"):
            for n in slots:
                drafter = None if name == "plain" else build_drafter(name, target)
                batch = BatchEngine(target, drafter, slots=n, exact=exact, schedule="adaptive", reuse_prefix=False)
                batch.generate_many(prompts[:n], SamplingParams(max_new_tokens=16))  # graph captures
                t0 = time.perf_counter()
                results = batch.generate_many(prompts, params)
                wall = time.perf_counter() - t0
                same = sum(r.token_ids == ref for r, ref in zip(results, refs))
                cells[f"{name}@{n}"] = {"identical": same, "wall_s": wall,
                                        "tok_s": sum(len(r.token_ids) for r in results) / wall,
                                        "runner": batch.runner.kind}
                print(f"[exact_batch] {mode} {name}@{n}: {json.dumps(cells[f'{name}@{n}'])}", flush=True)
                del batch
                torch.cuda.empty_cache()
        out[mode] = cells
    out["identical"] = min(c["identical"] for c in out["exact_a"].values())
    res["exact_batch"] = out
    print(f"[exact_batch] identical in route a: {out['identical']}/{len(prompts)} in every cell", flush=True)


def part_whatif(res: dict, record: list[tuple[int, int, str]], shape: str = "8b") -> None:
    """Replays (verified l, accepted a, drafter) per round of the default model's auto run at the
    8B shape: every round runs a real verify of l+1 tokens through the graphs and pays its drafter's
    real cost at that shape (n-gram: its host lookup; DSpark: a random 8B-shaped DSpark drafter's
    propose); the round then commits a+1 tokens, as recorded."""
    from agentspark.drafters import NgramDrafter
    from agentspark.drafters.dspark import DSparkDrafter
    from agentspark.drafters.dspark_model import DSparkModel
    from agentspark.drafters.learned_config import LearnedDrafterConfig

    loaded = LoadedModel(random_model(shape_config(shape), device=DEVICE, dtype=getattr(torch, DTYPE)), None, shape)
    cfg8 = shape_config(shape)
    engine = Engine(loaded, max_seq_len=CONTEXT + 4096, exact=False)
    prompt = torch.randint(0, 1000, (CONTEXT,), generator=torch.Generator().manual_seed(2)).tolist()
    plain = decode_ms_per_token(engine, prompt, 128)
    dcfg = LearnedDrafterConfig(
        method="dspark", vocab_size=cfg8.vocab_size, hidden_size=cfg8.hidden_size, intermediate_size=cfg8.intermediate_size,
        num_heads=cfg8.num_heads, num_kv_heads=cfg8.num_kv_heads, head_dim=cfg8.head_dim, num_layers=1,
        target_layer_ids=(1, cfg8.num_layers // 2, cfg8.num_layers - 3), num_target_layers=cfg8.num_layers, rms_norm_eps=cfg8.rms_norm_eps,
        rope_theta=cfg8.rope_theta, max_position_embeddings=8192, block_size=8, markov_rank=32,
        enable_confidence_head=True, draft_vocab=tuple(range(32000)),
    )
    dmodel = DSparkModel(dcfg).to(DEVICE, getattr(torch, DTYPE)).eval().attach_target(loaded.model)
    dspark = DSparkDrafter(dmodel, capacity=8192)
    if DEVICE == "cuda":  # its graphs, as the engine binds them (features from a buffer of the right shape)
        from agentspark.drafters.base import DeviceSchedule

        features = torch.zeros(9, 3 * cfg8.hidden_size, device=DEVICE, dtype=getattr(torch, DTYPE))
        dspark.bind_device(features, DeviceSchedule("full", 0.0, torch.ones(9, device=DEVICE)))
    ngram = NgramDrafter()
    runner = engine.runner
    engine.generate(prompt, SamplingParams(max_new_tokens=2), speculative=False)  # prompt in the cache
    feats = torch.randn(1, CONTEXT, 3 * cfg8.hidden_size, device=DEVICE, dtype=getattr(torch, DTYPE))
    dspark.start(prompt, SamplingParams(), None)
    dspark.observe(feats[0], 0)
    seq = list(prompt)
    g = torch.Generator().manual_seed(3)
    for t in range(1, 10):  # capture every bucket and the drafter's graphs before the timed loop
        runner.round([RowWork(0, len(seq) - 1, [seq[-1]] + [1] * (t - 1), SamplingParams(), None)])
    dspark.length = len(seq) - 1
    dspark.propose(seq, 8)
    if dspark.device_drafting is not None:
        dspark.observe_round(len(seq) - 1, 1)
    runner.sync()
    t_total, tokens = 0.0, 0
    for verified, accepted, source in record[:1500]:
        t0 = time.perf_counter()
        if source == "default" or source == "dspark":
            dspark.length = len(seq) - 1
            draft = dspark.propose(seq, 8)  # a graph replay on CUDA (waited for by the round's sync)
            if dspark.device_drafting is not None:
                dspark.observe_round(len(seq) - 1, accepted + 1)
            else:
                draft.tokens.tolist()
        else:
            ngram.propose(seq, 8)
        d = torch.randint(0, 1000, (verified,), generator=g).tolist()
        runner.round([RowWork(0, len(seq) - 1, [seq[-1], *d], SamplingParams(), None)])
        t_total += time.perf_counter() - t0
        new = (d[:accepted] + [int(torch.randint(0, 1000, (1,), generator=g))])
        seq += new
        tokens += len(new)
        if len(seq) + 10 >= runner.capacity:
            break
    ms_per_token = 1e3 * t_total / tokens
    res[f"what_if_{shape}"] = {"tau": tokens / min(len(record), 1500), "speedup": plain["ms_per_token"] / ms_per_token,
                         "ms_per_token": ms_per_token, "plain_ms_per_token": plain["ms_per_token"], "rounds": min(len(record), 1500),
                         "what": "8B-shape random weights; per-round verified/accepted/drafter replayed from the default model's auto run"}
    print(f"[whatif] {json.dumps(res[f'what_if_{shape}'])}", flush=True)


class HFGenerateEngine:
    """What LocalBackend needs of an engine, served by HF transformers' generate: every round
    re-prefills the whole conversation (no session cache), greedy, stop strings by HF's own."""

    drafter = None

    def __init__(self, hf, tokenizer, eos: frozenset[int]) -> None:
        self.hf, self.tokenizer, self.eos = hf, tokenizer, sorted(eos)

    def reset(self) -> None:
        pass

    def stream(self, prompt_ids, params, *, speculative=False, reuse_cache=False):
        from agentspark.detokenize import TextTracker
        from agentspark.engine import GenerationResult, StreamChunk
        from agentspark.stats import RequestStats

        t0 = time.perf_counter()
        kw = dict(max_new_tokens=params.max_new_tokens, do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos[0])
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.hf.generate(torch.tensor([prompt_ids], device=DEVICE), **kw)[0, len(prompt_ids):].tolist()
        tracker, ids = TextTracker(self.tokenizer, params.stop), []
        for t in out:
            ids.append(t)
            tracker.push(t)
            if t in self.eos or tracker.stopped:
                break
        tracker.flush()
        stats = RequestStats(prompt_tokens=len(prompt_ids), new_tokens=len(ids), total_s=time.perf_counter() - t0,
                             finish_reason="stop" if (ids and (ids[-1] in self.eos or tracker.stopped)) else "length")
        yield StreamChunk(delta=tracker.text, token_ids=ids,
                          result=GenerationResult(text=tracker.text, token_ids=ids, prompt_ids=list(prompt_ids), stats=stats))


def part_agent(res: dict, state: dict, max_new: int = 64) -> None:
    """The demo's three tasks (five to six agent rounds) on the GPU, wall time end to end: ours with
    auto, ours plain, HF generate re-prefilling the conversation every round. Greedy throughout."""
    import tempfile

    from agentspark.agent.loop import Agent
    from agentspark.backends.local import LocalBackend
    from agentspark.commands.demo import NOTES, TASKS
    from agentspark.tools import calculator, make_file_tools

    target = state["target"]
    from transformers import AutoModelForCausalLM

    from agentspark.model.loading import resolve_folder

    hf = AutoModelForCausalLM.from_pretrained(str(resolve_folder("default")), dtype=getattr(torch, DTYPE)).to(DEVICE).eval()
    # Forced calls on the text path (constrain_tool_calls=False), for all three alike: HF generate
    # takes no grammar, so the tool-call grammar would leave it nothing to compare with (and the
    # recorded figures, README "Agent session", were measured on this path).
    forcing = {"close_forced_calls": True, "constrain_tool_calls": False}
    backends = {
        "auto": lambda: LocalBackend(state["engines"]["auto"], **forcing),
        "plain": lambda: LocalBackend(state["engines"]["plain"], speculative=False, **forcing),
        "hf_generate": lambda: LocalBackend(HFGenerateEngine(hf, target.tokenizer, target.eos_token_ids), speculative=False,
                                            **forcing),
    }
    workspace = Path(tempfile.mkdtemp(prefix="agentspark-gpu-agent-"))
    (workspace / "notes.txt").write_text(NOTES)
    out = {}
    answers = {}
    for rep in range(2):  # the first pass warms every path up; the second is timed
        for name, make in backends.items():
            backend = make()
            backend.reset()
            agent = Agent(backend, [calculator, *make_file_tools(workspace)], max_rounds=3,
                          system="You are a helpful assistant. Use the tools when asked.",
                          sampling=SamplingParams(max_new_tokens=max_new))
            t0 = time.perf_counter()
            rounds, texts = 0, []
            for task, choice in TASKS:
                result = agent.run(task, tool_choice=choice)
                rounds += len(result.rounds)
                texts.append(result.answer if hasattr(result, "answer") else str(result))
            wall_s = time.perf_counter() - t0
            if rep == 1:
                out[name] = {"wall_s": wall_s, "rounds": rounds}
                answers[name] = texts
    out["auto_vs_plain"] = out["plain"]["wall_s"] / out["auto"]["wall_s"]
    out["auto_vs_hf_generate"] = out["hf_generate"]["wall_s"] / out["auto"]["wall_s"]
    out["same_answers_auto_plain"] = answers["auto"] == answers["plain"]
    out["same_answers_hf_plain"] = answers["hf_generate"] == answers["plain"]
    res["agent_session"] = out
    print(f"[agent] {json.dumps(out)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="shapes,profile,default,hostprofile,whatif,agent,hf,micro,tests")
    ap.add_argument("--shapes", default="8b,1.5b,135m")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--whatif-shape", default="8b")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": "python3 examples/gpu_runtime.py " + " ".join(sys.argv[1:]),
                 "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
                 "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    try:
        import transformers
        import triton

        res["transformers"], res["triton"] = transformers.__version__, triton.__version__
    except Exception:
        pass
    parts = args.parts.split(",")
    shapes = args.shapes.split(",")
    state: dict = {}
    for part in parts:
        t0 = time.time()
        try:
            if part == "tests":
                proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "300",
                                       "tests/test_kernels.py", "tests/test_runner.py", "tests/test_gpu_runtime.py",
                                       "tests/test_gemv_kernel.py", "tests/test_row_invariant_kernels.py",
                                       "tests/test_route_a.py"],
                                      capture_output=True, text=True)
                (out_dir / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
                res["tests"] = {"exit": proc.returncode, "tail": proc.stdout[-1500:]}
                print(f"[tests] exit {proc.returncode}\n{proc.stdout[-2500:]}", flush=True)
            elif part == "shapes":
                part_shapes(res, shapes)
            elif part == "profile":
                part_profile(res)
            elif part == "micro":
                part_micro(res)
            elif part == "hf":
                part_hf(res, shapes)
            elif part == "default":
                state = part_default(res, args.prompts, args.new_tokens)
            elif part == "exact":
                part_exact(res, args.prompts, args.new_tokens)
            elif part == "exact_batch":
                part_exact_batch(res, args.prompts, args.new_tokens)
            elif part == "hostprofile":
                part_hostprofile(res, state)
            elif part == "whatif":
                part_whatif(res, state["record"], args.whatif_shape)
            elif part == "agent":
                part_agent(res, state)
            else:
                raise ValueError(f"unknown part {part}")
        except Exception:
            res[f"error_{part}"] = traceback.format_exc()[-3000:]
            print(f"[{part}] FAILED\n{res[f'error_{part}']}", flush=True)
        res.setdefault("part_seconds", {})[part] = time.time() - t0
        (out_dir / "gpu_runtime_h200.json").write_text(json.dumps(res, indent=1))
    print("\n==== summary ====")
    for name in shapes:
        s = res.get(f"shape_{name}")
        if s:
            print(f"{name:6s} floor {s['floor_ms']:.3f} ms | ours {s['ms_per_token']:.3f} ms/token ({100 * s['fraction_of_floor']:.0f}% of floor)"
                  f" | graph GPU {s['graph_gpu_ms_t1']:.3f} | eager {s['eager_ms_per_token']:.2f} | T9/T1 {s['verify_cost']['9']:.3f}")
    print("parts:", json.dumps(res.get("part_seconds")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
