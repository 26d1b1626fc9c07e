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
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise InvalidRequestError(f"prompt source {str(path)!r} is neither a .jsonl file nor a folder")
    records: list[PromptRecord] = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = tuple(str(t) for t in row["turns"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidRequestError(f"{f}:{lineno} is not a {{\"turns\": [...]}} record: {exc}") from exc
            if turns:
                records.append(PromptRecord(dataset=str(row.get("dataset", f.stem)), turns=turns))
    return records[:limit] if limit is not None else records
