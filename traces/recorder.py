"""Append-only JSONL trace files: write one round per line, durable before the next round starts.

Each ``write`` is a single ``write`` of ``json + "\\n"`` followed by flush and ``os.fsync``, so a
crash can only tear the *last* line. ``read_trace`` tolerates exactly that (a torn final line with
no newline is skipped with a warning) and treats a bad line anywhere else as corruption.

Lines are written incrementally (schema version 2): a request's messages that repeat the previous
round of its session are written as a ``prefix`` reference, so a trace grows with what each round
adds, not with the whole conversation again. ``read_trace`` restores the full messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from pydantic import ValidationError
from pydantic_core import to_json

from ..request import common_prefix
from .schema import READABLE_VERSIONS, TRACE_VERSION, AuditVerdict, MessagesPrefix, TraceError, TraceRound


class TraceWarning(UserWarning):
    """Something in a trace was skipped or repaired (a torn final line); the rest is intact."""


def _message_json(messages: Iterable[dict[str, Any]]) -> list[bytes]:
    """Each message as the JSON a trace line holds: writer and reader compare and hash these
    bytes, so a message that merely compares equal (1 == 1.0) is never taken for a shared one."""
    return [to_json(m) for m in messages]


def _digest(encoded: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(encoded)).hexdigest()[:16]


class _Compactor:
    """Writes rounds as lines, each request's messages after the ones the previous line of the
    same session already holds (see schema.py); ``commit`` once a line is safely written."""

    def __init__(self) -> None:
        self._last: dict[str, list[bytes]] = {}  # session -> its last written line's messages

    def line(self, rnd: TraceRound) -> tuple[bytes, list[bytes]]:
        encoded = _message_json(rnd.request.messages)
        shared = common_prefix(self._last.get(rnd.session_id, []), encoded)
        update: dict[str, Any] = {"version": TRACE_VERSION}
        if shared:
            prefix = MessagesPrefix(count=shared, sha256=_digest(encoded[:shared]))
            update["request"] = rnd.request.model_copy(
                update={"messages": rnd.request.messages[shared:], "prefix": prefix})
        data = rnd.model_copy(update=update).model_dump_json(exclude=None if shared else {"request": {"prefix"}})
        return data.encode("utf-8") + b"\n", encoded

    def commit(self, session_id: str, encoded: list[bytes]) -> None:
        self._last[session_id] = encoded


class _Expander:
    """The reader's side of ``_Compactor``: full messages back from each line's prefix reference."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, tuple[list[dict[str, Any]], list[bytes]]] = {}

    def full(self, rnd: TraceRound, lineno: int) -> TraceRound:
        messages, ref = rnd.request.messages, rnd.request.prefix
        encoded = _message_json(messages)
        if ref is not None:
            before, before_encoded = self._last.get(rnd.session_id, ([], []))
            if ref.count > len(before) or _digest(before_encoded[: ref.count]) != ref.sha256:
                raise TraceError(
                    f"{self.path}:{lineno}: this round reuses {ref.count} messages of the previous round of "
                    f"session {rnd.session_id!r}, which the lines before it do not hold; lines were edited, "
                    "removed or reordered: restore the original file")
            messages, encoded = before[: ref.count] + messages, before_encoded[: ref.count] + encoded
            request = rnd.request.model_copy(update={"messages": messages, "prefix": None})
            rnd = rnd.model_copy(update={"request": request})
        self._last[rnd.session_id] = (messages, encoded)
        return rnd


def _write_lines(fh: BinaryIO, rounds: Iterable[TraceRound]) -> None:
    """All rounds as one incremental file (set_audit's rewrite)."""
    compactor = _Compactor()
    for rnd in rounds:
        data, encoded = compactor.line(rnd)
        fh.write(data)
        compactor.commit(rnd.session_id, encoded)


