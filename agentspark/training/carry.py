"""Groups of a folder's files small enough for one device call, each way.

The GPU machine gives back at most 8 files of 16 MiB, 64 MiB in all, per call, and takes at most
64 MiB per call with the working tree. A checkpoint of the default drafter's shape is ~72 MiB
(float32 weights + AdamW moments) in 10 files, so it travels in two or three calls: group k of
``groups(folder)`` is the same list of files on both sides, since it depends only on the names
and sizes of the files.

    python -m agentspark.training.carry FOLDER DEST --group K   # copy group K's files into DEST
    python -m agentspark.training.carry FOLDER                  # print the groups
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

MAX_FILES = 8
MAX_BYTES = 40 * 2**20  # leaves room for the working tree (~15 MiB) in a call that carries the group


def groups(folder: Path, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> list[list[Path]]:
    """The folder's files in name order, cut into runs of at most ``max_files`` files and
    ``max_bytes`` bytes (a larger file is a group alone)."""
    out: list[list[Path]] = []
    used = 0
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        size = f.stat().st_size
        if not out or len(out[-1]) >= max_files or used + size > max_bytes:
            out.append([])
            used = 0
        out[-1].append(f)
        used += size
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agentspark.training.carry", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="e.g. OUT/checkpoint")
    p.add_argument("dest", type=Path, nargs="?", help="where group K's files are copied")
    p.add_argument("--group", type=int, default=0, help="which group, from 1 (without it and DEST: print the groups)")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"bytes per group (default: {MAX_BYTES})")
    args = p.parse_args(argv)
    found = groups(args.folder, max_bytes=args.max_bytes)
    if args.dest is not None and args.group == 0:
        # a DEST without a group copied nothing and said nothing wrong: a device call then brought
        # back an empty folder, and the checkpoint was lost with the machine (2026-12-02)
        print(f"copying into {args.dest} needs --group K, K from 1 to {len(found)}", file=sys.stderr)
        return 2
    if args.group == 0 or args.dest is None:
        for k, g in enumerate(found, start=1):
            print(f"group {k}: {sum(f.stat().st_size for f in g) / 2**20:.1f} MiB: {' '.join(f.name for f in g)}")
        return 0
    if not 1 <= args.group <= len(found):
        print(f"{args.folder} has {len(found)} groups, not {args.group}", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    for f in found[args.group - 1]:
        shutil.copy2(f, args.dest / f.name)
    print(f"group {args.group} of {len(found)} -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
