"""Agent-shaped training data: sessions of the target itself in our agent loop, with safe tools.

The regenerated answers (data.py) are single chat turns; what the drafter meets in agents is
different: a long system prompt with the tools' schemas, tool calls, tool results the reply copies
from, follow-up turns. So the target runs N sessions (agent_tasks.py: arithmetic, note look-up,
multi-step, listing, training prompts) through ``Agent`` with the demo's builtin tools (calculator,
read_file and list_dir over a temporary workspace of note files; never a shell, never the network),
the demo's system prompt, forced first calls (on the text path, the call's opening given and
its value closed: ``target_backend`` says why not the demo's grammar), sampled like the
regeneration (T 0.7, top-p 0.8, top-k 20, one seed per session and turn).

A session becomes one ``Sample``: the token ids of its last request exactly as the backend sent
them to the model (chat template, tools in the system prompt, forced call prefixes), followed by
the tokens the model generated for it. ``loss_mask`` is 1 on a token iff the model generated that
very token at that position after that very prefix in one of the session's requests (its text,
its tool calls, the end-of-turn token it emitted); 0 on system, user, tool-result tokens, forced
prefixes and closings, and wherever the re-rendered history differs from what was generated
(a reply's last tokens re-tokenized differently, a stop string cut). This module knows nothing of
training; it needs a backend that reports token ids (LocalBackend, BatchBackend).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..agent.loop import Agent
from ..backends.base import Backend
from ..datasets import PromptRecord, bundled_eval_sample
from ..errors import InvalidRequestError
from ..model.loading import LoadedModel
from ..request import common_prefix
from ..sampling import SamplingParams
from ..tools import calculator, make_file_tools
from .agent_tasks import AgentTask, make_task
from .data import Sample

SYSTEM = "You are a helpful assistant. Use the tools when asked."  # the demo's system prompt


@dataclass(frozen=True)
class AgentDataParams:
    sessions: int = 0
    temperature: float = 0.7  # the regeneration's sampling (DeepSpec's defaults)
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int = 160  # per model request
    max_rounds: int = 3  # model requests per user turn
    seed: int = 42
    force_tools: bool = True  # a tool task's first round gets tool_choice=<tool>, as in the demo
    slots: int = 1  # sessions at once: > 1 runs them through one BatchEngine (continuous batching)


def refuse_eval_prompts(source: str | Path) -> None:
    """Agent tasks come from training prompts only: a path through a folder named ``eval``, or the
    package's bundled eval sample, is refused."""
    path = Path(source).resolve()
    if "eval" in path.parts or path == bundled_eval_sample().resolve():
        raise InvalidRequestError(f"agent sessions take their tasks from training prompts; {source} is an eval set")


def session_sample(requests: Sequence[tuple[list[int], list[int]]], dataset: str) -> Sample:
    """One sample from a session's (prompt ids, generated ids) per model request, in order.

    Each request re-renders the conversation; the part of the previous sequence it kept unchanged
    keeps its mask, everything after is prompt (0), then the request's own tokens are generated (1)."""
    ids: list[int] = []
    mask: list[int] = []
    for prompt, generated in requests:
        keep = common_prefix(ids, prompt)
        mask = mask[:keep] + [0] * (len(prompt) - keep) + [1] * len(generated)
        ids = list(prompt) + list(generated)
    return Sample(input_ids=ids, loss_mask=mask, dataset=dataset)


def run_session(backend: Backend, task: AgentTask, params: AgentDataParams, index: int) -> Sample:
    """Run ``task`` through the agent loop on ``backend``; its sample (module docstring)."""
    requests: list[tuple[list[int], list[int]]] = []
    with tempfile.TemporaryDirectory(prefix="agentspark-agent-data-") as tmp:
        root = Path(tmp)
        for rel, text in task.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        agent = Agent(backend, [calculator, *make_file_tools(root)], system=SYSTEM, max_rounds=params.max_rounds)
        for turn, (text, choice) in enumerate(task.turns):
            agent.sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                            max_new_tokens=params.max_new_tokens,
                                            seed=(params.seed * 1_000_003 + index) * 16 + turn)
            try:
                result = agent.run(text, tool_choice=choice if params.force_tools else "auto")
            except InvalidRequestError:  # the conversation outgrew the context: keep what was said
                break
            for r in result.rounds:
                if r.response.prompt_ids is None or r.response.completion_ids is None:
                    raise InvalidRequestError(f"backend {backend.name} reports no token ids; agent data needs a local one")
                requests.append((list(r.response.prompt_ids), list(r.response.completion_ids)))
    return session_sample(requests, f"agent-{task.kind}")


def generate_agent_samples(backend: Backend, prompts: Sequence[PromptRecord], params: AgentDataParams, *,
                           progress: Callable[[int], None] | None = None) -> list[Sample]:
    """``params.sessions`` sessions (task i = make_task(i, seed)), in task order. With a backend
    that takes concurrent requests, ``params.slots`` sessions run at once in threads."""
    tasks = [make_task(i, params.seed, prompts) for i in range(params.sessions)]

    def one(i: int) -> Sample:
        sample = run_session(backend, tasks[i], params, i)
        if progress is not None:
            progress(1)
        return sample

    workers = params.slots if getattr(backend, "concurrent", False) else 1
    if workers <= 1:
        return [one(i) for i in range(len(tasks))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(tasks))))


def target_backend(target: LoadedModel, params: AgentDataParams, max_seq_len: int = 4096) -> Any:
    """Plain target decoding behind the agent loop: one Engine (its session cache keeps the shared
    system prompt), or with ``slots`` > 1 a BatchEngine serving that many sessions at once. Forced
    calls are on the text path, closed for the model. The caller closes a batch backend."""
    from ..backends.local import LocalBackend
    from ..engine import Engine

    # The text path (constrain_tool_calls=False), not the demo's grammar: the samples' loss mask
    # and the shipped drafter's data mix were built on it (a forced opening is prompt, no loss);
    # moving the data to the grammar path changes what the drafter learns and is to be measured
    # as a data change of its own, not slipped in with the demo's.
    forcing = {"close_forced_calls": True, "constrain_tool_calls": False}
    if params.slots <= 1:
        return LocalBackend(Engine(target, max_seq_len=max_seq_len), speculative=False, **forcing)
    from ..backends.batched import BatchBackend
    from ..batch import BatchEngine

    return BatchBackend(BatchEngine(target, None, slots=params.slots, max_seq_len=max_seq_len), speculative=False,
                        **forcing)
