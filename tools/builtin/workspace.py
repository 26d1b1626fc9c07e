"""Read-only file tools confined to one workspace directory: ``read_file`` and ``list_dir``.

Every path the model gives is taken relative to the workspace; absolute paths are refused. The
path is walked one component at a time from a descriptor of the workspace root, opened once when
the tools are made: each component is opened with ``O_NOFOLLOW`` relative to the descriptor of
the directory before it, and ``..`` steps back to that directory's parent *in the walk*, never
past the root. The kernel therefore never follows a symbolic link for us. A link met on the way
is read (``readlink``) and its target walked the same way: a target that stays inside the
workspace is followed, one that leaves it (``..`` past the root, or an absolute path not under the
workspace) is refused with ``WorkspaceEscapeError``. Because what is finally read is the file the
walk itself opened, swapping a file for a link (or a link's target) between a check and the read
cannot lead outside: there is no separate check. At most ``MAX_LINKS`` links are followed (or
components re-opened after a swap) per call, so a loop of links ends in an error, not a hang.
``list_dir`` shows links by name without following them (no trailing "/" even when they point at
a directory). The root descriptor is kept, so the tools go on serving the directory they were made
for even if its path is later renamed or replaced.

Not defended against: someone who can also write *outside* the workspace moving a directory out
of it while a walk holds it open. There are deliberately no write tools and no shell.

Where the platform lacks ``O_NOFOLLOW`` or ``dir_fd`` support (Windows), the tools fall back to
resolving the path (links followed) and checking the result is inside the workspace; that check
and the read are then two steps, so a link swapped in between can still lead outside there.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import Field

from ..definition import Tool
from ..errors import ToolDefinitionError, WorkspaceEscapeError

MAX_READ_BYTES = 10_000_000
MAX_LIST_ENTRIES = 1000
MAX_LINKS = 40  # the same budget Linux gives one path lookup (MAXSYMLINKS)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# The race-free walk needs the kernel to refuse links (O_NOFOLLOW) and to open relative to a
# directory descriptor; without either we can only resolve and check (see _ResolvingWorkspace).
RACE_FREE = (bool(_NOFOLLOW) and {os.open, os.readlink, os.stat} <= os.supports_dir_fd
             and os.stat in os.supports_follow_symlinks and os.scandir in os.supports_fd)
# Intermediate components must be directories; O_DIRECTORY also keeps a device node named in the
# middle of a path from being opened at all.
_STEP_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_DIRECTORY", 0)
# The last component may be anything until fstat says what it is; O_NONBLOCK keeps a FIFO in the
# workspace from blocking the tool in open() (it changes nothing for regular files and directories).
_FINAL_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
# What a failed O_NOFOLLOW open of a link reports: ELOOP (Linux, macOS), ENOTDIR with O_DIRECTORY
# (Linux), EMLINK (FreeBSD).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})


class _NotFound(Exception):
    """Internal: a component of the path does not exist or is not a directory."""


def _refuse_absolute(path: str) -> None:
    if Path(path).is_absolute() or path.startswith("/"):
        raise WorkspaceEscapeError(f"{path!r} is not a workspace path; give a path relative to the "
                                   "workspace, such as 'notes.txt' or 'src/main.py'")


def _escape(path: str, through_link: bool = False) -> WorkspaceEscapeError:
    why = " (through a symbolic link that points outside)" if through_link else ""
    return WorkspaceEscapeError(f"{path!r} leads outside the workspace{why}; only files inside it can be read")


def _no_file(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"no file {path!r} in the workspace")


def _is_a_directory(path: str) -> IsADirectoryError:
    return IsADirectoryError(f"{path!r} is a directory; use list_dir to see what it contains")


def _not_a_directory(path: str, kind: str) -> NotADirectoryError:
    return NotADirectoryError(f"{path!r} is {kind}, not a directory in the workspace")


def _components(path: str) -> list[str]:
    """The names of a POSIX path, ``.`` and empty ones dropped (``..`` kept: the walk handles it)."""
    if "\0" in path:  # os.open would raise ValueError; for the model it is simply no such file
        raise _NotFound(path)
    return [name for name in path.split("/") if name not in ("", ".")]


def _resolve_root(workspace: Path) -> Path:
    try:
        root = Path(workspace).resolve(strict=True)
    except OSError as exc:
        raise ToolDefinitionError(f"workspace {str(workspace)!r} does not exist: {exc}") from exc
    if not root.is_dir():
        raise ToolDefinitionError(f"workspace {str(workspace)!r} is not a directory")
    return root


def _listing(entries: list[os.DirEntry[str]]) -> list[str]:
    """One line per entry, directories marked with "/"; links are not followed to find out."""
    entries = sorted(entries, key=lambda e: e.name)
    lines = [f"{e.name}/" if e.is_dir(follow_symlinks=False) else e.name for e in entries[:MAX_LIST_ENTRIES]]
    if len(entries) > MAX_LIST_ENTRIES:
        lines.append(f"[truncated: {len(entries) - MAX_LIST_ENTRIES} more entries]")
    return lines


def _is_directory_or_link(dir_fd: int, name: str) -> bool:
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISLNK(mode)


class _Walk:
    """Where one walk stands: the directories opened from the root down (the root's descriptor is
    borrowed, the others belong to the walk) and their names, for showing the real path."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: list[int] = []
        self.names: list[str] = []

    @property
    def here(self) -> int:
        return self.fds[-1] if self.fds else self.root_fd

    def down(self, name: str, flags: int) -> None:
        self.fds.append(os.open(name, flags, dir_fd=self.here))
        self.names.append(name)

    def up(self) -> bool:
        """Step to the parent; False at the root, which has none inside the workspace."""
        if not self.fds:
            return False
        os.close(self.fds.pop())
        self.names.pop()
        return True

    def to_root(self) -> None:
        while self.up():
            pass

    def take(self) -> int:
        """A descriptor of where the walk stands, now the caller's to close."""
        if self.fds:
            return self.fds.pop()  # its name stays in self.names for shown()
        # Never hand out (or dup) the shared root descriptor: a dup shares the directory offset,
        # and two concurrent list_dir calls would then read each other's entries.
        return os.open(".", _FINAL_FLAGS, dir_fd=self.root_fd)

    def shown(self) -> str:
        return "/".join(self.names) or "."

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class _WalkingWorkspace:
    """The race-free workspace: every path is walked from the root descriptor, links by hand."""

    def __init__(self, workspace: Path) -> None:
        self.root = _resolve_root(workspace)
        # Absolute link targets are accepted under the workspace as resolved or as it was given.
        self.prefixes = {self.root.parts, Path(os.path.abspath(workspace)).parts}
        self.root_fd = os.open(self.root, _STEP_FLAGS)
        weakref.finalize(self, os.close, self.root_fd)

    def open(self, path: str) -> tuple[int, str]:
        """A descriptor of what ``path`` names (the caller closes it) and its real workspace path.

        Raises ``WorkspaceEscapeError``, ``_NotFound``, or ``OSError`` (permission denied...)."""
        _refuse_absolute(path)
        pending = _components(path)[::-1]  # a stack: a link's target is pushed in place of the link
        walk = _Walk(self.root_fd)
        links = 0
        try:
            while pending:
                name = pending.pop()
                if name == "..":
                    if not walk.up():
                        raise _escape(path)
                    continue
                try:
                    walk.down(name, _STEP_FLAGS if pending else _FINAL_FLAGS)
                    continue
                except OSError as exc:
                    target = self._link_target(walk, name, exc)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(f"{path!r} goes through more than {MAX_LINKS} symbolic links (a loop?)")
                if target is None:  # it was a link when opened and is not one now: try again
                    pending.append(name)
                    continue
                pending.extend(self._target_components(target, walk, path)[::-1])
            return walk.take(), walk.shown()
        finally:
            walk.close()

    @staticmethod
    def _link_target(walk: _Walk, name: str, exc: OSError) -> str | None:
        """The target of the link ``name`` that the open refused, None if it is no link by now
        (swapped since: the caller opens it again); re-raises failures unrelated to links."""
        if exc.errno == errno.ENOENT:
            raise _NotFound(name) from None
        if exc.errno not in _LINK_ERRNOS:
            raise exc
        try:
            return os.readlink(name, dir_fd=walk.here)
        except OSError:
            pass
        # No link now. Neither a directory nor a link either: a plain file in the middle of the
        # path. Otherwise it changed since the open (a swap): the caller opens it again.
        if exc.errno == errno.ENOTDIR and not _is_directory_or_link(walk.here, name):
            raise _NotFound(name) from None
        return None

    def _target_components(self, target: str, walk: _Walk, path: str) -> list[str]:
        """The names to walk for a link's target; an absolute one restarts the walk at the root."""
        if not target.startswith("/"):
            return _components(target)  # relative to the link's directory, where the walk stands
        parts = PurePosixPath(target).parts
        for prefix in self.prefixes:
            if parts[:len(prefix)] == prefix:
                walk.to_root()
                return list(parts[len(prefix):])
        raise _escape(path, through_link=True)

    def read(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        """At most ``max_bytes + 1`` bytes of the file ``path`` and its size."""
        try:
            fd, _ = self.open(path)
        except _NotFound:
            raise _no_file(path) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise _is_a_directory(path)
            if not stat.S_ISREG(info.st_mode):  # FIFO, socket, device: not something to read here
                raise _no_file(path)
            with open(fd, "rb", closefd=False) as handle:
                return handle.read(max_bytes + 1), info.st_size
        finally:
            os.close(fd)

    def list(self, path: str) -> tuple[str, list[str]]:
        """The real workspace path of the directory ``path`` and its listing."""
        try:
            fd, shown = self.open(path)
        except _NotFound:
            raise _not_a_directory(path, "not found") from None
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise _not_a_directory(path, "a file")
            with os.scandir(fd) as entries:
                return shown, _listing(list(entries))  # before the close: entries may stat via fd
        finally:
            os.close(fd)


class _ResolvingWorkspace:
    """Fallback where the walk is impossible (no O_NOFOLLOW or dir_fd, e.g. Windows): resolve the
    path with links followed, then check it is inside. Not safe against a link swapped between
    the check and the open; see the module docstring."""

    def __init__(self, workspace: Path) -> None:
        self.root = _resolve_root(workspace)

    def resolve(self, path: str) -> Path:
        _refuse_absolute(path)
        try:
            target = (self.root / path).resolve()
        except RuntimeError:  # Python < 3.13 reports a loop of links this way
            raise OSError(f"{path!r} goes through a loop of symbolic links") from None
        if not target.is_relative_to(self.root):
            raise _escape(path)
        return target

    def read(self, path: str, max_bytes: int) -> tuple[bytes, int]:
        target = self.resolve(path)
        if target.is_dir():
            raise _is_a_directory(path)
        if not target.is_file():
            raise _no_file(path)
        with target.open("rb") as handle:
            return handle.read(max_bytes + 1), os.fstat(handle.fileno()).st_size

    def list(self, path: str) -> tuple[str, list[str]]:
        target = self.resolve(path)
        if not target.is_dir():
            raise _not_a_directory(path, "a file" if target.exists() else "not found")
        with os.scandir(target) as entries:
            return target.relative_to(self.root).as_posix() or ".", _listing(list(entries))


def make_file_tools(workspace: Path) -> list[Tool]:
    """``[read_file, list_dir]`` over ``workspace`` (which must be an existing directory)."""
    space = _WalkingWorkspace(workspace) if RACE_FREE else _ResolvingWorkspace(workspace)

    def read_file(path: str, max_bytes: Annotated[int, Field(gt=0, le=MAX_READ_BYTES)] = 100_000) -> str:
        """Read a text file from the workspace (undecodable bytes are replaced).

        Args:
            path: File path relative to the workspace root, e.g. "src/main.py".
            max_bytes: Read at most this many bytes; a longer file is cut and marked as truncated.
        """
        data, size = space.read(path, max_bytes)
        text = data[:max_bytes].decode("utf-8", errors="replace")
        if len(data) > max_bytes:
            text += f"\n[truncated: showing the first {max_bytes} of {size} bytes]"
        return text

    def list_dir(path: str = ".") -> str:
        """List a workspace directory: one entry per line, directories marked with a trailing "/".

        Args:
            path: Directory path relative to the workspace root; "." is the root itself.
        """
        shown, lines = space.list(path)
        header = f"{shown}:"
        return "\n".join([header, *lines]) if lines else f"{header} (empty directory)"

    return [Tool.from_function(read_file, timeout=10.0), Tool.from_function(list_dir, timeout=10.0)]
