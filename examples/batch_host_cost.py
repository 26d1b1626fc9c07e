"""The batch engine's per-round host time on the CPU: fixed k = 3 against the adaptive schedule.

The H200 (run 39, C = 4, n-gram) had adaptive's rounds 0.07 ms dearer on the host than k3's at
the same tokens per round: drafting 7 tokens instead of 3, the Θ rule over them, the SPS table's
and DraftingRates' observations. The forward is not the point here (the CPU's is 10-100 ms), only
``engine.clock``'s host parts per round: ``draft_s`` (drafting, the schedule, the rows' inputs)
and ``commit_s`` (commits, feedback, the table's and the rates' observations), with ``runner_s``
beside them. The n-gram drafter, greedy, one fresh engine per repeat (the SPS table from the
cache after the first). ``--model tiny`` (the default): a random 2-layer qwen3 (hidden 64, vocab
96) on prompts of repeated motifs, whose forward costs about a millisecond whatever its tokens, as
the H200's does: its measured table makes adaptive draft and verify several tokens a round (the
regime of run 39). ``--sps h200`` (the default) schedules adaptive from run 39's H200 table of
the default model, fixed (the CPU's own rounds would otherwise make it the CPU's table, which
prices a padded draft token dear and keeps adaptive plain: then there is nothing of its host
cost to see; ``--sps measured`` does that). A fixed table skips its refreshes from the rounds
(SpsTable.observe and its refit once in 16: timed alone on this CPU, 1.6 us a round amortized at
32 sizes, 2.6 at 128), so those are not in adaptive's commit_s here. ``--model default``: SmolLM2-135M on eval prompts, whose CPU forward grows
steeply with its tokens, so adaptive's table has it skip drafting (a plain round's host time).

    python examples/batch_host_cost.py [--model tiny] [--concurrency 4,16] [--modes k3,adaptive]
        [--new-tokens 64] [--repeats 5] [--json PATH] [--profile N] [--sps-from JSON]

``--profile N``: cProfile one more adaptive pass at the first concurrency and print its N
costliest functions (by own time) to stderr. Prints one JSON object (and writes it to --json).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names

from agentspark import BatchEngine, NgramDrafter, SamplingParams, load_model  # noqa: E402
from agentspark.commands.bench import _mixed  # noqa: E402
from agentspark.datasets import load_prompts  # noqa: E402
from agentspark.prompts import encode_prompt  # noqa: E402
from agentspark.scheduler import SpsTable, _between  # noqa: E402

PARTS = ("draft_s", "commit_s", "runner_s")
HOST_CODE = r"batch\.py|scheduler\.py|drafting_rates\.py|drafters/|request\.py|stats\.py|sampling\.py|runner\.py:|\{"


def tiny_target():
    """A random qwen3 of 2 layers (hidden 64, vocab 96; tests/conftest.py's tiny models), no EOS."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from agentspark.model.config import DecoderConfig
    from agentspark.model.loading import LoadedModel
    from agentspark.model.weights import build_model

    cfg = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      rms_norm_eps=1e-6, head_dim=24, initializer_range=0.2)
    torch.manual_seed(3)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    ours = build_model(DecoderConfig.from_hf(hf.config.to_dict()), hf.state_dict())
    return LoadedModel(ours, tokenizer=None, source="tiny-host-cost", eos_token_ids=frozenset())


def tiny_prompts(n: int) -> list[list[int]]:
    """Repeated motifs of 3-5 tokens, 24-31 tokens long: the n-gram finds matches from the start."""
    g = torch.Generator().manual_seed(5)
    motifs = [torch.randint(8, 96, (3 + i % 3,), generator=g).tolist() for i in range(n)]
    return [(m * 10)[:24 + i % 8] for i, m in enumerate(motifs)]


_TABLES: dict[int, list[float]] = {}  # slots -> the SPS(B) table measured for them (the first adaptive engine)


RUN39 = Path(__file__).resolve().parent / "results" / "batch_h200" / "run39_batch_default_w1.json"


def h200_table(slots: int) -> list[float]:
    """Run 39's SPS(B) of the default model on the H200 at ``slots`` rows (its measured sizes,
    costs linear between them as SpsTable.measure interpolates): nearly flat up to 16 tokens."""
    runs = json.loads(RUN39.read_text())["models"]["default"]["concurrency"]
    if str(slots) not in runs:
        raise SystemExit(f"run 39 has no table at C = {slots} (it ran C = {', '.join(runs)}): use --sps measured")
    at = runs[str(slots)]["modes"]["adaptive"]
    low = {int(b): 1.0 / v for b, v in at["sps_measured_sizes"].items()}
    return [1.0 / (low[b] if b in low else _between(low, b)) for b in range(1, at["sps_len"] + 1)]


