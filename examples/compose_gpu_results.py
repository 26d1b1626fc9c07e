"""Compose examples/results/gpu_runtime_h200.json (the fixed field names README and the issue read)
from the device runs of examples/gpu_runtime.py kept under examples/results/gpu_runtime_runs/.

Each figure names the run and the commit it came from: run 7 ran every part in one call; runs 9
and 11 re-ran the parts whose code changed after it (the what-if's warm-up, the eager prefill),
each on the commit given. Nothing here is measured; it only selects and renames.

    python3 examples/compose_gpu_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "results" / "gpu_runtime_runs"
COMMITS = {"run7": "0cc5447", "run9": "fdbf1f6", "run11": "216bea1"}


def load(name: str) -> dict:
    return json.loads((RUNS / name).read_text())


def shape_fields(run: dict, name: str, hf: dict) -> tuple[dict, dict]:
    s = run[f"shape_{name}"]
    plain = {"ms_per_token": s["ms_per_token"], "floor_ms": s["floor_ms"], "fraction_of_floor": s["fraction_of_floor"],
             "hf_static_compiled_ms_per_token": hf.get("ms_per_token"), "graph_gpu_ms": s["graph_gpu_ms_t1"],
             "eager_ms_per_token": s["eager_ms_per_token"], "weight_gb": s["weight_gb"], "source": "run7"}
    return plain, {**{t: round(v, 4) for t, v in s["verify_cost"].items()}}


def main() -> None:
    r7, r9, r11 = load("run7_full.json"), load("run9_default_whatif_agent.json"), load("run11_default_agent.json")
    out: dict = {"device": r7["device"], "torch": r7["torch"], "triton": r7.get("triton"), "transformers": r7.get("transformers"),
                 "copy_bandwidth_tb_s": r7["copy_bandwidth_tb_s"], "commits": COMMITS,
                 "commands": {"run7": r7["command"], "run9": r9["command"] + "  (AGENTSPARK_BENCH_SKIP_HF_DEFAULT=1)",
                              "run11": r11["command"] + "  (AGENTSPARK_BENCH_SKIP_HF_DEFAULT=1)"}}
    for name in ("8b", "1.5b", "135m"):
        plain, verify = shape_fields(r7, name, r7.get(f"hf_static_{name}", {}))
        out[f"plain_{name}_shape"] = plain
        out[f"verify_cost_{name}_shape"] = verify
    d = r11["default_model"]
    out["default_model"] = {k: d[k] for k in ("plain_tok_s", "ngram_tok_s", "dspark_tok_s", "auto_tok_s", "auto_speedup",
                                              "auto_speedup_median_per_prompt", "plain_decode_tok_s", "auto_decode_tok_s",
                                              "auto_decode_speedup", "identical", "prompts", "new_tokens")}
    out["default_model"]["summary"] = d["summary"]
    out["default_model"]["hf_static_compiled_tok_s"] = r7["default_model"]["hf_static_compiled_tok_s"] if "default_model" in r7 else None
    out["default_model"]["source"] = "run11 (HF figure: run7)"
    w = r9["what_if_8b"]
    out["what_if_8b"] = {**w, "source": "run9"}
    out["agent_session"] = {**r11["agent_session"], "source": "run11"}
    out["profile_8b"] = {t: {"gpu_ms_per_step": p["gpu_ms_per_step"], "kernels": p["kernels"][:12]}
                         for t, p in r7["profile_8b"].items()}
    out["micro_matmul_8b"] = r7["micro"]["matmul"]
    out["gpu_tests"] = r7["tests"]["tail"].strip().splitlines()[-1]
    path = RUNS.parent / "gpu_runtime_h200.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("plain_", "verify_cost_8b", "default_model", "what_if", "agent"))}, indent=1)[:3500])


if __name__ == "__main__":
    main()
