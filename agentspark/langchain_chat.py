"""ChatAgentSpark: any agentspark backend as a LangChain chat model (``BaseChatModel``).

    llm = ChatAgentSpark(backend=LocalBackend(engine)).bind_tools([multiply])
    ai = llm.invoke([HumanMessage("What is 6 times 7?")])  # ai.tool_calls: [{"name": "multiply", ...}]

Replies are ``AIMessage`` s with ``tool_calls`` / ``invalid_tool_calls`` (unusable tool JSON from
the model lands there, never raises), ``usage_metadata`` and ``response_metadata`` (finish_reason,
model_name, agentspark_stats, forced_prefix). The raw model text rides in
``additional_kwargs["agentspark_raw_text"]``; sent back unedited, it lets a local backend
re-render the turn verbatim and reuse its KV cache.

Streaming, so that the sum of ``stream()``'s chunks equals ``invoke()`` (content and tool calls):
without tools (or with tool_choice "none") each backend delta is a chunk as it comes. With tools,
the parser cuts markup (``<tool_call>`` tags, code fences, bare JSON calls) out of the final
content and strips it, so text streams only up to where markup could begin (``<tool_call>``, a
fence, ``{`` or ``[``, or a partial one at the end) and without surrounding whitespace; the rest is
held. Text before the first markup survives parsing verbatim, so what streamed is a prefix of the
final content; the last chunk carries the remainder, ``tool_call_chunks`` (JSON args, one index per
call), usage and metadata. Prose before a call streams live; the call arrives whole at the end.
LangChain rebuilds a stream's ``invalid_tool_calls`` from tool-call chunks (without the error); an
invalid call whose raw text reads as a JSON object would pass for a valid one there, so it is left
out of the stream (``invoke`` has it).

Async: ``_agenerate`` runs the backend in a worker thread; ``_astream`` pumps the backend iterator
through a daemon thread into an ``asyncio.Queue``, never blocking the event loop. Calls into one
backend are serialized (a local engine's KV cache is not thread-safe).
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from .agent.tool_prompt import RAW_TEXT_KEY
from .backends.base import Backend, BackendResponse
from .lc.messages import check_tool_choice, normalize_tool_choice, to_backend_messages
from .lc.streaming import Gate, iterate_in_thread, reads_as_object
from .lc.structured import grammar_of, structured_output
from .sampling import SamplingParams

__all__ = ["ChatAgentSpark", "normalize_tool_choice", "to_backend_messages"]

_HAS_POSITION = "chunk_position" in AIMessageChunk.model_fields  # langchain-core >= 1.0
_LOCKS: weakref.WeakKeyDictionary[Backend, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(backend: Backend) -> threading.RLock:
    """One lock per backend object: calls into it are serialized across threads."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(backend, threading.RLock())


