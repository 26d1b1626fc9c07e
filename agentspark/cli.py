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


def build_parser() -> argparse.ArgumentParser:
    from .commands import register_all

    parser = argparse.ArgumentParser(prog="agentspark", description="Lossless speculative decoding for agent loops.")
    register_all(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
