"""The one exception tree of agentspark.

Every error a user can cause is an ``AgentSparkError`` whose message says what to change.
Third-party errors (transformers, gguf, safetensors, pip) are translated at the boundary with
``raise ... from exc`` so the original stays attached. Bugs in agentspark itself are *not*
wrapped: they raise as whatever they are.

    AgentSparkError
    ├── InvalidRequestError          bad generation input
    │   ├── EmptyPromptError
    │   ├── PromptTooLongError
    │   ├── InvalidSamplingError     temperature, top_p, top_k, max_new_tokens, seed
    │   ├── InvalidDraftLengthError
    │   └── UnknownDrafterError
    ├── ModelLoadError               anything about finding, reading or supporting a model
    │   ├── ModelNotFoundError
    │   ├── UnsupportedModelError
    │   ├── CorruptModelError
    │   └── DefaultModelFetchError
    └── DrafterMismatchError         a drafter that cannot serve this target (tokenizer, vocab)
"""

from __future__ import annotations


class AgentSparkError(Exception):
    """Root of every error agentspark raises on purpose."""


class InvalidRequestError(AgentSparkError, ValueError):
    """A generation request that cannot be served as given."""


class EmptyPromptError(InvalidRequestError):
    pass


class PromptTooLongError(InvalidRequestError):
    pass


class InvalidSamplingError(InvalidRequestError):
    pass


class InvalidDraftLengthError(InvalidRequestError):
    pass


class UnknownDrafterError(InvalidRequestError):
    pass


class ModelLoadError(AgentSparkError):
    """A model could not be found, read or run."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    pass


class UnsupportedModelError(ModelLoadError):
    pass


class CorruptModelError(ModelLoadError):
    pass


class DefaultModelFetchError(ModelLoadError):
    pass


class DrafterMismatchError(AgentSparkError):
    """The drafter does not share the target's tokenizer or vocabulary."""
