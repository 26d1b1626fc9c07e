"""Read a tool's description and per-argument descriptions out of a Google-style docstring.

The docstring is the one place a Python author already explains a function, so the model sees
the same words a human reader does. Only the parts a schema needs are parsed: the first
paragraph (the tool description) and the ``Args:`` section (argument descriptions).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

_ARGS_HEADERS = frozenset({"args", "arguments", "parameters", "params"})
# "name: text", "name (int): text", "*args: text"; the description may be empty on this line.
_ENTRY = re.compile(r"^\*{0,2}(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$")
_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")


@dataclass(frozen=True)
class ParsedDocstring:
    """The description (first paragraph, lines joined by spaces) and ``{argument: description}``."""

    description: str = ""
    args: dict[str, str] = field(default_factory=dict)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def parse_docstring(doc: str | None) -> ParsedDocstring:
    """Parse ``doc`` (raw or already cleaned); a missing or empty docstring gives empty results."""
    if not doc or not doc.strip():
        return ParsedDocstring()
    lines = inspect.cleandoc(doc).splitlines()

    first: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        first.append(line.strip())

    args: dict[str, str] = {}
    header_at = next((i for i, l in enumerate(lines) if l.strip().rstrip(":").lower() in _ARGS_HEADERS
                      and l.strip().endswith(":")), None)
    if header_at is not None:
        header_indent = _indent(lines[header_at])
        entry_indent: int | None = None
        current: str | None = None
        for line in lines[header_at + 1:]:
            if not line.strip():
                continue
            indent = _indent(line)
            if indent <= header_indent:
                break  # dedent: the next section ("Returns:", "Raises:", ...) starts
            if entry_indent is None:
                entry_indent = indent
            match = _ENTRY.match(line.strip()) if indent == entry_indent else None
            if match:
                current = match.group("name")
                args[current] = match.group("text").strip()
            elif current is not None:  # a continuation line of the current entry
                args[current] = f"{args[current]} {line.strip()}".strip()
    return ParsedDocstring(" ".join(first), args)
