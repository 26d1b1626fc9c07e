"""``agentspark bench``: our plain, n-gram (and any ``--drafter``) speculative decoding against HF transformers'
``generate`` and ``generate(prompt_lookup_num_tokens=...)``, same model, same prompts, one run.

Greedy, batch 1. Every request is timed end to end (prefill included) after a warm-up; the table
shows per-configuration medians of tokens/s, ratios of medians, and how many outputs equal ours
plain token for token. Ours speculative must be identical on every prompt.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from ..drafters import NgramDrafter
from ..drafters.factory import build_drafter
from ..engine import Engine
from ..errors import ModelLoadError
from ..model.loading import load_model, resolve_folder
from ..prompts import encode_prompt
from ..sampling import SamplingParams


def register(sub: argparse._SubParsersAction) -> None:
    from .common import add_model_args, int_in, max_draft, output_file, sampling_value

    p = sub.add_parser("bench", help="tokens/s: ours (plain, n-gram) vs HF transformers, side by side")
    add_model_args(p)
    p.add_argument("--prompts", default=None, help="a .jsonl file or folder of {'turns': [...]} (default: bundled eval sample)")
    p.add_argument("--num-prompts", type=int_in(1), default=20, help="eval prompts to time (default: 20)")
    p.add_argument("--max-new-tokens", type=sampling_value("max_new_tokens"), default=128,
                   help="tokens generated per prompt (default: 128)")
    p.add_argument("--max-draft", type=max_draft, default=8, help="most tokens drafted per round (default: 8)")
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers baselines")
    p.add_argument("--drafter", action="append", default=[],
                   help="also bench this drafter (repeatable): default | learned:PATH | draft-model:PATH")
    p.add_argument("--json-out", type=output_file, default=None, help="also write every figure to this JSON file")
    p.set_defaults(run=run_bench)


def _mixed(records: list, n: int) -> list:
    """Round-robin over datasets so a short run still covers every kind of prompt."""
    by_set: dict[str, list] = {}
    for r in records:
        by_set.setdefault(r.dataset, []).append(r)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by_set.values()):
        out += [v[i] for v in by_set.values() if i < len(v)]
        i += 1
    return out[:n]


def _load_hf(source: str, dtype: torch.dtype):
    """The same weights through transformers, from safetensors only: a folder may also hold a
    pytorch_model.bin (or only one), and loading that would unpickle whatever is in it."""
    from transformers import AutoModelForCausalLM

    folder = resolve_folder(source)
    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
    except OSError as exc:  # transformers' way of saying "no model.safetensors here"
        raise ModelLoadError(f"HF transformers cannot load {folder} from safetensors ({exc}); "
                             "the HF baselines need a model.safetensors there, or pass --no-hf") from exc


def _hf_runner(source: str, dtype: torch.dtype, device: torch.device, eos: frozenset[int]):
    hf = _load_hf(source, dtype).to(device).eval()
    eos_ids = sorted(eos)

    def run(ids: list[int], max_new: int, lookup: int | None) -> tuple[list[int], float]:
        x = torch.tensor([ids], device=device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new, do_sample=False, eos_token_id=eos_ids, pad_token_id=eos_ids[0])
        if lookup:
            kwargs["prompt_lookup_num_tokens"] = lookup
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(x, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out[0, len(ids) :].tolist(), time.perf_counter() - t0

    return run


def run_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .common import checked_prompts

    console = Console(stderr=True)
    records = _mixed(checked_prompts(args.prompts), args.num_prompts)  # before the model loads: fail fast
    from .common import exact_of

    target = load_model(args.model, dtype=args.dtype, device=args.device)
    plain = Engine(target, None, max_draft=args.max_draft, exact=exact_of(args))
    spec = Engine(target, NgramDrafter(), max_draft=args.max_draft, exact=exact_of(args))
    spec.steps_per_second()  # profile once, outside the timed requests
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    prompts = [encode_prompt(target.tokenizer, [{"role": "user", "content": r.turns[0]}]) for r in records]

    configs: dict[str, Any] = {
        "ours plain": lambda ids: _ours(plain, ids, params),
        "ours n-gram": lambda ids: _ours(spec, ids, params),
    }
    for name in args.drafter:
        extra = Engine(target, build_drafter(name, target), max_draft=args.max_draft, exact=exact_of(args))
        extra.steps_per_second()
        configs[f"ours {name}"] = lambda ids, e=extra: _ours(e, ids, params)
    if not args.no_hf:
        hf = _hf_runner(args.model, target.model.dtype, target.model.device, target.eos_token_ids)
        configs["HF generate"] = lambda ids: hf(ids, args.max_new_tokens, None)
        configs["HF prompt lookup"] = lambda ids: hf(ids, args.max_new_tokens, args.max_draft)
    for run in configs.values():  # warm-up: allocator, kernels, caches
        run(prompts[0][:32])

    rows: dict[str, list[dict]] = {name: [] for name in configs}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(prompts) * len(configs))
        for rec, ids in zip(records, prompts):
            reference = None
            for name, run in configs.items():
                tokens, seconds, *extra = run(ids)
                reference = tokens if reference is None else reference
                rows[name].append(
                    {"dataset": rec.dataset, "new_tokens": len(tokens), "seconds": seconds,
                     "tokens_per_second": len(tokens) / seconds, "identical_to_ours_plain": tokens == reference,
                     **(extra[0] if extra else {})}
                )
                progress.advance(task)

    base = statistics.median(r["tokens_per_second"] for r in rows["ours plain"])
    hf_base = statistics.median(r["tokens_per_second"] for r in rows["HF generate"]) if "HF generate" in rows else None
    table = Table(title=f"{args.model} · {args.dtype} · {args.device} · {len(prompts)} prompts · {args.max_new_tokens} new tokens · greedy")
    for col in ("configuration", "median tok/s", "vs ours plain", "vs HF generate", "identical to ours plain", "mean τ"):
        table.add_column(col, justify="right" if col != "configuration" else "left")
    summary: dict[str, Any] = {}
    for name, rs in rows.items():
        med = statistics.median(r["tokens_per_second"] for r in rs)
        same = sum(r["identical_to_ours_plain"] for r in rs)
        taus = [r["tau"] for r in rs if "tau" in r]
        summary[name] = {"median_tokens_per_second": med, "vs_ours_plain": med / base,
                         "vs_hf_generate": med / hf_base if hf_base else None,
                         "identical_to_ours_plain": same, "prompts": len(rs),
                         "mean_tau": statistics.mean(taus) if taus else None}
        table.add_row(name, f"{med:.1f}", f"{med / base:.2f}x", f"{med / hf_base:.2f}x" if hf_base else "-",
                      f"{same}/{len(rs)}", f"{statistics.mean(taus):.2f}" if taus else "-")
    console.print(table)
    flags = []
    for k, v in vars(args).items():
        if k in ("command", "run") or v is None or v is False or v == []:
            continue
        flag = "--" + k.replace("_", "-")
        flags += [flag] if v is True else [f"{flag} {x}" for x in v] if isinstance(v, list) else [f"{flag} {v}"]
    out = {"command": "agentspark bench " + " ".join(flags),
           "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "device": str(target.model.device), "summary": summary, "per_prompt": rows}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps({"summary": summary}, indent=1))
    spec_ok = all(summary[n]["identical_to_ours_plain"] == len(prompts) for n in configs if n.startswith("ours "))
    return 0 if spec_ok else 1


def _ours(engine: Engine, ids: list[int], params: SamplingParams) -> tuple[list[int], float, dict]:
    result = engine.generate(ids, params)
    return result.token_ids, result.stats.total_s, {"tau": result.stats.mean_accepted_length}
