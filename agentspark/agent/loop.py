"""Agent: the multi-turn tool-calling loop over any backend.

A round = one model request + the tool calls it asked for. The loop is a generator of events
(``stream``); ``run`` drains it. Error policy (smolagents/langchain): a model's mistakes —
malformed tool-call JSON, an unknown tool, invalid arguments, a tool's exception or timeout —
become messages fed back to the model and the loop goes on; a bug in our code raises.

The loop guards itself against the two ways small models stall (both visible in the trace, as a
round's ``guard_notes``, and in ``AgentRound.notes``):

* A repeated call: a call with the same tool name and the same arguments (canonical JSON) as one
  made earlier in the same user turn is not run again. Its tool result is a note that says so and
  repeats the earlier result, so the model sees what it asked for and is told to move on. Repeats
  are judged within the turn, not the session: a new user turn may mean the world changed ("I
  edited the file, read it again"), while inside a turn re-running a call only loops.
* An empty answer: a reply with no text and no calls gets one nudge (a user message asking for
  the answer, with the tool results at hand); a second empty reply ends the turn with
  ``stopped="empty_answer"`` instead of passing ``""`` off as the answer.

A turn ends (``AgentResult.stopped``) on an answer ("answer"), after ``max_rounds`` rounds
("max_rounds"), or on an empty answer that the nudge did not fix ("empty_answer").

The messages persist across ``run`` calls (a session): a local backend then prefills only what
each round appended. With ``trace=``, every finished round is appended to a JSONL trace and
flushed before the next round starts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, BackendResponse, ToolCallRequest, ToolChoice, response_record
from ..sampling import SamplingParams
from ..stats import RequestStats
from ..tools import Tool, ToolCall, ToolRegistry, ToolResult, ToolStatus
from ..traces import RequestRecord, ToolCallRecord, TraceRecorder, TraceRound, prompt_hash

STOP_REASONS = ("answer", "max_rounds", "empty_answer")
REPEATED: ToolStatus = "repeated"  # the status of a call the loop did not run again
# How much of an earlier result a repeat's note shows again: enough for a small model to answer
# from it without looking back, not so much that every repeat doubles the context.
NOTE_RESULT_CHARS = 1500
NUDGE_TASK_CHARS = 500


@dataclass
class AgentRound:
    index: int  # round number within the session
    response: BackendResponse
    tool_results: list[ToolResult]
    model_s: float
    tool_s: float
    notes: list[str] = field(default_factory=list)  # what the loop's guards did in this round


@dataclass
class AgentResult:
    answer: str
    rounds: list[AgentRound]
    stopped: str  # one of STOP_REASONS: "answer" | "max_rounds" | "empty_answer"
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


@dataclass
class _Turn:
    """What the guards remember during one user turn."""

    task: str
    made: dict[str, tuple[int, ToolResult]] = field(default_factory=dict)  # call key -> (round, its result)
    tool_results: int = 0  # results the model has been given in this turn
    nudged: bool = False


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
        guard_repeats: bool = True,
    ) -> None:
        """``guard_repeats=False`` runs every call, repeats included (for tools whose identical
        calls may legitimately differ within a turn, e.g. after a call that changed their state)."""
        self.backend = backend
        self.registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(list(tools))
        self.sampling = sampling or SamplingParams(max_new_tokens=512)
        self.max_rounds = max_rounds
        self.guard_repeats = guard_repeats
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self.rounds_done = 0
        self._choice: ToolChoice = "auto"  # the tool_choice of the round in flight (for the trace)
        self._recorder = trace if isinstance(trace, TraceRecorder) or trace is None else TraceRecorder(trace)

    def run(self, task: str, *, tool_choice: ToolChoice = "auto") -> AgentResult:
        """Run one user turn to its answer. ``tool_choice`` applies to this turn's first round (a
        local backend forces a named or ``required`` choice with the tool-call grammar)."""
        for event in self.stream(task, tool_choice=tool_choice):
            if isinstance(event, Finished):
                return event.result
        raise AssertionError("agent stream ended without a result")  # pragma: no cover

    def stream(self, task: str, *, tool_choice: ToolChoice = "auto") -> Iterator[AgentEvent]:
        self.messages.append({"role": "user", "content": task})
        schemas = self.registry.openai_schemas() or None
        rounds: list[AgentRound] = []
        turn = _Turn(task)
        choice = tool_choice
        for n in range(self.max_rounds):
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
            results, notes = self._run_calls(response.message.tool_calls, index, turn)
            tool_s = time.perf_counter() - t1
            for result in results:
                self.messages.append({**result.to_openai_message(), "name": result.name})
            for bad in response.message.invalid_tool_calls:
                self.messages.append({"role": "user", "content": f"Your tool call could not be used: {bad.error}"})
            if results:
                yield ToolOutputs(index, results)
            turn.tool_results += len(results)

            stopped, nudge, verdict_notes = self._verdict(response, turn, last_round=n == self.max_rounds - 1)
            notes += verdict_notes
            agent_round = AgentRound(index, response, results, model_s, tool_s, notes)
            rounds.append(agent_round)
            self.rounds_done += 1
            self._record(agent_round, started, schemas, stopped)  # before the nudge: it is the next request's
            if stopped is not None:
                yield Finished(AgentResult(_answer(rounds, stopped), rounds, stopped, list(self.messages)))
                return
            if nudge is not None:
                self.messages.append({"role": "user", "content": nudge})
        # only with max_rounds < 1: every last round stops the turn itself
        yield Finished(AgentResult("", rounds, "max_rounds", list(self.messages)))

    # ---- guards ------------------------------------------------------------------------------

    def _run_calls(self, requested: list[ToolCallRequest], index: int, turn: _Turn) -> tuple[list[ToolResult], list[str]]:
        """Run the round's calls, except repeats; (results in call order, notes on the repeats)."""
        calls = [ToolCall(id=c.id, name=c.name, args=c.args) for c in requested]
        keys = [_call_key(c) if self.guard_repeats else None for c in calls]
        first_at: dict[str, int] = {}  # key -> position of its first call in this reply
        run_at = []
        for i, key in enumerate(keys):
            if key is None or (key not in turn.made and key not in first_at):
                run_at.append(i)
                if key is not None:
                    first_at[key] = i
        ran = dict(zip(run_at, self.registry.run_sync([calls[i] for i in run_at]))) if run_at else {}
        for key, i in first_at.items():
            turn.made[key] = (index, ran[i])
        results, notes = [], []
        for i, (call, key) in enumerate(zip(calls, keys)):
            if i in ran:
                results.append(ran[i])
                continue
            made_in, earlier = turn.made[key]
            results.append(_repeat_result(call, made_in, earlier, same_reply=made_in == index))
            notes.append(f"repeat: {call.id} {key} was already made ({earlier.call_id}, round {made_in}); not run again")
        return results, notes

    def _verdict(self, response: BackendResponse, turn: _Turn, *, last_round: bool) -> tuple[str | None, str | None, list[str]]:
        """(why the turn stops now, or None; the nudge to send before the next round, or None; notes)."""
        message = response.message
        if message.tool_calls or message.invalid_tool_calls:
            return ("max_rounds" if last_round else None), None, []
        if message.content.strip():
            return "answer", None, []
        if turn.nudged:
            return "empty_answer", None, ["empty answer again after the nudge: the turn ends without an answer"]
        if last_round:
            return "empty_answer", None, ["empty answer in the last round: the turn ends without an answer"]
        turn.nudged = True
        return None, _nudge(turn), ["empty answer: asked the model once more for its answer"]

    # ---- trace -------------------------------------------------------------------------------

    def _record(self, r: AgentRound, started: float, schemas: list[dict[str, Any]] | None, stopped: str | None) -> None:
        if self._recorder is None:
            return
        resp = r.response
        # The request as sent: every message before this round's reply and tool results.
        n_after = 1 + len(r.tool_results) + len(resp.message.invalid_tool_calls)
        stats = resp.stats or RequestStats(
            prompt_tokens=resp.prompt_tokens, new_tokens=resp.completion_tokens, total_s=r.model_s,
            finish_reason=resp.finish_reason, drafter=resp.backend,
        )
        # forced_prefix / forced_suffix: empty when the call was forced by the tool-call grammar (a
        # local backend's default); replay and audit read them to rebuild the round on its path.
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
                stopped=stopped, guard_notes=r.notes,
            )
        )

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()


