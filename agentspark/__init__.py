"""agentspark: lossless speculative decoding for LLM agent loops.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from .drafters import Draft, Drafter, DraftModelDrafter, NgramDrafter
from .engine import Engine, GenerationResult, StreamChunk
from .errors import AgentSparkError
from .model.loading import LoadedModel, load_model
from .sampling import SamplingParams
from .stats import RequestStats, RoundStats
from .verify import Verdict, verify_chain

__version__ = "0.1.0"

__all__ = [
    "AgentSparkError",
    "Draft",
    "DraftModelDrafter",
    "Drafter",
    "Engine",
    "GenerationResult",
    "LoadedModel",
    "NgramDrafter",
    "RequestStats",
    "RoundStats",
    "SamplingParams",
    "StreamChunk",
    "Verdict",
    "load_model",
    "verify_chain",
]
