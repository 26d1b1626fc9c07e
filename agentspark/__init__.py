"""agentspark: lossless speculative decoding for LLM agent loops.

The public API is what ``__all__`` lists; everything else is private and may change. The engine
core is imported eagerly; the agent runtime (agent loop, backends, tools, traces, server,
LangChain adapter) loads on first use, so that ``import agentspark`` needs only torch and
transformers (the GPU machine has no pydantic or FastAPI).
"""

from importlib import import_module
from typing import Any

from .batch import BatchEngine, BatchRequest
from .drafters import Draft, Drafter, DraftModelDrafter, NgramDrafter
from .drafters.dspark import DSparkDrafter
from .drafters.factory import build_drafter
from .drafters.hybrid import HybridDrafter
from .engine import Engine, GenerationResult, StreamChunk
from .errors import AgentSparkError
from .model.loading import LoadedModel, load_model
from .sampling import SamplingParams
from .stats import RequestStats, RoundStats
from .verify import Verdict, verify_chain

__version__ = "0.1.0"

_LAZY = {
    "Agent": "agentspark.agent.loop",
    "AgentResult": "agentspark.agent.loop",
    "BatchBackend": "agentspark.backends.batched",
    "ChatAgentSpark": "agentspark.langchain_chat",
    "LocalBackend": "agentspark.backends.local",
    "RemoteBackend": "agentspark.backends.remote",
    "ScriptedBackend": "agentspark.backends.scripted",
    "Tool": "agentspark.tools",
    "ToolRegistry": "agentspark.tools",
    "TraceRecorder": "agentspark.traces",
    "create_app": "agentspark.server",
    "read_trace": "agentspark.traces",
    "tool": "agentspark.tools",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agentspark' has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentResult",
    "AgentSparkError",
    "BatchBackend",
    "BatchEngine",
    "BatchRequest",
    "ChatAgentSpark",
    "DSparkDrafter",
    "Draft",
    "DraftModelDrafter",
    "Drafter",
    "Engine",
    "GenerationResult",
    "HybridDrafter",
    "LoadedModel",
    "LocalBackend",
    "NgramDrafter",
    "RemoteBackend",
    "RequestStats",
    "RoundStats",
    "SamplingParams",
    "ScriptedBackend",
    "StreamChunk",
    "Tool",
    "ToolRegistry",
    "TraceRecorder",
    "Verdict",
    "build_drafter",
    "create_app",
    "load_model",
    "read_trace",
    "tool",
    "verify_chain",
]
