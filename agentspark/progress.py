"""Progress for the slow steps of a first run, on stderr: the GGUF's one-time conversion, loading
its weights, measuring the target's speed (seconds each, silent before). A rich spinner or bar
while stderr is a terminal and ``AGENTSPARK_PROGRESS`` is not "0"; otherwise nothing is drawn
(logs, pipes and tests stay clean). Progress never changes what is computed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    return os.environ.get("AGENTSPARK_PROGRESS", "1") != "0" and sys.stderr.isatty()


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` while the block runs (a step with no count of its own)."""
    if not enabled():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def track(items: Iterable[T], description: str, total: int) -> Iterator[T]:
    """``items`` with a transient bar of ``total`` steps (a step with a count: tensors loaded)."""
    if not enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True, console=Console(stderr=True))
