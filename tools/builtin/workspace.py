"""Read-only file tools confined to one workspace directory: ``read_file`` and ``list_dir``.

Every path the model gives is taken relative to the workspace, resolved (``..`` collapsed and
symlinks followed) and refused unless the result is still inside the resolved workspace, so
neither ``../..``, an absolute path nor a symlink pointing outside can reach other files. There
are deliberately no write tools and no shell. Not defended against: someone else swapping files
or symlinks inside the workspace between the check and the read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from ..definition import Tool
from ..errors import ToolDefinitionError, WorkspaceEscapeError

MAX_READ_BYTES = 10_000_000
MAX_LIST_ENTRIES = 1000


class _Workspace:
    """The resolved workspace root and the check every path goes through."""

    def __init__(self, workspace: Path) -> None:
        try:
            self.root = Path(workspace).resolve(strict=True)
        except OSError as exc:
            raise ToolDefinitionError(f"workspace {str(workspace)!r} does not exist: {exc}") from exc
        if not self.root.is_dir():
            raise ToolDefinitionError(f"workspace {str(workspace)!r} is not a directory")

    def resolve(self, path: str) -> Path:
        if Path(path).is_absolute():
            raise WorkspaceEscapeError(f"{path!r} is not a workspace path; give a path relative to the "
                                       "workspace, such as 'notes.txt' or 'src/main.py'")
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root):
            raise WorkspaceEscapeError(f"{path!r} leads outside the workspace; only files inside it "
                                       "can be read")
        return target

    def shown(self, target: Path) -> str:
        """A resolved path as the model should see it: relative to the workspace."""
        return target.relative_to(self.root).as_posix() or "."


def make_file_tools(workspace: Path) -> list[Tool]:
    """``[read_file, list_dir]`` over ``workspace`` (which must be an existing directory)."""
    space = _Workspace(workspace)

    def read_file(path: str, max_bytes: Annotated[int, Field(gt=0, le=MAX_READ_BYTES)] = 100_000) -> str:
        """Read a text file from the workspace (undecodable bytes are replaced).

        Args:
            path: File path relative to the workspace root, e.g. "src/main.py".
            max_bytes: Read at most this many bytes; a longer file is cut and marked as truncated.
        """
        target = space.resolve(path)
        if target.is_dir():
            raise IsADirectoryError(f"{path!r} is a directory; use list_dir to see what it contains")
        if not target.is_file():
            raise FileNotFoundError(f"no file {path!r} in the workspace")
        with target.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        text = data[:max_bytes].decode("utf-8", errors="replace")
        if len(data) > max_bytes:
            size = target.stat().st_size
            text += f"\n[truncated: showing the first {max_bytes} of {size} bytes]"
        return text

    def list_dir(path: str = ".") -> str:
        """List a workspace directory: one entry per line, directories marked with a trailing "/".

        Args:
            path: Directory path relative to the workspace root; "." is the root itself.
        """
        target = space.resolve(path)
        if not target.is_dir():
            kind = "a file" if target.exists() else "not found"
            raise NotADirectoryError(f"{path!r} is {kind}, not a directory in the workspace")
        entries = sorted(target.iterdir(), key=lambda p: p.name)
        lines = [f"{e.name}/" if e.is_dir() else e.name for e in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[truncated: {len(entries) - MAX_LIST_ENTRIES} more entries]")
        header = f"{space.shown(target)}:"
        return "\n".join([header, *lines]) if lines else f"{header} (empty directory)"

    return [Tool.from_function(read_file, timeout=10.0), Tool.from_function(list_dir, timeout=10.0)]
