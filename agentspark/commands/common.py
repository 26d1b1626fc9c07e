"""Arguments several subcommands share."""

from __future__ import annotations

import argparse


def console():  # noqa: ANN201
    """A rich console that keeps tables whole when stdout is a pipe or a file (no terminal width)."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=160)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")


def add_drafter_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    # auto = n-gram lookups first, the shipped DSpark drafter where they find nothing and it pays
    # (hybrid.py), on the default model; n-gram alone on any other. Measured against n-gram alone
    # in README ("Learned drafters"): the same on the agent demo, a higher tau on the eval prompts.
    p.add_argument("--drafter", default=default,
                   help="auto (ngram+default on the default model, else ngram) | none | ngram | default (the shipped "
                   "DSpark drafter of the default model) | learned:PATH | draft-model:PATH | ngram+default | "
                   f"ngram+learned:PATH (n-gram lookups first, the learned drafter where they find nothing) (default: {default})")
    p.add_argument("--max-draft", type=int, default=8, help="most tokens drafted per round (default: 8)")
    p.add_argument(
        "--schedule",
        default="adaptive",
        choices=["adaptive", "threshold", "full"],
        help="how much of a draft to verify: adaptive (causal prefix scheduler over the measured SPS table), "
        "threshold (cut at the first draft slot whose confidence is below --confidence-threshold), "
        "full (everything) (default: adaptive)",
    )
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="per-slot confidence below which --schedule threshold stops verifying, in [0, 1]; 0 verifies everything "
        "(default: 0.5)",
    )


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """A local engine (model + drafter options) or a remote OpenAI-compatible server."""
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--plain", action="store_true", help="local plain target decoding instead of speculative")
    p.add_argument("--base-url", default=None, help="an OpenAI-compatible server (vLLM, SGLang, agentspark serve)")
    p.add_argument("--remote-model", default=None, help="the model name to ask the remote server for")
    p.add_argument("--api-key", default=None, help="bearer key for the remote server")


def engine_from_args(args: argparse.Namespace, *, drafter: str | None = None):  # noqa: ANN201
    from ..drafters.factory import build_drafter
    from ..engine import Engine
    from ..model.loading import load_model

    target = load_model(args.model, dtype=args.dtype, device=args.device)
    return Engine(
        target,
        build_drafter(drafter or args.drafter, target),
        max_draft=args.max_draft,
        schedule=args.schedule,
        confidence_threshold=getattr(args, "confidence_threshold", 0.5),
    )


def backend_from_args(args: argparse.Namespace):  # noqa: ANN201
    if args.base_url:
        from ..backends.remote import RemoteBackend

        return RemoteBackend(args.base_url, args.remote_model or args.model, api_key=args.api_key)
    from ..backends.local import LocalBackend

    engine = engine_from_args(args, drafter="none" if args.plain else None)
    return LocalBackend(engine, speculative=not args.plain)