def _call_key(call: ToolCall) -> str | None:
    """``name`` + canonical JSON of the arguments; None when they cannot be compared as JSON."""
    try:
        args = json.dumps(call.args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # arguments built in code, not parsed from JSON
        return None
    return f"{call.name} {args}"


def _repeat_result(call: ToolCall, made_in: int, earlier: ToolResult, *, same_reply: bool) -> ToolResult:
    """The tool result a repeated call gets: the earlier result again, and what to do instead.

    Written for small models: where the call was made, its result right here (so nothing has to
    be looked up), and two concrete ways on."""
    where = "earlier in this same reply" if same_reply else f"before (round {made_in})"
    shown = earlier.content
    if len(shown) > NOTE_RESULT_CHARS:
        shown = shown[:NOTE_RESULT_CHARS] + " [... cut; the full result is above]"
    outcome = "Its result was" if earlier.ok else f"It failed ({earlier.status})"
    note = (f"This exact call ({call.name} with these arguments) was already made {where}, so it was not run "
            f"again. {outcome}:\n{shown}\n"
            "Do not repeat it. Answer the user now using this result, or make a different call.")
    return ToolResult(call_id=call.id, name=call.name, content=note, status=REPEATED, seconds=0.0)


def _nudge(turn: _Turn) -> str:
    """The user message after an empty reply: what is wanted, restated (a small model may have
    lost the question under the tool results)."""
    task = turn.task if len(turn.task) <= NUDGE_TASK_CHARS else turn.task[:NUDGE_TASK_CHARS] + " ..."
    using = " using the tool results above" if turn.tool_results else ""
    return f"Your reply was empty. Answer my question{using}, in words: {task}"


def _answer(rounds: list[AgentRound], stopped: str) -> str:
    return rounds[-1].response.message.content if stopped != "empty_answer" else ""
