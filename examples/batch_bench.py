"""Batched serving (issue 11): throughput and latency of BatchEngine at C concurrent requests,
plain decoding against fixed verification lengths and the adaptive schedule.

For each model (``--models``), each concurrency C (``--concurrency``) and each mode (``--modes``):

  plain     ``BatchEngine(target, None, slots=C, max_draft=0)``: speculative decoding off (no
            draft ever comes; max_draft=0 keeps exact mode from padding its steps to 9 tokens)
  plainN    the same with max_draft=N: with ``--exact`` every step runs at N+1 tokens per row, the
            shape kN's rounds run at (plain7: adaptive's), which exact mode's identity is about
  k1 k3 k7  the drafter with a fixed verified length: ``max_draft=N, schedule="full"``
  adaptive  ``max_draft=7, schedule="adaptive"``: lengths chosen together over SPS(B), the table
            the engine measures (or takes from its cache) in its constructor
  M/sync    mode M with each admission's first token read at admission, through its own host sync
            (``first_token_in_round=False``, the CPU's way), where the CUDA graph runner otherwise
            takes it from the next round (batch.py, "Admission"); per C, ``round_admission_vs_sync``
            sets M against M/sync

C x W requests are submitted at once to an engine of C slots (W = ``--waves``), greedy,
``--new-tokens`` each: C run, the rest wait in the engine's queue and each joins in the round after
a slot frees (continuous batching), so W > 1 is what a server sees under a steady load of C clients
(vLLM's benchmark with ``--max-concurrency C`` and more prompts than C), and W = 1 one burst of C,
whose wall time is its slowest request's. Every engine first serves the first C prompts for a few tokens (prefill chunks and round graphs captured, the
drafters' code paths warm) and, on CUDA, replays every round shape it can meet once, so no graph
capture is timed. Then every mode of a C is timed ``--repeats`` times, the modes alternating, and
each mode's median pass is reported (``tok_s_passes`` lists them all: one pass of 128 tokens is a
fraction of a second on the H200, where two runs of one cell differed by 25%). An engine keeps
what it learnt in earlier passes (adaptive's drafting rates, its SPS table), as a server would.
Per (C, mode): wall seconds from the first submit until the engine is idle,
aggregate tok/s (every new token over that wall time), latency p50/p99 per request (from submit to
the end of the round that finished it, the client's view with W = 1; the request's own
``stats.total_s``, from its admission, beside it: the client's view of a steady load, W > 1), tau (tokens committed per round), draft tokens verified per round,
and greedy identity: outputs equal to plain decoding at the same C (``identical``, against plainN
of the mode's own max_draft where that ran, else plain: ``identical_vs``) and to plain decoding of
each prompt alone (``identical_to_solo``: one slot, one request at a time). Per C: the best fixed
k, adaptive over it and over plain.

Models: ``default`` (the real default model, eval prompts' first turns through its chat template,
cycled when C exceeds them, with ``--drafter``); on CUDA also ``1.5b`` and ``8b``, random-weight
shapes (examples/gpu_shapes.py) with the n-gram drafter and random prompts of repeated motifs: their
figures are costs only (random weights accept whatever repeats, not what a real model would).

Requests are prefilled whole (``reuse_prefix=False``): the warm-up leaves each slot holding a
prompt the timed pass sends again, which prefix reuse would skip.

    python examples/batch_bench.py [--concurrency 1,4,16,64] [--modes plain,k1,k3,k7,adaptive]
        [--drafter ngram|auto|default] [--new-tokens N] [--waves W] [--models default[,1.5b,8b]] [--exact]
        [--time-limit-s S] [--quick] [--out PATH]
    python examples/batch_bench.py --concurrency 1,2 --modes plain,k1,adaptive --new-tokens 8 --quick  # CPU smoke
    python examples/batch_bench.py --models default,1.5b,8b --time-limit-s 480  # the H200, one call

Device: AGENTSPARK_BENCH_DEVICE, else cuda when there is one, else cpu (float32 on the CPU,
bfloat16 on CUDA). On the GPU machine ``default`` needs the staged GGUF (AGENTSPARK_DEFAULT_GGUF,
README's GPU section); without it that model's entry records the error and the shapes still run.
C is at most 64 on CUDA (the runner's largest row bucket).

Every part is caught (its traceback goes in the JSON, the run goes on); the JSON (``--out``,
default $OUT/batch_bench.json or ./batch_bench.json) is rewritten after every part, so a run cut
short keeps what it did; ``--time-limit-s`` starts no part past it. A summary table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: kernels/, tools/ ... must not shadow PyPI packages of those names
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agentspark import SamplingParams  # noqa: E402
from agentspark.batch import BatchEngine, BatchRequest  # noqa: E402
from agentspark.model.runner import batch_sizes  # noqa: E402
from agentspark.drafters.factory import build_drafter  # noqa: E402
from agentspark.model.loading import LoadedModel  # noqa: E402
from agentspark.model.runner import RowWork  # noqa: E402

FIXED = ("k1", "k3", "k7")
SYNC = "/sync"  # a mode's suffix: the first token read at admission (module docstring)
ADAPTIVE_MAX_DRAFT = 7
RANDOM_SHAPES = ("1.5b", "8b")
MOTIF_PROMPT_TOKENS = 64


def default_device() -> str:
    return os.environ.get("AGENTSPARK_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- targets ----------------------------------------------------------------------------------

@dataclass
class Target:
    """A model to bench and its workload: ``prompts(n)`` gives n prompts as token ids."""

    loaded: LoadedModel
    prompts: Callable[[int], list[list[int]]]
    drafter: str  # the build_drafter spec its speculative modes use
    note: str


def cycled(base: list[list[int]], n: int) -> list[list[int]]:
    return [base[i % len(base)] for i in range(n)]


def eval_prompts(tokenizer, n: int) -> list[list[int]]:
    """First turns of the bundled eval prompts through the chat template, round-robin over their
    datasets (as gpu_runtime.py takes them), cycled past the ones there are."""
    from agentspark.commands.bench import _mixed
    from agentspark.datasets import load_prompts
    from agentspark.prompts import encode_prompt

    base = [encode_prompt(tokenizer, [{"role": "user", "content": r.turns[0]}]) for r in _mixed(load_prompts(), n)]
    return cycled(base, n)


def motif_prompts(vocab: int, n: int, tokens: int = MOTIF_PROMPT_TOKENS, distinct: int = 32,
                  seed: int = 1) -> list[list[int]]:
    """Random prompts of a short random motif repeated, so the n-gram drafter has matches to
    propose on a random-weight model; ``distinct`` of them cycled, as the eval prompts are (it
    bounds the solo references' cost at the 8B shape)."""
    g = torch.Generator().manual_seed(seed)
    base = []
    for i in range(min(n, distinct)):
        motif = torch.randint(0, vocab, (4 + i % 5,), generator=g).tolist()
        base.append((motif * (tokens // len(motif) + 1))[:tokens])
    return cycled(base, n)


def load_default(device: str, dtype: str, drafter: str) -> Target:
    from agentspark.model.loading import load_model

    loaded = load_model("default", dtype=dtype, device=device)
    return Target(loaded, lambda n: eval_prompts(loaded.tokenizer, n), drafter,
                  "the real default model; eval prompts' first turns through the chat template")


def load_random_shape(name: str, device: str, dtype: str) -> Target:
    if device != "cuda":
        raise RuntimeError(f"the {name} random-weight shape is timed on CUDA only")
    from gpu_shapes import HF_NAMES, random_model, shape_config

    loaded = LoadedModel(random_model(shape_config(name), device=device, dtype=getattr(torch, dtype)),
                         tokenizer=None, source=f"random {name}")
    vocab = loaded.config.vocab_size
    return Target(loaded, lambda n: motif_prompts(vocab, n), "ngram",
                  f"{HF_NAMES[name]} shape with random weights, n-gram drafter, {MOTIF_PROMPT_TOKENS}-token prompts "
                  "of repeated random motifs: for cost only (acceptance is not a real model's)")


def load_target(name: str, device: str, dtype: str, drafter: str) -> Target:
    if name == "default":
        return load_default(device, dtype, drafter)
    if name in RANDOM_SHAPES:
        return load_random_shape(name, device, dtype)
    raise ValueError(f"unknown model {name!r}: default, {', '.join(RANDOM_SHAPES)}")


# ---- one engine -------------------------------------------------------------------------------

class SpsLog(logging.Handler):
    """Notes whether the engine measured its SPS table (it logs that) or took it from its cache."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.measured = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("measuring the target's speed"):
            self.measured = True


def make_engine(target: Target, proto, mode: str, slots: int, max_seq_len: int,
                exact: bool) -> tuple[BatchEngine, dict]:
    """The engine of one mode, and what its construction cost (adaptive: its SPS(B) table)."""
    kw: dict = dict(slots=slots, max_seq_len=max_seq_len, reuse_prefix=False)
    if mode.endswith(SYNC):
        mode, kw["first_token_in_round"] = mode.removesuffix(SYNC), False
    if exact:
        kw["exact"] = True
    info: dict = {}
    t0 = time.perf_counter()
    if mode.startswith("plain"):
        # plain: max_draft=0, no draft ever comes, and exact mode then does not pad its steps
        engine = BatchEngine(target.loaded, None, max_draft=max_draft_of(mode), **kw)
    elif mode == "adaptive":
        logger, handler = logging.getLogger("agentspark"), SpsLog()
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            engine = BatchEngine(target.loaded, proto.sibling(), max_draft=ADAPTIVE_MAX_DRAFT, schedule="adaptive", **kw)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        info["sps_measured"] = handler.measured  # False: the table came from the SPS cache
        info.update(sps_summary(engine.sps, slots))
    elif mode in FIXED:
        engine = BatchEngine(target.loaded, proto.sibling(), max_draft=int(mode[1:]), schedule="full", **kw)
    else:
        raise ValueError(f"unknown mode {mode!r}: plain, plainN, {', '.join(FIXED)}, adaptive")
    info["construction_s"] = time.perf_counter() - t0
    info["runner"] = getattr(engine.runner, "kind", type(engine.runner).__name__)
    return engine, info


def max_draft_of(mode: str) -> int:
    """The max_draft a mode's engine runs with (plain 0, plainN and kN N, adaptive 7)."""
    mode = mode.removesuffix(SYNC)
    if mode == "adaptive":
        return ADAPTIVE_MAX_DRAFT
    digits = mode.removeprefix("plain").removeprefix("k")
    return int(digits) if digits else 0


def sps_summary(sps: list[float] | None, slots: int) -> dict:
    """The table's length and its values at B = 1, C, 8C (where it reaches) and at the sizes it
    was measured at (the rest is interpolated)."""
    if not sps:
        return {"sps_len": 0}
    at = {str(b): sps[b - 1] for b in sorted({1, slots, 8 * slots}) if b <= len(sps)}
    measured = {str(b): sps[b - 1] for b in batch_sizes(len(sps))}
    return {"sps_len": len(sps), "sps_at": at, "sps_measured_sizes": measured}


def precapture(engine: BatchEngine, slots: int) -> int:
    """On the CUDA graph runner, one greedy round of every (rows, tokens) shape this engine can
    replay, so no graph is captured inside a timed pass (rows shrink as requests end, tokens vary
    with the drafts). Returns the rounds run. The slots' contents do not matter: every timed
    request is prefilled whole."""
    runner = engine.runner
    if not getattr(runner, "graphs", False):
        return 0
    from agentspark.model.graph_runner import ROW_BUCKETS

    rows = sorted({min(b, slots) for b in ROW_BUCKETS if b < slots} | {slots})
    greedy, n = SamplingParams(temperature=0.0), 0
    with torch.inference_mode():
        for r in rows:
            for t in range(1, engine.max_draft + 2):
                start = min(64, runner.capacity - t - 1)
                runner.round([RowWork(s, start, [0] * t, greedy, None, capture=bool(engine.capture)) for s in range(r)])
                n += 1
    return n


def timed_pass(engine: BatchEngine, prompts: list[list[int]],
               params: SamplingParams) -> tuple[list[BatchRequest], list[float], float, int, dict]:
    """Every prompt submitted at once, the engine stepped until idle: (handles, each one's latency
    from the submit to the end of the round that finished it, wall seconds, rounds, where the
    rounds' time went and the garbage collections that ran in the pass)."""
    clock, collections = replace(engine.clock), sum(g["collections"] for g in gc.get_stats())
    t0 = time.perf_counter()
    handles = [engine.submit(p, params) for p in prompts]
    ends: dict[int, float] = {}
    steps = 0
    while not engine.idle:
        touched = engine.step()
        now = time.perf_counter()
        steps += 1
        for h in touched:
            if h.done and h.id not in ends:
                ends[h.id] = now - t0
    wall = time.perf_counter() - t0
    for h in handles:
        if h.error is not None:
            raise RuntimeError(f"request {h.id} failed") from h.error
    split = {**engine.clock.since(clock), "gc_collections": sum(g["collections"] for g in gc.get_stats()) - collections}
    return handles, [ends[h.id] for h in handles], wall, steps, split


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest rank: with fewer than 100 requests, p99 is the slowest one."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def figures(handles: list[BatchRequest], latency: list[float], wall: float, steps: int) -> dict:
    stats = [h.result.stats for h in handles]
    rounds = [r for s in stats for r in s.rounds]
    tokens = sum(s.new_tokens for s in stats)
    own = [s.total_s for s in stats]
    n_rounds = max(1, len(rounds))
    return {
        "requests": len(handles), "new_tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
        "latency_p50_s": percentile(latency, 50), "latency_p99_s": percentile(latency, 99),
        "own_total_p50_s": percentile(own, 50), "own_total_p99_s": percentile(own, 99),
        "prefill_s_sum": sum(s.prefill_s for s in stats),
        # over every request's rounds (the first token comes from prefill, in no round)
        "tau": sum(r.committed for r in rounds) / n_rounds,
        "verified_per_round": sum(r.verified for r in rounds) / n_rounds,
        "drafted_per_round": sum(r.drafted for r in rounds) / n_rounds,
        "acceptance": sum(r.accepted for r in rounds) / max(1, sum(r.verified for r in rounds)),
        "steps": steps,
        # B, the tokens of one batched forward (anchor + verified drafts over its rows)
        "tokens_per_forward": sum(r.verified + 1 for r in rounds) / max(1, steps),
        # how many of the rows' rounds verified 0, 1, ... drafted tokens (the schedule's choices)
        "verified_hist": [sum(r.verified == k for r in rounds) for k in range(1 + max((r.verified for r in rounds), default=0))],
        "finish_reasons": {k: sum(s.finish_reason == k for s in stats) for k in sorted({s.finish_reason for s in stats})},
    }


def prepare_engine(target: Target, proto, mode: str, prompts: list[list[int]], args,
                   max_seq_len: int) -> tuple[BatchEngine, dict]:
    """One (C, mode)'s engine of C = len(prompts) slots, built and warmed up on those prompts
    (every graph it can replay captured)."""
    engine, info = make_engine(target, proto, mode, len(prompts), max_seq_len, args.exact)
    t0 = time.perf_counter()
    engine.generate_many(prompts, SamplingParams(max_new_tokens=args.warmup_tokens))
    info["captured_rounds"] = precapture(engine, len(prompts))
    info["warmup_s"] = time.perf_counter() - t0
    return engine, info


def median_pass(passes: list[tuple[dict, list[list[int]]]]) -> tuple[dict, list[list[int]]]:
    """The pass of median wall time (its figures, whole), with every pass's tok/s beside it, and
    outputs that must be the same in every pass (greedy): ``passes_identical`` says."""
    order = sorted(range(len(passes)), key=lambda i: passes[i][0]["wall_s"])
    fig, outs = passes[order[len(order) // 2]]
    fig = dict(fig)
    fig["repeats"] = len(passes)
    fig["tok_s_passes"] = [f["tok_s"] for f, _ in passes]
    fig["passes_identical"] = all(o == passes[0][1] for _, o in passes)
    return fig, outs


def bench_concurrency(target: Target, proto, modes: list[str], prompts: list[list[int]], slots: int, args,
                      max_seq_len: int, out_of_time: Callable[[], bool]) -> dict[str, tuple[dict, list[list[int]]] | dict]:
    """Every mode at C = ``slots`` (each pass submits every prompt: ``--waves`` per slot, queued
    for the slots): the engines built and warmed up first, then ``--repeats`` timed passes
    of each, the modes alternating (the order rotated every repeat), so slow drift of the machine
    (clocks, other tenants) falls on every mode alike; per mode the median pass. A mode that fails
    maps to {"error": ...}; one past the time limit to {"skipped": ...}."""
    out: dict = {}
    engines: dict[str, tuple[BatchEngine, dict]] = {}
    try:
        for mode in modes:
            if out_of_time():
                out[mode] = {"skipped": "time limit"}
                continue
            try:
                if not mode.startswith("plain") and proto is None:
                    raise RuntimeError("no drafter (see drafter_error)")
                engines[mode] = prepare_engine(target, proto, mode, prompts[:slots], args, max_seq_len)
            except Exception:
                out[mode] = {"error": traceback.format_exc()[-3000:]}
                log(f"[C={slots} {mode}] FAILED\n{out[mode]['error']}")
        passes: dict[str, list] = {m: [] for m in engines}
        live = list(engines)
        # What a server does once its model is loaded (vLLM does the same): the engines, weights and
        # graphs built so far go to the permanent generation, so a collection during a pass scans
        # only the pass's own objects (run 22: 40-90 collections in a 0.5 s pass at C = 64).
        gc.collect()
        gc.freeze()
        params = SamplingParams(max_new_tokens=args.new_tokens)
        for rep in range(args.repeats):
            for mode in live[rep % len(live):] + live[: rep % len(live)] if live else []:
                if mode in out:
                    continue
                try:
                    handles, latency, wall, steps, split = timed_pass(engines[mode][0], prompts, params)
                    fig = {**figures(handles, latency, wall, steps), "time_split": split}
                    passes[mode].append((fig, [h.result.token_ids for h in handles]))
                except Exception:
                    out[mode] = {"error": traceback.format_exc()[-3000:]}
                    log(f"[C={slots} {mode}] FAILED\n{out[mode]['error']}")
        for mode in live:
            if mode not in out:
                fig, outs = median_pass(passes[mode])
                engine = engines[mode][0]
                if mode.removesuffix(SYNC) == "adaptive":  # what the schedule had learnt by the end of the passes
                    fig["sps_after"] = sps_summary(engine.sps, slots)
                    fig["drafting_rates"] = engine._rates.summary()
                out[mode] = ({**engines[mode][1], **fig}, outs)
        return out
    finally:
        gc.unfreeze()
        engines.clear()
        release_memory()


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def solo_references(target: Target, prompts: list[list[int]], args, max_seq_len: int) -> tuple[dict, list[list[int]]]:
    """Plain decoding of each prompt alone (one slot, one after another): what every greedy output
    should equal, and the one-at-a-time throughput beside the batched ones."""
    engine, _ = make_engine(target, None, "plain", 1, max_seq_len, args.exact)
    try:
        engine.generate_many(prompts, SamplingParams(max_new_tokens=args.warmup_tokens))  # every prefill shape
        t0 = time.perf_counter()
        results = engine.generate_many(prompts, SamplingParams(max_new_tokens=args.new_tokens))
        wall = time.perf_counter() - t0
        tokens = sum(r.stats.new_tokens for r in results)
        return {"prompts": len(prompts), "wall_s": wall, "new_tokens": tokens, "tok_s": tokens / wall}, \
            [r.token_ids for r in results]
    finally:
        del engine
        release_memory()


def compare(modes: dict) -> dict:
    """Per C: the fixed k with the most tok/s, and adaptive against it and against plain."""
    ok = {m: e for m, e in modes.items() if "tok_s" in e}
    out: dict = {}
    fixed = {m: ok[m]["tok_s"] for m in FIXED if m in ok}
    if fixed:
        best = max(fixed, key=fixed.get)
        out["best_fixed"], out["best_fixed_tok_s"] = best, fixed[best]
        if "plain" in ok:
            out["best_fixed_vs_plain"] = fixed[best] / ok["plain"]["tok_s"]
        if "adaptive" in ok:
            out["adaptive_vs_best_fixed"] = ok["adaptive"]["tok_s"] / fixed[best]
    if "adaptive" in ok and "plain" in ok:
        out["adaptive_vs_plain"] = ok["adaptive"]["tok_s"] / ok["plain"]["tok_s"]
    vs_sync = {m: e["tok_s"] / ok[m + SYNC]["tok_s"] for m, e in ok.items() if m + SYNC in ok}
    if vs_sync:
        out["round_admission_vs_sync"] = vs_sync
    return out


def same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def bench_model(entry: dict, target: Target, args, save: Callable[[], None], out_of_time: Callable[[], bool]) -> None:
    """Every (C, mode) of one model into ``entry``, each part caught and saved as it ends."""
    entry["note"], entry["drafter"] = target.note, target.drafter
    concurrency = args.concurrency
    prompts = target.prompts(max(concurrency) * args.waves)
    entry["prompts"] = {"count": len(prompts), "distinct": len({tuple(p) for p in prompts}),
                        "mean_tokens": sum(map(len, prompts)) / len(prompts), "max_tokens": max(map(len, prompts))}
    # room for the longest prompt, its budget and a full draft past it
    max_seq_len = 64 * math.ceil((max(map(len, prompts)) + args.new_tokens + ADAPTIVE_MAX_DRAFT + 16) / 64)
    entry["max_seq_len"] = max_seq_len
    proto = None
    if any(not m.startswith("plain") for m in args.modes):
        try:
            proto = build_drafter(target.drafter, target.loaded)
            entry["drafter_name"] = proto.name
        except Exception:
            entry["drafter_error"] = traceback.format_exc()[-3000:]
            log(f"[drafter] FAILED\n{entry['drafter_error']}")
    solo = None
    if args.solo:
        distinct = list({tuple(p): p for p in prompts}.values())
        try:
            entry["solo"], outs = solo_references(target, distinct, args, max_seq_len)
            solo = {tuple(p): o for p, o in zip(distinct, outs)}
            log(f"[solo] {json.dumps(entry['solo'])}")
        except Exception:
            entry["solo"] = {"error": traceback.format_exc()[-3000:]}
            log(f"[solo] FAILED\n{entry['solo']['error']}")
        save()
    runs = entry.setdefault("concurrency", {})
    for c in concurrency:
        at_c = runs.setdefault(str(c), {"modes": {}})
        plain_out: dict[int, tuple[str, list[list[int]]]] = {}  # max_draft -> (plain mode, its outputs)
        t0 = time.time()
        log(f"[C={c}] {', '.join(args.modes)} x {args.repeats} passes ...")
        sent = prompts[: c * args.waves]
        for mode, got in bench_concurrency(target, proto, args.modes, sent, c, args, max_seq_len, out_of_time).items():
            if isinstance(got, dict):  # an error, or skipped
                at_c["modes"][mode] = got
                continue
            fig, outs = got
            if mode.startswith("plain"):
                plain_out[max_draft_of(mode)] = (mode, outs)
            ref = plain_out.get(max_draft_of(mode)) or plain_out.get(0)
            fig["identical_vs"], fig["identical"] = (ref[0], same(ref[1], outs)) if ref else (None, None)
            if solo is not None:
                fig["identical_to_solo"] = sum(solo.get(tuple(p)) == o for p, o in zip(sent, outs))
            at_c["modes"][mode] = fig
            log(f"[C={c} {mode}] {fig['tok_s']:.1f} tok/s (median of {fig['repeats']}), wall {fig['wall_s']:.2f} s, "
                f"p50 {fig['latency_p50_s']:.3f} s, tau {fig['tau']:.2f}, identical {fig['identical']}/{len(sent)}")
        at_c["part_s"] = time.time() - t0
        at_c["comparison"] = compare(at_c["modes"])
        save()


# ---- the run ----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--concurrency", help="comma-separated C (default 1,4,16,64; --quick 1,2)")
    ap.add_argument("--modes", help="comma-separated, of plain,k1,k3,k7,adaptive and plainN "
                    "(default plain,k1,k3,k7,adaptive; --quick plain,k1,adaptive)")
    ap.add_argument("--drafter", default="ngram", help="build_drafter spec for the default model: ngram | auto | default")
    ap.add_argument("--models", default="default", help="comma-separated: default, and on CUDA 1.5b, 8b (random weights)")
    ap.add_argument("--new-tokens", type=int, help="per request (default 128 on CUDA, 32 on the CPU, 8 with --quick)")
    ap.add_argument("--warmup-tokens", type=int, help="per request of each engine's untimed pass (default 8, 2 with --quick)")
    ap.add_argument("--waves", type=int, default=1, help="requests per slot of each pass, submitted at once and "
                    "queued (default 1: one burst of C)")
    ap.add_argument("--repeats", type=int, help="timed passes per (C, mode), modes alternating; the median is "
                    "reported (default 5 on CUDA, 3 on the CPU, 1 with --quick)")
    ap.add_argument("--exact", action="store_true", help="pass exact=True to BatchEngine (CUDA: graph_runner's exact mode)")
    ap.add_argument("--no-solo", dest="solo", action="store_false", help="skip the one-at-a-time plain references")
    ap.add_argument("--time-limit-s", type=float, default=0.0, help="start no part after this many seconds (0: no limit)")
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--quick", action="store_true", help="a CPU smoke run: small defaults")
    ap.add_argument("--out", help="the JSON (default $OUT/batch_bench.json, else ./batch_bench.json)")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,2" if args.quick else "1,4,16,64")).split(",")]
    args.modes = (args.modes or ("plain,k1,adaptive" if args.quick else "plain,k1,k3,k7,adaptive")).split(",")
    # plain modes first at every C: the others' identity is counted against them
    args.modes = sorted(args.modes, key=lambda m: not m.startswith("plain"))
    args.models = args.models.split(",")
    if args.new_tokens is None:
        args.new_tokens = 8 if args.quick else (128 if args.device == "cuda" else 32)
    if args.warmup_tokens is None:
        args.warmup_tokens = 2 if args.quick else 8
    if args.repeats is None:
        args.repeats = 1 if args.quick else (5 if args.device == "cuda" else 3)
    if args.waves < 1:
        ap.error(f"--waves must be at least 1, got {args.waves}")
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    default_out = Path(os.environ["OUT"]) / "batch_bench.json" if os.environ.get("OUT") else Path("batch_bench.json")
    args.out = Path(args.out) if args.out else default_out
    return args


def header(args, argv: Sequence[str]) -> dict:
    from agentspark.model.graph_runner import EXACT_BY_DEFAULT

    device = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    return {
        "command": "python examples/batch_bench.py " + " ".join(argv),
        "device": device, "device_type": args.device, "cores": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {"concurrency": args.concurrency, "modes": args.modes, "drafter": args.drafter, "models": args.models,
                     "new_tokens": args.new_tokens, "waves": args.waves, "warmup_tokens": args.warmup_tokens, "repeats": args.repeats,
                     "dtype": args.dtype,
                     "exact": True if args.exact else f"not passed (runner default {EXACT_BY_DEFAULT} on CUDA)",
                     "adaptive_max_draft": ADAPTIVE_MAX_DRAFT, "sampling": "greedy", "reuse_prefix": False,
                     "quick": args.quick},
        "latency": "latency_*: from the submit (all C x waves at once) to the end of the round that finished the "
                   "request; own_total_*: the request's stats.total_s, from its admission into a slot",
        "models": {},
    }


def write_json(res: dict, path: Path) -> None:
    """Through a temporary file, so a run killed mid-write leaves the last whole JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)


def summary_table(res: dict) -> str:
    lines = [f"{'model':8s} {'C':>3s} {'mode':8s} {'tok/s':>9s} {'wall s':>7s} {'p50 s':>7s} {'p99 s':>7s} "
             f"{'tau':>5s} {'verif':>5s} {'ident':>6s} {'solo':>5s}"]
    for name, entry in res["models"].items():
        if "error" in entry:
            lines.append(f"{name:8s} FAILED: {entry['error'].strip().splitlines()[-1][:80]}")
        for c, at_c in entry.get("concurrency", {}).items():
            for mode, f in at_c["modes"].items():
                if "tok_s" not in f:
                    why = f.get("skipped") or f.get("error", "?").strip().splitlines()[-1][:70]
                    lines.append(f"{name:8s} {c:>3s} {mode:8s} {why}")
                    continue
                ident = "-" if f["identical"] is None else f"{f['identical']}/{f['requests']}"
                solo = f"{f['identical_to_solo']}" if "identical_to_solo" in f else "-"
                lines.append(f"{name:8s} {c:>3s} {mode:8s} {f['tok_s']:9.1f} {f['wall_s']:7.2f} {f['latency_p50_s']:7.3f} "
                             f"{f['latency_p99_s']:7.3f} {f['tau']:5.2f} {f['verified_per_round']:5.2f} {ident:>6s} {solo:>5s}")
            cmp_ = at_c.get("comparison", {})
            if cmp_:
                lines.append(f"{'':8s} {c:>3s} best fixed {cmp_.get('best_fixed', '-')}, adaptive/best fixed "
                             f"{cmp_.get('adaptive_vs_best_fixed', float('nan')):.3f}, adaptive/plain "
                             f"{cmp_.get('adaptive_vs_plain', float('nan')):.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, loaders: dict[str, Callable[[], Target]] | None = None) -> int:
    """``loaders``: extra models by name (tests pass a tiny random one), each a callable giving
    its Target; the names ``--models`` lists are looked up there first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    res = header(args, argv)
    started = time.time()
    save = lambda: write_json(res, args.out)  # noqa: E731
    out_of_time = lambda: args.time_limit_s > 0 and time.time() - started > args.time_limit_s  # noqa: E731
    log(f"[batch_bench] {args.device} ({res['device']}), writing {args.out}")
    for name in args.models:
        entry = res["models"].setdefault(name, {})
        t0 = time.time()
        try:
            if loaders and name in loaders:
                target = loaders[name]()
            else:
                target = load_target(name, args.device, args.dtype, args.drafter)
            bench_model(entry, target, args, save, out_of_time)
        except Exception:
            entry["error"] = traceback.format_exc()[-3000:]
            log(f"[{name}] FAILED\n{entry['error']}")
        entry["part_s"] = time.time() - t0
        target = None
        release_memory()
        save()
    res["total_s"] = time.time() - started
    save()
    print(summary_table(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
