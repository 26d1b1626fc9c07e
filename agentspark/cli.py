"""The ``agentspark`` command line.

Every error a user can cause is an AgentSparkError and ends as one line on stderr with exit code 2;
so does a malformed command line (argparse's own errors, kept to one line here). Anything else is a
bug and says so (set AGENTSPARK_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from .errors import AgentSparkError

USER_ERROR = 2  # argparse's status for a bad command line; ours for every other user mistake


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line like every other user error (argparse's
    default prints the whole usage block first, which buries the message for big commands).
    Subparsers inherit the class, so this covers every subcommand."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR, f"agentspark: error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .commands import register_all

    from . import __version__

    parser = _Parser(prog="agentspark", description="Lossless speculative decoding for agent loops.")
    parser.add_argument("--version", action="version", version=f"agentspark {__version__}")
    register_all(parser.add_subparsers(dest="command", required=True))
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning for a CLI user (a repaired trace, say) is a sentence, not a source location."""
    print(f"agentspark: warning: {_one_line(message)}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad command line (2) or --help (0): a status, as for every other outcome
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else USER_ERROR
    with warnings.catch_warnings(), _progress_lines():  # both undone afterwards (main runs inside tests too)
        warnings.showwarning = _one_line_warning
        return _run(args)


@contextmanager
def _progress_lines() -> Iterator[None]:
    """The library's progress messages (``logging.getLogger("agentspark")`` at INFO: the target's
    speed being measured, say) as ``agentspark: ...`` lines on stderr while a command runs."""
    logger = logging.getLogger("agentspark")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("agentspark: %(message)s"))
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args))
    except AgentSparkError as exc:
        print(f"agentspark: error: {_one_line(exc)}", file=sys.stderr)
        return USER_ERROR
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


def _one_line(message: object) -> str:
    """The message on one line: it may quote a server's reply, a file's content or the user's own
    argument, with newlines or other control characters in it; those are shown escaped."""
    text = str(message)
    return "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
