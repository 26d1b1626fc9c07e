"""The ``agentspark`` subcommands, one module each. Every module has ``register(subparsers)``,
which adds its parser and sets ``run`` (a function of the parsed arguments returning an exit code).
To add a command: write the module, add its name to ``COMMANDS``."""

from __future__ import annotations

import argparse
import importlib

COMMANDS = ["generate", "bench", "fetch_default", "trace", "replay", "audit", "demo", "serve", "train_drafter", "eval_drafter", "export_drafter"]


def register_all(sub: argparse._SubParsersAction) -> None:
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
