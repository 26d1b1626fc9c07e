"""``agentspark generate``: one request with speculative decoding; text, then round statistics."""

from __future__ import annotations

import argparse
import json
import sys

from ..drafters.factory import build_drafter
from ..engine import Engine, GenerationResult
from ..model.loading import load_model
from ..sampling import SamplingParams
from .common import add_drafter_args, add_model_args, exact_of, sampling_value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with speculative decoding")
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the chat template")
    p.add_argument("--temperature", type=sampling_value("temperature"), default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=sampling_value("top_p"), default=1.0, help="nucleus sampling mass (default: 1, off)")
    p.add_argument("--top-k", type=sampling_value("top_k"), default=0, help="sample among the k best (default: 0, off)")
    p.add_argument("--seed", type=sampling_value("seed"), default=None, help="seed of the sampling (default: a fresh one)")
    p.add_argument("--max-new-tokens", type=sampling_value("max_new_tokens"), default=128,
                   help="most tokens to generate (default: 128)")
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--compare-plain", action="store_true", help="also run plain decoding: identical? speedup?")
    p.set_defaults(run=run_generate)


def _summary(result: GenerationResult) -> dict:
    s = result.stats
    return {
        "drafter": s.drafter,
        "prompt_tokens": s.prompt_tokens,
        "new_tokens": s.new_tokens,
        "finish_reason": s.finish_reason,
        "rounds": len(s.rounds),
        "drafted": sum(r.drafted for r in s.rounds),
        "verified": sum(r.verified for r in s.rounds),
        "accepted": sum(r.accepted for r in s.rounds),
        "mean_accepted_length": round(s.mean_accepted_length, 3),
        "prefill_s": round(s.prefill_s, 4),
        "draft_s": round(s.draft_s, 4),
        "verify_s": round(s.verify_s, 4),
        "other_s": round(s.other_s, 4),
        "total_s": round(s.total_s, 4),
        "tokens_per_second": round(s.tokens_per_second, 2),
    }


def run_generate(args: argparse.Namespace) -> int:
    params = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
    )
    target = load_model(args.model, dtype=args.dtype, device=args.device)
    drafter = build_drafter(args.drafter, target)
    engine = Engine(target, drafter, max_draft=args.max_draft, exact=exact_of(args), schedule=args.schedule,
                    confidence_threshold=args.confidence_threshold)

    if args.json:
        result = engine.generate(args.prompt, params, chat=args.chat)
    else:
        result = None
        for chunk in engine.stream(args.prompt, params, chat=args.chat):
            sys.stdout.write(chunk.delta)
            sys.stdout.flush()
            result = chunk.result or result
        sys.stdout.write("\n")
    assert result is not None
    out: dict = {"text": result.text, "token_ids": result.token_ids, "stats": _summary(result)}
    out["stats"]["per_round"] = [
        {"drafted": r.drafted, "verified": r.verified, "accepted": r.accepted, "committed": r.committed}
        for r in result.stats.rounds
    ]
    if args.compare_plain:
        plain = engine.generate(args.prompt, params, chat=args.chat, speculative=False)
        out["plain_tokens_per_second"] = round(plain.stats.tokens_per_second, 2)
        out["identical"] = plain.token_ids == result.token_ids
        out["speedup"] = round(result.stats.tokens_per_second / max(plain.stats.tokens_per_second, 1e-9), 3)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        stats = dict(out["stats"])
        stats.pop("per_round")
        lines = [f"{k}: {v}" for k, v in stats.items()]
        if args.compare_plain:
            lines += [f"{k}: {out[k]}" for k in ("plain_tokens_per_second", "identical", "speedup")]
        print("--- round statistics ---\n" + "\n".join(lines), file=sys.stderr)
    return 0
