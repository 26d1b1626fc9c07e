"""The tasks of agent-shaped training sessions: seeded templates and training prompts.

A task is a small workspace of note files and a few user turns, each with the tool_choice of
its first round (as the demo forces the first call of a tool task: a small target rarely calls a
tool on its own). Kinds: arithmetic (calculator), note look-up (read_file), multi-step (read a
note, then compute with what it says), listing (list_dir, then read_file), and a training prompt
answered with the tools at hand. Task ``i`` is a function of (seed, i) alone, so a set of N
sessions is the first N of any larger set, whatever order they run in.

The prompts given here must be training prompts: the caller refuses eval sets (agent_data.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..datasets import PromptRecord

KINDS = ("arithmetic", "note", "multi", "listing", "prompt")
_WEIGHTS = (2, 2, 2, 1, 3)  # "prompt" only where training prompts were given
PROMPT_CHARS = 2000  # a longer training prompt is cut: the session must fit the context with the tools

_PROJECTS = ("Falcon", "Heron", "Orion", "Juniper", "Atlas", "Cobalt", "Maple", "Quartz", "Nimbus", "Saffron",
             "Tundra", "Vega", "Willow", "Zephyr", "Lumen", "Basalt")
_OWNERS = ("Dana Reyes", "Ken Ito", "Priya Nair", "Lars Olsen", "Ana Souza", "Omar Haddad", "Mei Chen",
           "Tom Becker", "Zoe Martin", "Ravi Patel")
_CITIES = ("Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Pune", "Leeds", "Graz", "Tampere")
_STATUS = ("on track", "delayed", "at risk", "in review", "done")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_FIELDS = ("deadline", "budget", "owner", "location", "status")


@dataclass(frozen=True)
class AgentTask:
    kind: str
    files: dict[str, str]  # the workspace's files: relative path -> text
    turns: tuple[tuple[str, str], ...]  # (user message, tool_choice of the turn's first round)


def _project(rng: random.Random, name: str) -> dict[str, str]:
    return {"name": name, "deadline": f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(2025, 2030)}",
            "budget": f"{rng.randint(2, 400) * 500:,} EUR", "owner": rng.choice(_OWNERS),
            "location": rng.choice(_CITIES), "status": rng.choice(_STATUS)}


def _note(p: dict[str, str]) -> str:
    return (f"Project {p['name']}\nDeadline: {p['deadline']}\nBudget: {p['budget']}\nOwner: {p['owner']}\n"
            f"Location: {p['location']}\nStatus: {p['status']}\n")


def _workspace(rng: random.Random) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    """A few note files; returns (files, [(path of the note, its project)])."""
    projects = [_project(rng, n) for n in rng.sample(_PROJECTS, rng.randint(2, 4))]
    files: dict[str, str] = {}
    where = []
    if rng.random() < 0.4:  # everything in one notes file
        files["notes.txt"] = "\n".join(_note(p) for p in projects)
        where = [("notes.txt", p) for p in projects]
    else:
        for p in projects:
            path = rng.choice(("notes/{}.md", "projects/{}.txt", "{}.txt")).format(p["name"].lower())
            files[path] = _note(p)
            where.append((path, p))
    files["todo.txt"] = "- call the supplier\n- send the report\n- book the review meeting\n"
    return files, where


def _expression(rng: random.Random) -> str:
    a, b, c = rng.randint(12, 9999), rng.randint(2, 999), rng.randint(1, 99999)
    return rng.choice((f"{a} * {b} + {c}", f"({a} + {b}) * {rng.randint(2, 99)}", f"{a} / {b}",
                       f"{rng.randint(2, 99)} ** {rng.randint(2, 5)} - {b}", f"sqrt({a}) + {b}",
                       f"{a} - {b} * {rng.randint(2, 50)}"))


def _arithmetic(rng: random.Random) -> tuple[str, ...]:
    ask = rng.choice(("What is {}? Use the calculator.", "Compute {} with the calculator.",
                      "Please calculate {} for me.", "I need the value of {}. Use the calculator tool."))
    return (ask.format(_expression(rng)),)


def make_task(index: int, seed: int, prompts: Sequence[PromptRecord] = ()) -> AgentTask:
    rng = random.Random(f"agent-task:{seed}:{index}")  # a str seed: stable across processes
    kinds = KINDS if prompts else KINDS[:-1]
    kind = rng.choices(kinds, weights=_WEIGHTS[: len(kinds)])[0]
    files, where = _workspace(rng)
    path, p = rng.choice(where)
    first, second = rng.sample(_FIELDS, 2)
    if kind == "arithmetic":
        turns = [(_arithmetic(rng)[0], "calculator")]
        turns += rng.sample([(f"Now divide that by {rng.randint(2, 40)}.", "calculator"),
                             ("Thanks. In one sentence, repeat the number you computed.", "auto"),
                             ("Is the result larger than 1000? Answer briefly.", "auto")], rng.randint(0, 2))
    elif kind == "note":
        turns = [(f"Read the file {path} and tell me the {first} of Project {p['name']}.", "read_file"),
                 (f"And what is its {second}?", "auto")]
        if rng.random() < 0.5:
            turns.append(("Thanks. Summarize that project in one sentence.", "auto"))
    elif kind == "multi":
        k = rng.randint(2, 12)
        budget = p["budget"].split()[0].replace(",", "")
        turns = [(f"Read {path} and tell me the budget of Project {p['name']}.", "read_file"),
                 (f"Use the calculator to multiply that budget, {budget}, by {k}.", "calculator"),
                 (f"Thanks. In one sentence: the project, its owner and the budget times {k}.", "auto")]
    elif kind == "listing":
        turns = [("Which files are in the workspace? List them.", "list_dir"),
                 (f"Read {path} and tell me who owns Project {p['name']}.", "read_file")]
    else:
        record = rng.choice(list(prompts))
        text = record.turns[0][:PROMPT_CHARS]
        mathy = any(w in record.dataset.lower() for w in ("gsm", "math", "aime"))
        turns = [(text, "calculator" if mathy else "auto"), ("Thanks. State your final answer in one sentence.", "auto")]
    return AgentTask(kind, files, tuple(turns))