class ChatAgentSpark(BaseChatModel):
    """A LangChain chat model over an agentspark ``Backend`` (local speculative, remote, scripted)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Backend
    temperature: float = 0.0
    max_tokens: int = 512
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    model_name: str | None = None  # what traces name (LangSmith's ls_model_name); default: the backend's name

    @property
    def _llm_type(self) -> str:
        return "agentspark"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "model_name": self.model_name or self.backend.name,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                "top_k": self.top_k, "seed": self.seed, "stop": self.stop}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = self.model_name or self.backend.name
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the backend's own tokenizer (a local engine's); never fetched from a hub.
        A backend without one (remote) gets a stand-in of one id per 4 UTF-8 bytes, which is
        what LangChain's token counting needs (an estimate), said here rather than hidden."""
        engine = getattr(self.backend, "engine", None)
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is not None:
            return list(tokenizer.encode(text, add_special_tokens=False))
        return list(range(max(1, -(-len(text.encode()) // 4)) if text else 0))

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, method: str = "function_calling",
                               **kwargs: Any) -> Any:
        """``function_calling`` (LangChain's: a forced call of a tool with the schema),
        ``json_schema`` (decoding constrained to the schema: the reply is that JSON) or
        ``json_mode`` (constrained to any JSON object; the schema only parses it)."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_schema", "json_mode"):
            raise ValueError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        return structured_output(self, schema, include_raw=include_raw, json_mode=method == "json_mode")

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, strict: bool | None = None,
                   **kwargs: Any) -> Any:
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = normalize_tool_choice(tool_choice)
            check_tool_choice(kwargs["tool_choice"], formatted)
        return self.bind(tools=formatted, **kwargs)

    # -- request and response ------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        tools = [convert_to_openai_tool(t) for t in kwargs.pop("tools", None) or []] or None
        choice = normalize_tool_choice(kwargs.pop("tool_choice", None))
        check_tool_choice(choice, tools)
        params = {k: kwargs.pop(k) for k in ("temperature", "max_tokens", "top_p", "top_k", "seed") if k in kwargs}
        grammar = grammar_of(kwargs.pop("response_format", None))
        logprobs, top = kwargs.pop("logprobs", None), kwargs.pop("top_logprobs", None)
        if top is not None and not logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        parallel = bool(kwargs.pop("parallel_tool_calls", False))
        unknown = [k for k in kwargs if not k.startswith("ls_")]
        if unknown:
            raise TypeError(f"ChatAgentSpark got unexpected keyword arguments: {unknown}")
        stop = stop if stop is not None else self.stop
        sampling = SamplingParams(
            temperature=params.get("temperature", self.temperature), top_k=params.get("top_k", self.top_k),
            top_p=params.get("top_p", self.top_p), seed=params.get("seed", self.seed),
            max_new_tokens=params.get("max_tokens", self.max_tokens), stop=tuple(stop or ()), grammar=grammar,
            logprobs=(top or 0) if logprobs else None, parallel_tool_calls=parallel,
        )
        return {"messages": to_backend_messages(messages), "tools": tools, "sampling": sampling, "tool_choice": choice}

    @staticmethod
    def _fields(r: BackendResponse) -> dict[str, Any]:
        """What an AIMessage and a stream's final chunk both carry, besides content and calls."""
        out: dict[str, Any] = {
            "usage_metadata": {"input_tokens": r.prompt_tokens, "output_tokens": r.completion_tokens,
                               "total_tokens": r.prompt_tokens + r.completion_tokens},
            "response_metadata": {"finish_reason": r.finish_reason, "model_name": r.backend,
                                  "agentspark_stats": r.stats.to_dict(rounds=False) if r.stats else None,
                                  "forced_prefix": r.forced_prefix},
        }
        if r.logprobs is not None:  # bind(logprobs=True[, top_logprobs=k]): where langchain-openai puts them
            out["response_metadata"]["logprobs"] = {"content": r.logprobs}
        if r.message.raw_text is not None:
            out["additional_kwargs"] = {RAW_TEXT_KEY: r.message.raw_text}
        return out

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        with _lock_for(self.backend):
            r = self.backend.complete(**request)
        m = r.message
        ai = AIMessage(
            content=m.content,
            tool_calls=[{"name": c.name, "args": c.args, "id": c.id, "type": "tool_call"} for c in m.tool_calls],
            invalid_tool_calls=[{"name": None, "args": c.raw, "id": None, "error": c.error,
                                 "type": "invalid_tool_call"} for c in m.invalid_tool_calls],
            **self._fields(r),
        )
        return ChatResult(generations=[ChatGeneration(message=ai)], llm_output={"model_name": r.backend})

    def _chunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                ) -> Iterator[ChatGenerationChunk]:
        """The stream, without callbacks (the sync and async paths fire those themselves)."""
        request = self._request(messages, stop, kwargs)
        gate = Gate(hold=bool(request["tools"]) and request["tool_choice"] != "none")
        with _lock_for(self.backend):
            for piece in self.backend.stream(**request):
                if piece.delta and (text := gate.feed(piece.delta)):
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if piece.response is None:
                    continue
                r = piece.response
                calls = [{"name": c.name, "args": json.dumps(c.args, ensure_ascii=False), "id": c.id,
                          "index": i, "type": "tool_call_chunk"} for i, c in enumerate(r.message.tool_calls)]
                for c in r.message.invalid_tool_calls:
                    if not reads_as_object(c.raw):
                        calls.append({"name": None, "args": c.raw, "id": None, "index": len(calls),
                                      "type": "tool_call_chunk"})
                extra = {"chunk_position": "last"} if _HAS_POSITION else {}
                last = AIMessageChunk(content=gate.finish(r.message.content), tool_call_chunks=calls,
                                      **self._fields(r), **extra)
                yield ChatGenerationChunk(message=last)
                return

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs):
            if run_manager:  # langchain-core 1.x passes none and fires the callbacks itself
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(lambda: self._chunks(messages, stop, kwargs)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

