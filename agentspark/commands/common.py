"""Arguments several subcommands share."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")


def add_drafter_args(p: argparse.ArgumentParser, default: str = "ngram") -> None:
    p.add_argument("--drafter", default=default, help=f"none | ngram | draft-model:PATH (default: {default})")
    p.add_argument("--max-draft", type=int, default=8, help="most tokens drafted per round (default: 8)")
    p.add_argument("--schedule", default="adaptive", choices=["adaptive", "full"], help="how much of a draft to verify")