def make_engine(target, mode: str, slots: int, sps: str = "measured") -> BatchEngine:
    """k3: ``max_draft=3, schedule="full"``; adaptive: ``max_draft=7, schedule="adaptive"`` (as
    examples/batch_bench.py builds them). The tiny model has no file, so no SPS cache: its table
    is measured by the first adaptive engine of each C and every later one starts from it, as
    from a cached table (a table refreshed by its rounds, not a fixed one), so that the repeats
    (and the code before and after a change) schedule from one table."""
    kw = dict(slots=slots, reuse_prefix=False)
    if mode == "adaptive" and sps == "h200":  # fixed: the CPU's own rounds must not turn it into the CPU's
        return BatchEngine(target, NgramDrafter(), max_draft=7, schedule="adaptive", sps_table=h200_table(slots), **kw)
    if mode == "adaptive":
        if slots not in _TABLES:
            engine = BatchEngine(target, NgramDrafter(), max_draft=7, schedule="adaptive", **kw)
            _TABLES[slots] = engine.sps
            return engine
        engine = BatchEngine(target, NgramDrafter(), max_draft=7, schedule="adaptive", sps_table=_TABLES[slots], **kw)
        engine._table = SpsTable(_TABLES[slots], spikes=False)  # what sps_cache's hit gives (sps_table= is fixed)
        return engine
    if mode.startswith("k"):
        return BatchEngine(target, NgramDrafter(), max_draft=int(mode[1:]), schedule="full", **kw)
    raise ValueError(f"unknown mode {mode!r}: kN or adaptive")


def one_pass(target, mode: str, prompts: list[list[int]], params: SamplingParams,
             sps: str) -> tuple[dict, list[list[int]]]:
    """One fresh engine through every prompt at once: per-round microseconds of each clock part."""
    engine = make_engine(target, mode, len(prompts), sps)
    before = replace(engine.clock)
    outs = [r.token_ids for r in engine.generate_many(prompts, params)]
    split = engine.clock.since(before)  # per-round ms of each part (batch_bench.py records the same)
    fig = {f"{k}_us_per_round": 1e3 * split[f"{k}_ms_per_round"] for k in PARTS}
    fig["rounds"], fig["drafting_fraction"] = split["rounds"], split["drafting_fraction"]
    fig["tokens_per_round"] = sum(len(o) for o in outs) / max(1, split["rounds"]) / len(prompts)
    return fig, outs


def profile_pass(target, prompts, params, top: int, sps: str) -> str:
    prof = cProfile.Profile()
    engine = make_engine(target, "adaptive", len(prompts), sps)
    prof.enable()
    engine.generate_many(prompts, params)
    prof.disable()
    buf = io.StringIO()
    # the host's parts only (the forward's modules would fill the list)
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(HOST_CODE, top)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "default"), default="tiny")
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--modes", default="k3,adaptive")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", type=int, default=0)
    ap.add_argument("--sps", choices=("measured", "h200"), default="h200",
                    help="adaptive's SPS(B): run 39's H200 table (fixed; the default) or measured here")
    ap.add_argument("--sps-from", type=Path, help="start adaptive from the tables of an earlier run's JSON (its "
                    "sps_tables), to compare code before and after a change on one table")
    args = ap.parse_args()
    if args.sps_from:
        _TABLES.update({int(k): v for k, v in json.loads(args.sps_from.read_text())["sps_tables"].items()})
    if args.model == "tiny":
        target, prompts_of = tiny_target(), tiny_prompts
        model = "tiny random qwen3 (2 layers, hidden 64, vocab 96, float32, CPU), repeated-motif prompts"
    else:
        target, records = load_model("default"), load_prompts()
        model = "default (SmolLM2-135M, float32, CPU), eval prompts (first turns, chat template)"

        def prompts_of(n: int) -> list[list[int]]:
            return [encode_prompt(target.tokenizer, [{"role": "user", "content": r.turns[0]}])
                    for r in _mixed(records, n)]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
    out: dict = {"command": "python examples/batch_host_cost.py " + " ".join(sys.argv[1:]),
                 "model": model, "drafter": "ngram", "sampling": "greedy",
                 "new_tokens": args.new_tokens, "repeats": args.repeats, "sps": args.sps,
                 "sps_tables": _TABLES,
                 "machine": platform.processor() or platform.machine(), "results": {}}
    modes = args.modes.split(",")
    for c in map(int, args.concurrency.split(",")):
        prompts = prompts_of(c)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        outputs: dict[str, list[list[int]]] = {}
        for rep in range(args.repeats):
            for mode in modes:  # interleaved, so that a slow spell of the machine hits every mode
                fig, outputs[mode] = one_pass(target, mode, prompts, params, args.sps)
                runs[mode].append(fig)
                print(f"[C={c} {mode}] repeat {rep}: " + ", ".join(f"{k} {v:.1f}" for k, v in fig.items()),
                      file=sys.stderr, flush=True)
        per_c = {}
        for mode, figs in runs.items():
            per_c[mode] = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
            per_c[mode]["repeats"] = figs
        ref = outputs[modes[0]]
        per_c["identical_outputs"] = all(outputs[m] == ref for m in modes)  # greedy: every mode is plain decoding
        out["results"][str(c)] = per_c
    if args.profile:
        c = int(args.concurrency.split(",")[0])
        print(profile_pass(target, prompts_of(c), params, args.profile, args.sps), file=sys.stderr)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(v["identical_outputs"] for v in out["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
