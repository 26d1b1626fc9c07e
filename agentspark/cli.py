"""The ``agentspark`` command line.

Every error a user can cause is an AgentSparkError and ends as one line on stderr with exit code 2;
anything else is a bug and says so (set AGENTSPARK_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .errors import AgentSparkError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--drafter", default="ngram", help="none | ngram | draft-model:PATH (default: ngram)")
    p.add_argument("--max-draft", type=int, default=8, help="most tokens drafted per round (default: 8)")
    p.add_argument("--schedule", default="adaptive", choices=["adaptive", "full"], help="how much of a draft to verify")
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn in the chat template")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--compare-plain", action="store_true", help="also run plain decoding: identical? speedup?")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentspark", description="Lossless speculative decoding for agent loops.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text with speculative decoding")
    _add_generate_args(gen)

    sub.add_parser("fetch-default", help="download and verify the embedded default model (SmolLM2-135M-Instruct)")

    bench = sub.add_parser("bench", help="tokens/s: ours (plain, n-gram) vs HF transformers, side by side")
    _add_model_args(bench)
    bench.add_argument("--prompts", default=None, help="a .jsonl file or folder of {'turns': [...]} (default: bundled eval sample)")
    bench.add_argument("--num-prompts", type=int, default=20)
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument("--max-draft", type=int, default=8)
    bench.add_argument("--no-hf", action="store_true", help="skip the HF transformers baselines")
    bench.add_argument("--json-out", default=None, help="also write every figure to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from .commands import run_generate

            return run_generate(args)
        if args.command == "fetch-default":
            from .model.default_model import default_gguf_path

            print(default_gguf_path())
            return 0
        if args.command == "bench":
            from .bench import run_bench

            return run_bench(args)
    except AgentSparkError as exc:
        print(f"agentspark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentspark: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in agentspark: say so plainly, traceback on request
        if os.environ.get("AGENTSPARK_DEBUG"):
            traceback.print_exc()
        print(
            f"agentspark: internal error ({type(exc).__name__}: {exc}); this is a bug, "
            "rerun with AGENTSPARK_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return 1
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
