"""``agentspark train-drafter``: regenerate responses with the target, train a DSpark/DFlash/EAGLE-3
drafter online, calibrate its confidence head (DSpark only) on a held-out split, export it
(training/pipeline.py). For eagle3, --block-size is the number of TTT steps (DeepSpec's ttt_length)
and --anchors and --markov-rank do not apply."""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidRequestError
from .common import checked_prompts, input_file, int_in, model_source, output_dir, real_in, sampling_value

_at_least_1 = int_in(1)
_at_least_0 = int_in(0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-drafter", help="train a learned drafter for a target (DSpark, DFlash, EAGLE-3)")
    p.add_argument("--target", type=model_source, default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--method", default="dspark", choices=["dspark", "dflash", "eagle3"],
                   help="the drafter's architecture (default: dspark)")
    p.add_argument("--prompts", required=True, help="DIR or FILE.jsonl of {\"turns\": [...]} training prompts (never eval)")
    p.add_argument("--out", required=True, help="output directory (data/, checkpoint/, drafter/, report.json)")
    p.add_argument("--responses", default=None, help="reuse a samples.jsonl written by an earlier run")
    p.add_argument("--limit", type=_at_least_1, default=None, help="use at most this many prompts")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="the target's dtype (default: bfloat16 on cuda, float32 on cpu)")
    g = p.add_argument_group("drafter shape")
    g.add_argument("--num-layers", type=_at_least_1, default=1, help="draft layers (default: 1)")
    g.add_argument("--num-features", type=_at_least_1, default=3, help="how many target layers feed the context")
    g.add_argument("--block-size", type=_at_least_1, default=7, help="tokens drafted per block (default: 7)")
    g.add_argument("--markov-rank", type=_at_least_0, default=32, help="rank of the Markov head (0: none, DFlash; default: 32)")
    g.add_argument("--draft-vocab", type=_at_least_0, default=0, help="propose only the N most frequent response tokens (0 = all)")
    g.add_argument("--storage", default="bfloat16", choices=["float32", "bfloat16", "int8"],
                   help="how the checkpoint stores the weights (default: bfloat16)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=_at_least_1, default=2000, help="optimizer steps (default: 2000)")
    t.add_argument("--batch-size", type=_at_least_1, default=8, help="sequences per step (default: 8)")
    t.add_argument("--lr", type=real_in(0.0, open_low=True), default=6e-4, help="peak learning rate (default: 6e-4)")
    t.add_argument("--anchors", type=_at_least_1, default=64, help="blocks per sequence per step")
    t.add_argument("--max-length", type=_at_least_1, default=1024, help="tokens per training sequence, at most (default: 1024)")
    t.add_argument("--save-every", type=_at_least_0, default=500, help="checkpoint every N steps (0 = only at the end)")
    t.add_argument("--seed", type=sampling_value("seed"), default=42, help="seed of the data order and init (default: 42)")
    t.add_argument("--resume", action="store_true", help="continue from out/checkpoint")
    t.add_argument("--time-budget", type=real_in(0.0), default=0.0,
                   help="seconds of training: the schedule (at most --steps) is fitted into it at the pace of "
                        "steps 21-60 and re-fitted at steps 120, 240, 480, ... from the pace since the previous "
                        "fit, until half the schedule (each fit moves the cosine learning rate a little); "
                        "the last fit is saved, so --resume continues it (0 = run all --steps)")
    t.add_argument("--stop-after", type=real_in(0.0), default=0.0,
                   help="stop at the first step boundary this many seconds after the command started, save the "
                        "checkpoint and leave the schedule of --steps intact; a later --resume run continues it "
                        "(0 = no limit; not with --time-budget)")
    t.add_argument("--stop-at-step", type=_at_least_0, default=0,
                   help="stop once this many steps of the schedule are done, as --stop-after does (0 = no limit)")
    t.add_argument("--eval-samples", type=_at_least_0, default=32,
                   help="held-out samples scored at every checkpoint, into report.json (default: 32)")
    a = p.add_argument_group("agent sessions (training data from the target in our agent loop)")
    a.add_argument("--agent-sessions", type=_at_least_0, default=0,
                   help="run N agent sessions (calculator, read_file, list_dir over note files; tasks from templates "
                        "and --prompts) with the target and train on them too; saved as out/data/agent_samples.jsonl "
                        "and reused by later runs (default: 0)")
    a.add_argument("--agent-slots", type=_at_least_0, default=0,
                   help="sessions at once through one batch engine (0 = 1 on cpu, 16 on cuda)")
    a.add_argument("--agent-max-new-tokens", type=sampling_value("max_new_tokens"), default=160,
                   help="tokens per model request of a session, at most (default: 160)")
    r = p.add_argument_group("regeneration (DeepSpec's defaults)")
    # regeneration samples (transformers' do_sample), so its temperature must be > 0
    r.add_argument("--regen-temperature", type=sampling_value("temperature", positive=True), default=0.7,
                   help="sampling temperature of the regenerated answers (default: 0.7)")
    r.add_argument("--regen-top-p", type=sampling_value("top_p"), default=0.8, help="their top-p (default: 0.8)")
    r.add_argument("--regen-top-k", type=sampling_value("top_k"), default=20, help="their top-k (default: 20)")
    r.add_argument("--regen-max-new-tokens", type=sampling_value("max_new_tokens"), default=384,
                   help="their length, at most (default: 384)")
    r.add_argument("--regen-batch-size", type=_at_least_1, default=64, help="answers regenerated at once (default: 64)")
    r.add_argument("--regen-answers", type=_at_least_1, default=1,
                   help="sampled answers per prompt, each its own draw (default: 1)")
    r.add_argument("--regen-greedy", action="store_true",
                   help="also one greedy answer per prompt (what greedy decoding meets; default: off)")
    r.add_argument("--chat-prompts", type=_at_least_0, default=0,
                   help="have the target write N chat requests itself (sampled after its chat template's user-turn "
                        "header: T 1.0, top-p 0.95, at most 96 tokens; kept if it closed the turn, is 16+ characters, "
                        "new and free of chat markup) and answer them like --prompts, into the training mix; saved "
                        "as out/data/chat_prompts.jsonl and chat_samples.jsonl and reused by later runs (default: 0)")
    c = p.add_argument_group("calibration")
    c.add_argument("--held-out", type=real_in(0.0, 1.0, open_high=True), default=0.05,
                   help="fraction of samples kept for calibration, in [0, 1)")
    c.add_argument("--calibration-prompts", type=_at_least_1, default=32, help="(--held-out 0: no calibration)")
    c.add_argument("--calibration-tokens", type=sampling_value("max_new_tokens"), default=128,
                   help="tokens generated per calibration prompt (default: 128)")
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


def _check_paths(args: argparse.Namespace) -> None:
    """The files and folders first: each mistake here would otherwise surface only after the
    target has loaded (minutes on a large one), or as a crash."""
    from ..training.agent_data import refuse_eval_prompts
    from ..training.data import has_samples

    out = Path(args.out)
    if args.time_budget and (args.stop_after or args.stop_at_step):
        raise InvalidRequestError("--time-budget shrinks the schedule; --stop-after and --stop-at-step keep it for a "
                                  "later --resume: choose one")
    if args.responses:
        input_file(args.responses, "--responses")
    elif not has_samples(out / "data" / "samples.jsonl"):  # prompts are read only when no samples are reused
        checked_prompts(args.prompts)
    if args.agent_sessions and not has_samples(out / "data" / "agent_samples.jsonl"):
        checked_prompts(args.prompts)
        refuse_eval_prompts(args.prompts)
    output_dir(out, "--out")  # last: a mistake above leaves no empty folder behind


def run(args: argparse.Namespace) -> int:
    from ..model.loading import load_model
    from ..training.agent_data import AgentDataParams
    from ..training.chat_prompts import ChatPromptParams
    from ..training.data import RegenParams
    from ..training.pipeline import DrafterRecipe
    from ..training.pipeline import run as run_pipeline
    from ..training.trainer import TrainOptions

    started = time.perf_counter()  # --stop-after counts the target's loading too: the device call's clock
    _check_paths(args)
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
                           time_budget_s=args.time_budget, stop_after_s=args.stop_after,
                           stop_at_step=args.stop_at_step, eval_samples=args.eval_samples),
        regen=RegenParams(temperature=args.regen_temperature, top_p=args.regen_top_p, top_k=args.regen_top_k,
                          max_new_tokens=args.regen_max_new_tokens, batch_size=args.regen_batch_size, seed=args.seed,
                          answers=args.regen_answers, greedy=args.regen_greedy),
        agent=AgentDataParams(sessions=args.agent_sessions, temperature=args.regen_temperature, top_p=args.regen_top_p,
                              top_k=args.regen_top_k, max_new_tokens=args.agent_max_new_tokens, seed=args.seed,
                              slots=args.agent_slots or (16 if args.device.startswith("cuda") else 1)),
        chat=ChatPromptParams(prompts=args.chat_prompts, batch_size=args.regen_batch_size, seed=args.seed),
    )
    report = run_pipeline(args.target, target, args.prompts, Path(args.out), recipe,
                          responses=Path(args.responses) if args.responses else None, limit=args.limit,
                          resume=args.resume, progress_factory=_progress,
                          clock_start=started)
    if report["finished"]:
        print(f"done in {report['total_s']:.0f} s: {report['drafter_bytes'] / 2**20:.2f} MiB at {Path(args.out) / 'drafter'}")
    else:
        print(f"stopped after {report['total_s']:.0f} s at step {report['next_step']} of {report['steps']}: "
              f"resume with --resume (the checkpoint is {Path(args.out) / 'checkpoint'})")
    return 0
