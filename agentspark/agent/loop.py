"""Agent: the multi-turn tool-calling loop over any backend.

A round = one model request + the tool calls it asked for. The loop is a generator of events
(``stream``); ``run`` drains it. Error policy (smolagents/langchain): a model's mistakes —
malformed tool-call JSON, an unknown tool, invalid arguments, a tool's exception or timeout —
become messages fed back to the model and the loop goes on; a bug in our code raises. The loop
ends on an answer without tool calls, or after ``max_rounds``.

The messages persist across ``run`` calls (a session): a local backend then prefills only what
each round appended. With ``trace=``, every finished round is appended to a JSONL trace and
flushed before the next round starts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, BackendResponse, ToolChoice, response_record
from ..sampling import SamplingParams
from ..stats import RequestStats
from ..tools import Tool, ToolCall, ToolRegistry, ToolResult
from ..traces import RequestRecord, ToolCallRecord, TraceRecorder, TraceRound, prompt_hash


@dataclass
class AgentRound:
    index: int  # round number within the session
    response: BackendResponse
    tool_results: list[ToolResult]
    model_s: float
    tool_s: float


@dataclass
class AgentResult:
    answer: str
    rounds: list[AgentRound]
    stopped: str  # "answer" | "max_rounds"
    messages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TextDelta:
    round_index: int
    text: str


@dataclass
class ModelTurn:
    round_index: int
    response: BackendResponse


@dataclass
class ToolOutputs:
    round_index: int
    results: list[ToolResult]


@dataclass
class Finished:
    result: AgentResult


AgentEvent = TextDelta | ModelTurn | ToolOutputs | Finished


class Agent:
    def __init__(
        self,
        backend: Backend,
        tools: Sequence[Tool] | ToolRegistry = (),
        *,
        system: str | None = None,
        sampling: SamplingParams | None = None,
        max_rounds: int = 8,
        trace: str | Path | TraceRecorder | None = None,
        session_id: str | None = None,
    ) -> None:
        self.backend = backend
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(list(tools))
        self.sampling = sampling or SamplingParams(max_new_tokens=512)
        self.max_rounds = max_rounds
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self.rounds_done = 0
        self._choice: ToolChoice = "auto"  # the tool_choice of the round in flight (for the trace)
        self._recorder = trace if isinstance(trace, TraceRecorder) or trace is None else TraceRecorder(trace)

    def run(self, task: str, *, tool_choice: ToolChoice = "auto") -> AgentResult:
        """Run one user turn to its answer. ``tool_choice`` applies to this turn's first round."""
        for event in self.stream(task, tool_choice=tool_choice):
            if isinstance(event, Finished):
                return event.result
        raise AssertionError("agent stream ended without a result")  # pragma: no cover

    def stream(self, task: str, *, tool_choice: ToolChoice = "auto") -> Iterator[AgentEvent]:
        self.messages.append({"role": "user", "content": task})
        schemas = self.registry.openai_schemas() or None
        rounds: list[AgentRound] = []
        choice = tool_choice
        for _ in range(self.max_rounds):
            self._choice = choice
            index = self.rounds_done
            started = time.time()
            t0 = time.perf_counter()
            response = None
            for chunk in self.backend.stream(self.messages, schemas, self.sampling, choice):
                if chunk.delta:
                    yield TextDelta(index, chunk.delta)
                response = chunk.response or response
            assert response is not None
            model_s = time.perf_counter() - t0
            choice = "auto"  # a forced choice covers the turn's first round only
            self.messages.append(response.message.to_dict())
            yield ModelTurn(index, response)

            t1 = time.perf_counter()
            calls = [ToolCall(id=c.id, name=c.name, args=c.args) for c in response.message.tool_calls]
            results = self.registry.run_sync(calls) if calls else []
            tool_s = time.perf_counter() - t1
            for result in results:
                self.messages.append({**result.to_openai_message(), "name": result.name})
            for bad in response.message.invalid_tool_calls:
                self.messages.append({"role": "user", "content": f"Your tool call could not be used: {bad.error}"})
            if results:
                yield ToolOutputs(index, results)

            agent_round = AgentRound(index, response, results, model_s, tool_s)
            rounds.append(agent_round)
            self.rounds_done += 1
            self._record(agent_round, started, schemas)
            if not calls and not response.message.invalid_tool_calls:
                yield Finished(AgentResult(response.message.content, rounds, "answer", list(self.messages)))
                return
        last = rounds[-1].response.message.content if rounds else ""
        yield Finished(AgentResult(last, rounds, "max_rounds", list(self.messages)))

    def _record(self, r: AgentRound, started: float, schemas: list[dict[str, Any]] | None) -> None:
        if self._recorder is None:
            return
        resp = r.response
        # The request as sent: every message before this round's reply and tool results.
        n_after = 1 + len(r.tool_results) + len(resp.message.invalid_tool_calls)
        stats = resp.stats or RequestStats(
            prompt_tokens=resp.prompt_tokens, new_tokens=resp.completion_tokens, total_s=r.model_s,
            finish_reason=resp.finish_reason, drafter=resp.backend,
        )
        request = RequestRecord(
            messages=self.messages[: len(self.messages) - n_after],
            tools=schemas,
            prompt_hash=prompt_hash(resp.prompt_ids) if resp.prompt_ids else "",
            prompt_tokens=resp.prompt_tokens,
            sampling={**asdict(self.sampling), "stop": list(self.sampling.stop), "tool_choice": self._choice,
                      "forced_prefix": resp.forced_prefix, "forced_suffix": resp.forced_suffix},
        )
        records = [
            ToolCallRecord(id=res.call_id, name=res.name, args=call.args, status=res.status,
                           seconds=res.seconds, content=res.content)
            for call, res in zip(resp.message.tool_calls, r.tool_results)
        ]
        self._recorder.write(
            TraceRound.from_stats(
                stats, session_id=self.session_id, round_index=r.index, started_at=started, backend=resp.backend,
                request=request, response=response_record(resp), tool_calls=records, tool_s=r.tool_s,
            )
        )

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
