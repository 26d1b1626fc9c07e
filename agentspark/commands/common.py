"""Arguments several subcommands share, and the checks that keep a user's mistake a user error.

The ``type=`` factories below reject a bad value while the command line is parsed, so the mistake
is reported as one line (exit 2) before any model is loaded, instead of surfacing minutes later as
a crash deep inside the work. Input and output paths are checked the same way, up front.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidRequestError


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # also int()'s limit on digits: a 5000-digit count is no count
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_real(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # float() takes inf, nan and 1e999: none is a setting
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        value = _parse_int(text)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    return parse


def real_in(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False
            ) -> Callable[[str], float]:
    """An argparse type: a finite number between low and high (each end closed unless said open)."""

    def parse(text: str) -> float:
        value = _parse_real(text)
        too_low = value <= low if open_low else value < low
        too_high = high is not None and (value >= high if open_high else value > high)
        if too_low or too_high:
            left, right = "(" if open_low else "[", ")" if open_high else "]"
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            where = bound if high is None else f"in {left}{low:g}, {high:g}{right}"
            raise argparse.ArgumentTypeError(f"must be a number {where}, got {text!r}")
        return value

    return parse


def sampling_value(field: str, *, positive: bool = False) -> Callable[[str], float | int]:
    """An argparse type for one SamplingParams field, checked by SamplingParams itself (one rule
    for the CLI, the server and traces). ``positive``: 0 (greedy) is not allowed either."""
    parse_text = _parse_int if field in ("seed", "top_k", "max_new_tokens") else _parse_real

    def parse(text: str) -> float | int:
        from ..sampling import SamplingParams

        value = parse_text(text)
        try:
            SamplingParams(**{field: value})
        except InvalidRequestError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def max_draft(text: str) -> int:
    from ..engine import MAX_DRAFT_LIMIT

    return int_in(1, MAX_DRAFT_LIMIT)(text)


def api_key(text: str) -> str:
    """A bearer key goes into an HTTP header: visible ASCII only (httpx cannot send anything else)."""
    if not text or any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise argparse.ArgumentTypeError("must be visible ASCII characters without spaces")
    return text


def output_file(text: str) -> str:
    """An argparse type for a file to write: not a directory, and under a folder (or none yet)."""
    path = Path(text)
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give the path of a file to write")
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the path of a file to write")
        for parent in path.parents:  # a parent that is a file can never hold it
            if parent.exists():
                if not parent.is_dir():
                    raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(parent)!r} is a file, not a folder")
                break
    except OSError as exc:  # a name too long, a folder we may not look into
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {exc.strerror or exc}") from None
    return text


def model_source(text: str) -> str:
    """An argparse type for --model: only that the path can be looked at (a name too long for the
    file system fails here as a user error); what it holds is the loader's to check."""
    if text != "default":
        try:
            Path(text).expanduser().exists()
        except (OSError, RuntimeError) as exc:  # RuntimeError: expanduser of an unknown ~user
            raise argparse.ArgumentTypeError(f"cannot use {text!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return text


def is_file(path: Path) -> bool:
    """Path.is_file, False where the path cannot even be looked at (the caller reports that later)."""
    try:
        return path.is_file()
    except OSError:
        return False


def output_dir(path: Path, flag: str) -> Path:
    """Create an output folder now (before any model loads) or say why it cannot be one."""
    try:
        if path.exists() and not path.is_dir():
            raise InvalidRequestError(f"{flag} {str(path)!r} is an existing file; give a folder path (new or existing)")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequestError(f"{flag} {str(path)!r} cannot be created as a folder: {exc.strerror or exc}") from exc
    return path


def input_file(text: str, flag: str) -> Path:
    """An existing, readable file given on the command line."""
    path = Path(text)
    try:
        if path.is_file():
            return path
        what = "is a directory" if path.is_dir() else "does not exist"
    except OSError as exc:
        what = f"cannot be read ({exc.strerror or exc})"
    raise InvalidRequestError(f"{flag} {text!r} {what}; give an existing file")


def checked_prompts(source: str | None, flag: str = "--prompts") -> list:
    """Read a prompts file or folder up front so a bad one fails before the model loads."""
    from ..datasets import load_prompts

    records = load_prompts(source)
    if not records:
        raise InvalidRequestError(f"{flag} {source!r} holds no prompts; give a .jsonl of {{\"turns\": [...]}} records")
    return records


def console():  # noqa: ANN201
    """A rich console that keeps tables whole when stdout is a pipe or a file (no terminal width)."""
    from rich.console import Console

    probe = Console()
    return probe if probe.is_terminal else Console(width=160)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=model_source, default="default", help="default | HF folder | .gguf file (default: default)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the target's weights and activations (default: float32; use bfloat16 on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--gpu-mode", default=None, choices=["exact", "fast"],
                   help="on CUDA: exact runs every decode-phase forward at one shape, so greedy speculative output "
                   "equals plain decoding bit for bit (costs the (max-draft+1)-token forward per plain step); fast "
                   "runs each at its own size, equal up to near-ties (default: exact, or $AGENTSPARK_GPU_MODE; the CPU is exact anyway)")


def add_drafter_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    # auto = n-gram lookups first, the shipped DSpark drafter where they find nothing and it pays
    # (hybrid.py), on the default model; n-gram alone on any other. Measured against n-gram alone
    # in README ("Learned drafters"): the same on the agent demo, a higher tau on the eval prompts.
    p.add_argument("--drafter", default=default,
                   help="auto (ngram+default on the default model, else ngram) | none | ngram | default (the shipped "
                   "DSpark drafter of the default model) | learned:PATH | draft-model:PATH | ngram+default | "
                   f"ngram+learned:PATH (n-gram lookups first, the learned drafter where they find nothing) (default: {default})")
    p.add_argument("--max-draft", type=max_draft, default=8, help="most tokens drafted per round (default: 8)")
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
        type=real_in(0.0, 1.0),
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
    p.add_argument("--api-key", type=api_key, default=None, help="bearer key for the remote server")


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
        exact=exact_of(args),
    )


def exact_of(args: argparse.Namespace) -> bool | None:
    """--gpu-mode as the engine's ``exact`` (None: the runtime's default)."""
    mode = getattr(args, "gpu_mode", None)
    return None if mode is None else mode == "exact"


def backend_from_args(args: argparse.Namespace):  # noqa: ANN201
    if args.base_url:
        from ..backends.remote import RemoteBackend

        return RemoteBackend(args.base_url, args.remote_model or args.model, api_key=args.api_key)
    from ..backends.local import LocalBackend

    engine = engine_from_args(args, drafter="none" if args.plain else None)
    return LocalBackend(engine, speculative=not args.plain)
