"""A request's bookkeeping, shared by the single-request engine and the batch engine.

``_Request`` is what both paths commit through, one token at a time (budget, EOS, stop strings,
text deltas, the grammar's state); ``new_request`` checks a prompt against the model and the cache
and makes one; ``commit_tokens`` commits a round's tokens (a stop inside an accepted block cuts
there); ``reusable_prefix`` is how much of a prompt a cache holding another sequence can keep.
``GenerationResult`` and ``StreamChunk`` are what callers get back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .constraints import Constraint, masked_logits
from .detokenize import TextTracker
from .errors import InvalidRequestError, PromptTooLongError
from .logprobs import TokenLogprob, token_logprobs
from .model.loading import LoadedModel
from .sampling import SamplingParams
from .stats import RequestStats


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only
    prompt_ids: list[int]
    stats: RequestStats
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when SamplingParams.logprobs asked

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason


@dataclass
class StreamChunk:
    delta: str  # text released by this chunk
    token_ids: list[int]  # tokens committed by this chunk
    result: GenerationResult | None = None  # set on the last chunk only
    logprobs: list[TokenLogprob] | None = None  # of token_ids, when the request asked for them


@dataclass
class _Request:
    """Commit bookkeeping shared by both paths: every token passes ``commit`` one at a time."""

    prompt_ids: list[int]
    params: SamplingParams
    budget: int  # max new tokens, already clipped to the cache
    eos: frozenset[int]
    tracker: TextTracker
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    finish_reason: str = ""
    constraint: Constraint | None = None  # the grammar's state, when the request has one
    logprobs: list[TokenLogprob] | None = None  # of every committed token, when params.logprobs is set

    def commit(self, token: int) -> str:
        self.tokens.append(token)
        delta = self.tracker.push(token)
        if token in self.eos or self.tracker.stopped:
            self.finish_reason = "stop"
        elif self.generated >= self.budget:
            self.finish_reason = "length"
        return delta

    @property
    def generated(self) -> int:
        return len(self.tokens) - len(self.prompt_ids)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)


def new_request(target: LoadedModel, capacity: int, prompt_ids: list[int], params: SamplingParams) -> _Request:
    """A request's bookkeeping, its prompt checked against the model and a cache of ``capacity``."""
    vocab = target.model.cfg.vocab_size
    if any(not 0 <= t < vocab for t in prompt_ids):
        raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab})")
    if len(prompt_ids) >= capacity:
        raise PromptTooLongError(
            f"the prompt has {len(prompt_ids)} tokens; the context holds {capacity} "
            "(prompt + new tokens): shorten the prompt or raise max_seq_len"
        )
    if params.stop and target.tokenizer is None:
        raise InvalidRequestError("stop strings need a tokenizer; this model has none")
    budget = min(params.max_new_tokens, capacity - len(prompt_ids))
    constraint = None
    if params.grammar is not None:
        constraint = Constraint(params.grammar, target.tokenizer, vocab, target.eos_token_ids)
    return _Request(prompt_ids=prompt_ids, params=params, budget=budget, eos=target.eos_token_ids,
                    tracker=TextTracker(target.tokenizer, params.stop), tokens=list(prompt_ids), constraint=constraint,
                    logprobs=None if params.logprobs is None else [])


def common_prefix(a: Sequence, b: Sequence) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable_prefix(cached_ids: list[int], prompt_ids: list[int]) -> int:
    """How many leading prompt tokens a cache holding K/V of ``cached_ids`` can keep: their common
    prefix, short of the prompt's last token (its logits are needed, so it is always fed)."""
    return min(common_prefix(cached_ids, prompt_ids), max(0, len(prompt_ids) - 1))


def first_logits(req: _Request, logits: Tensor) -> Tensor:
    """A prefill's last logits [1, V], masked by the request's grammar if it has one."""
    return logits if req.constraint is None else masked_logits(logits, req.constraint.masks([]))


def commit_tokens(req: _Request, new: list[int], logits: Tensor | None = None) -> tuple[list[int], str]:
    """Commit tokens one at a time; a stop inside an accepted block cuts there. ``logits`` [n, V]
    (row i decided new[i]): where the request reports logprobs, those of the committed tokens."""
    committed: list[int] = []
    delta = ""
    for token in new:
        delta += req.commit(token)
        committed.append(token)
        if req.done:
            delta += req.tracker.flush()  # release what was held back for a stop string
            break
    if req.constraint is not None:
        req.constraint.commit(committed)
    if req.logprobs is not None and committed:
        if logits is None:
            raise AssertionError("a request reporting logprobs committed tokens without their logits")
        req.logprobs.extend(token_logprobs(logits, committed, req.params.logprobs))
    return committed, delta


def chunk_of(req: _Request, committed: list[int], delta: str) -> StreamChunk:
    """The chunk of a commit: its text, its tokens and (when asked for) their logprobs."""
    logprobs = None if req.logprobs is None else req.logprobs[len(req.logprobs) - len(committed):]
    return StreamChunk(delta=delta, token_ids=committed, logprobs=logprobs)