def _open_for_append(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise TraceError(f"{path} is a directory; give the path of a trace file (.jsonl) to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(path)
        return open(path, "ab")  # noqa: SIM115 (closed by close/__exit__)
    except OSError as exc:
        raise TraceError(f"cannot write trace {path}: {exc.strerror or exc}") from exc


class TraceRecorder:
    """Appends ``TraceRound`` lines to ``path``. Use from one thread; it holds no lock.

    Opening a file whose last line has no newline first repairs it (with a ``TraceWarning``), so
    the next line is not glued onto it: a complete line gets its newline; a fragment torn by a
    crash mid-write is moved to ``<path>.torn`` (kept, not destroyed) and cut from the trace.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fh: BinaryIO | None = _open_for_append(self.path)
        self._compactor = _Compactor()

    def write(self, round: TraceRound) -> None:
        """Append one round and make it durable (flush + fsync) before returning."""
        if self._fh is None:
            raise TraceError(f"trace recorder for {self.path} is closed; open a new TraceRecorder")
        data, encoded = self._compactor.line(round)
        try:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise TraceError(f"cannot write trace {self.path}: {exc.strerror or exc}") from exc
        self._compactor.commit(round.session_id, encoded)  # only a line that is on disk is a reference

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


def _is_complete_line(raw: bytes) -> bool:
    """A whole JSON document: a line that only lacks its newline (hand-written, or by a tool that
    omits the last one), as opposed to a fragment a crash tore off mid-write. Whether it is a valid
    round is read_trace's to say; here it only must not be destroyed."""
    try:
        json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: bad JSON, or bytes that are not UTF-8
        return False
    return True


def _repair_tail(path: Path) -> None:
    """Make a file that does not end in a newline end in one, never losing a byte of it."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1  # 0 when the whole file is one line
    tail = data[keep:]
    if _is_complete_line(tail):
        warnings.warn(f"{path}: its last line had no newline; added one before appending", TraceWarning, stacklevel=4)
        with open(path, "ab") as fh:
            fh.write(b"\n")
            _sync(fh)
        return
    torn = path.with_name(path.name + ".torn")
    with open(torn, "ab") as fh:  # appended: repeated crashes each keep their fragment
        fh.write(tail + b"\n")
        _sync(fh)
    warnings.warn(
        f"{path}: moved a torn final line ({len(tail)} bytes, left by an interrupted write) to {torn}",
        TraceWarning,
        stacklevel=4,
    )
    with open(path, "r+b") as fh:
        fh.truncate(keep)
        _sync(fh)


def _sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _parse(raw: bytes, path: Path, lineno: int) -> TraceRound:
    rnd = TraceRound.model_validate_json(raw)
    if rnd.version not in READABLE_VERSIONS:
        raise TraceError(
            f"{path}:{lineno}: trace version {rnd.version} is not supported "
            f"(this agentspark reads {', '.join(map(str, READABLE_VERSIONS))}); upgrade agentspark"
        )
    return rnd


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except IsADirectoryError as exc:
        raise TraceError(f"{p} is a directory, not a trace; give one of the .jsonl files in it") from exc
    except FileNotFoundError as exc:
        raise TraceError(f"trace file {p} does not exist") from exc
    except OSError as exc:
        raise TraceError(f"cannot read trace {p}: {exc.strerror or exc}") from exc


def read_trace(path: str | os.PathLike[str]) -> list[TraceRound]:
    """Read and validate every round of a trace, in file order.

    A final line without a newline that fails to parse is the signature of a crash mid-write:
    it is skipped with a ``TraceWarning``. Any other bad line raises ``TraceError`` with its
    1-based line number. Blank lines are ignored.
    """
    p = Path(path)
    data = _read_bytes(p)
    lines = data.split(b"\n")
    torn_candidate = len(lines) - 1 if not data.endswith(b"\n") else -1
    rounds: list[TraceRound] = []
    expander = _Expander(p)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rounds.append(expander.full(_parse(raw, p, i + 1), i + 1))
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
            raise TraceError(f"{p}:{i + 1}: invalid trace line ({where}: {first['msg']}); "
                             "fix or delete that line") from exc
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
    try:
        _replace_atomically(p, rounds)
    except OSError as exc:
        raise TraceError(f"cannot rewrite trace {p} with the verdict: {exc.strerror or exc}") from exc
    _fsync_dir(p.parent)
    return updated


def _replace_atomically(p: Path, rounds: list[TraceRound]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.chmod(tmp, p.stat().st_mode & 0o7777)  # mkstemp makes 0600; keep the original's mode
        with os.fdopen(fd, "wb") as fh:
            _write_lines(fh, rounds)
            _sync(fh)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
