"""Prompt files in DeepSpec's format: one ``{"turns": [...]}`` per line (``.jsonl``), or a folder of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import InvalidRequestError


@dataclass(frozen=True)
class PromptRecord:
    dataset: str  # file stem, or the record's own "dataset" field
    turns: tuple[str, ...]


def bundled_eval_sample() -> Path:
    """Six first turns from each of DeepSpec's eval sets (MIT, see data/LICENSE-DeepSpec)."""
    return Path(str(resources.files("agentspark") / "data" / "eval_sample.jsonl"))


def load_prompts(source: str | Path | None = None, limit: int | None = None) -> list[PromptRecord]:
    """Records from a .jsonl file or every .jsonl in a folder (sorted), at most ``limit``."""
    path = Path(source) if source is not None else bundled_eval_sample()
    records: list[PromptRecord] = []
    for f in _prompt_files(path):
        for lineno, line in enumerate(_read_lines(f), start=1):
            if line.strip():
                records.extend(_record(line, f, lineno))
    return records[:limit] if limit is not None else records


def _prompt_files(path: Path) -> list[Path]:
    try:
        if path.is_dir():
            return sorted(f for f in path.glob("*.jsonl") if not f.is_dir())
        if path.is_file():
            return [path]
    except OSError as exc:  # a name too long, a folder we may not list
        raise InvalidRequestError(f"cannot read prompt source {str(path)!r}: {exc.strerror or exc}") from exc
    raise InvalidRequestError(f"prompt source {str(path)!r} is neither a .jsonl file nor a folder")


def _read_lines(f: Path) -> list[str]:
    """The file's lines; a prompts file that is not UTF-8 text is the user's to convert, not a crash."""
    try:
        return f.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{f} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise InvalidRequestError(f"cannot read prompts file {f}: {exc.strerror or exc}") from exc


def _record(line: str, f: Path, lineno: int) -> list[PromptRecord]:
    """One ``{"turns": [...]}`` line as a record (none when it has no turns)."""
    try:
        row = json.loads(line)
        turns = row["turns"]
        if not isinstance(turns, list):  # a string would be split into one turn per character
            raise TypeError(f"turns is a {type(turns).__name__}, not a list")
        turns = tuple(str(t) for t in turns)
        dataset = str(row.get("dataset", f.stem))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise InvalidRequestError(f"{f}:{lineno} is not a {{\"turns\": [...]}} record: {exc}") from exc
    return [PromptRecord(dataset=dataset, turns=turns)] if turns else []
