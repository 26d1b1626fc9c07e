"""Append-only JSONL trace files: write one round per line, durable before the next round starts.

Each ``write`` is a single ``write`` of ``json + "\\n"`` followed by flush and ``os.fsync``, so a
crash can only tear the *last* line. ``read_trace`` tolerates exactly that (a torn final line with
no newline is skipped with a warning) and treats a bad line anywhere else as corruption.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from pydantic import ValidationError

from .schema import TRACE_VERSION, AuditVerdict, TraceError, TraceRound


class TraceWarning(UserWarning):
    """Something in a trace was skipped or repaired (a torn final line); the rest is intact."""


class TraceRecorder:
    """Appends ``TraceRound`` lines to ``path``. Use from one thread; it holds no lock.

    Opening a file whose last line was torn by an earlier crash first cuts that fragment off
    (with a ``TraceWarning``); otherwise the next line would be glued onto it and both be lost.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._fh: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 (closed by close/__exit__)

    def write(self, round: TraceRound) -> None:
        """Append one round and make it durable (flush + fsync) before returning."""
        if self._fh is None:
            raise TraceError(f"trace recorder for {self.path} is closed; open a new TraceRecorder")
        self._fh.write(round.model_dump_json().encode("utf-8") + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @property
    def closed(self) -> bool:
        return self._fh is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Truncate a file that does not end in a newline back to its last complete line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1  # 0 when the whole file is one torn line
    warnings.warn(
        f"{path}: dropping a torn final line ({len(data) - keep} bytes) left by an interrupted write",
        TraceWarning,
        stacklevel=3,
    )
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())


def _parse(raw: bytes, path: Path, lineno: int) -> TraceRound:
    rnd = TraceRound.model_validate_json(raw)
    if rnd.version != TRACE_VERSION:
        raise TraceError(
            f"{path}:{lineno}: trace version {rnd.version} is not supported (expected {TRACE_VERSION})"
        )
    return rnd


def read_trace(path: str | os.PathLike[str]) -> list[TraceRound]:
    """Read and validate every round of a trace, in file order.

    A final line without a newline that fails to parse is the signature of a crash mid-write:
    it is skipped with a ``TraceWarning``. Any other bad line raises ``TraceError`` with its
    1-based line number. Blank lines are ignored.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise TraceError(f"trace file {p} does not exist") from exc
    lines = data.split(b"\n")
    torn_candidate = len(lines) - 1 if not data.endswith(b"\n") else -1
    rounds: list[TraceRound] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rounds.append(_parse(raw, p, i + 1))
        except ValidationError as exc:
            if i == torn_candidate:
                warnings.warn(
                    f"{p}:{i + 1}: skipping a truncated final line (interrupted write)",
                    TraceWarning,
                    stacklevel=2,
                )
                continue
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or "line"
            raise TraceError(f"{p}:{i + 1}: invalid trace line ({where}: {first['msg']})") from exc
    return rounds


def set_audit(
    path: str | os.PathLike[str], session_id: str, round_index: int, verdict: AuditVerdict
) -> int:
    """Fill in ``audit`` for the matching round(s), rewriting the file atomically.

    The new content goes to a temporary file in the same directory, is fsynced, then replaces the
    original with ``os.replace``: readers see either the old or the new file, never a mix. Do not
    call this while a ``TraceRecorder`` still has the file open (its appends would go to the
    replaced inode). Returns how many rounds were updated; raises ``TraceError`` if none matched.
    """
    p = Path(path)
    rounds = read_trace(p)
    updated = 0
    for i, rnd in enumerate(rounds):
        if rnd.session_id == session_id and rnd.round_index == round_index:
            rounds[i] = rnd.model_copy(update={"audit": verdict})
            updated += 1
    if not updated:
        raise TraceError(f"{p}: no round with session_id={session_id!r} and round_index={round_index}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.chmod(tmp, p.stat().st_mode & 0o7777)  # mkstemp makes 0600; keep the original's mode
        with os.fdopen(fd, "wb") as fh:
            for rnd in rounds:
                fh.write(rnd.model_dump_json().encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return updated


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
