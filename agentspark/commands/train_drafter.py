"""``agentspark train-drafter``: regenerate responses with the target, train a DSpark/DFlash/EAGLE-3
drafter online, calibrate its confidence head (DSpark only) on a held-out split, export it
(training/pipeline.py). For eagle3, --block-size is the number of TTT steps (DeepSpec's ttt_length)
and --anchors and --markov-rank do not apply."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidRequestError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-drafter", help="train a learned drafter for a target (DSpark, DFlash, EAGLE-3)")
    p.add_argument("--target", default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--method", default="dspark", choices=["dspark", "dflash", "eagle3"])
    p.add_argument("--prompts", required=True, help="DIR or FILE.jsonl of {\"turns\": [...]} training prompts (never eval)")
    p.add_argument("--out", required=True, help="output directory (data/, checkpoint/, drafter/, report.json)")
    p.add_argument("--responses", default=None, help="reuse a samples.jsonl written by an earlier run")
    p.add_argument("--limit", type=int, default=None, help="use at most this many prompts")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="the target's dtype (default: bfloat16 on cuda, float32 on cpu)")
    g = p.add_argument_group("drafter shape")
    g.add_argument("--num-layers", type=int, default=1)
    g.add_argument("--num-features", type=int, default=3, help="how many target layers feed the context")
    g.add_argument("--block-size", type=int, default=7)
    g.add_argument("--markov-rank", type=int, default=32)
    g.add_argument("--draft-vocab", type=int, default=0, help="propose only the N most frequent response tokens (0 = all)")
    g.add_argument("--storage", default="bfloat16", choices=["float32", "bfloat16", "int8"])
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--anchors", type=int, default=64, help="blocks per sequence per step")
    t.add_argument("--max-length", type=int, default=1024)
    t.add_argument("--save-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--resume", action="store_true", help="continue from out/checkpoint")
    t.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds of training: after 20 steps the schedule is fitted into it (0 = run all --steps)")
    r = p.add_argument_group("regeneration (DeepSpec's defaults)")
    r.add_argument("--regen-temperature", type=float, default=0.7)
    r.add_argument("--regen-top-p", type=float, default=0.8)
    r.add_argument("--regen-top-k", type=int, default=20)
    r.add_argument("--regen-max-new-tokens", type=int, default=384)
    r.add_argument("--regen-batch-size", type=int, default=64)
    c = p.add_argument_group("calibration")
    c.add_argument("--held-out", type=float, default=0.05, help="fraction of samples kept for calibration")
    c.add_argument("--calibration-prompts", type=int, default=32)
    c.add_argument("--calibration-tokens", type=int, default=128)
    p.set_defaults(run=run)


@contextmanager
def _progress(label: str, total: int | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, info="")

        def advance(n: int, stats: dict | None = None) -> None:
            info = ""
            if stats:
                info = " ".join(f"{k} {stats[k]:.3f}" for k in ("loss", "ce", "l1", "conf", "acc", "tau") if k in stats)
            bar.update(task, advance=n, info=info)

        yield advance


def run(args: argparse.Namespace) -> int:
    from ..model.loading import load_model
    from ..training.data import RegenParams
    from ..training.pipeline import DrafterRecipe
    from ..training.pipeline import run as run_pipeline
    from ..training.trainer import TrainOptions

    for name in ("steps", "batch_size", "anchors", "max_length", "num_layers", "num_features", "block_size"):
        if getattr(args, name) < 1:
            raise InvalidRequestError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.held_out < 1:
        raise InvalidRequestError(f"--held-out must be in [0, 1), got {args.held_out}")
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    target = load_model(args.target, dtype=dtype, device=args.device)
    if target.tokenizer is None:
        raise InvalidRequestError("train-drafter needs a target with a tokenizer and a chat template")
    recipe = DrafterRecipe(
        method=args.method, num_layers=args.num_layers, num_features=args.num_features, block_size=args.block_size,
        markov_rank=args.markov_rank if args.method == "dspark" else 0, draft_vocab_size=args.draft_vocab,
        held_out=args.held_out, calibration_prompts=args.calibration_prompts,
        calibration_tokens=args.calibration_tokens, storage=args.storage,
        train=TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, num_anchors=args.anchors,
                           max_length=args.max_length, save_every=args.save_every, seed=args.seed,
                           time_budget_s=args.time_budget),
        regen=RegenParams(temperature=args.regen_temperature, top_p=args.regen_top_p, top_k=args.regen_top_k,
                          max_new_tokens=args.regen_max_new_tokens, batch_size=args.regen_batch_size, seed=args.seed),
    )
    report = run_pipeline(args.target, target, args.prompts, Path(args.out), recipe,
                          responses=Path(args.responses) if args.responses else None, limit=args.limit,
                          resume=args.resume, progress_factory=_progress)
    print(f"done in {report['total_s']:.0f} s: {report['drafter_bytes'] / 2**20:.2f} MiB at {Path(args.out) / 'drafter'}")
    return 0
