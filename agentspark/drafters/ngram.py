"""N-gram prompt lookup: copy what followed the latest earlier occurrence of the last n tokens.

Agents copy a lot from tool results and earlier turns, so this training-free drafter is strong.
The search covers the whole context (prompt and generated tokens). It is deterministic: q is
one-hot, so the verifier accepts d_k with probability p_k(d_k).

Its confidences are running estimates of the per-token acceptance for each match length n
(a longer matched suffix predicts better), learned from the verifier's feedback with decay so
they follow the text; the scheduler uses them to verify only what is likely to pay.

It stays on the host and costs a few microseconds a round: ``propose`` reads an incremental
index (per n, each n-gram's latest start whose continuation exists), extended only by the tokens
committed since the last call. ``lookup`` is the reference: a numpy scan of the whole sequence
that returns the same thing, O(context) a call (the property test holds the two equal).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InvalidDraftLengthError
from ..sampling import SamplingParams
from .base import Drafter, HostDraft


class NgramDrafter(Drafter):
    name = "ngram"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram <= 64:
            raise InvalidDraftLengthError(
                f"n-gram sizes must satisfy 1 <= min_ngram <= max_ngram <= 64, got {min_ngram}..{max_ngram}"
            )
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        # per match length n: decayed counts of accepted / rejected draft tokens (prior 1 / 1)
        self._hits = dict.fromkeys(range(min_ngram, max_ngram + 1), 1.0)
        self._misses = dict.fromkeys(range(min_ngram, max_ngram + 1), 1.0)
        self._last_n = 0
        self._reset_index()

    def sibling(self) -> NgramDrafter:
        return NgramDrafter(self.max_ngram, self.min_ngram)

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        # Index the prompt now, with the prefill, rather than in the first round. A session's next
        # prompt usually extends the last context, and then only what was appended is indexed.
        self._index_to(prompt_ids)

    def lookup(self, tokens: list[int] | np.ndarray, max_tokens: int) -> tuple[list[int], int]:
        """The continuation (<= max_tokens) of the most recent earlier match of the longest
        suffix n-gram, and that n (0 when nothing matched)."""
        seq = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            pattern = seq[-n:]
            # window j is seq[j:j+n] for j < len-n: its continuation seq[j+n] always exists
            windows = sliding_window_view(seq[:-1], n)  # [len-n, n]
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if hits.size:
                j = int(hits[-1]) + n
                return seq[j : j + max_tokens].tolist(), n
        return [], 0

    def _reset_index(self) -> None:
        self._seq: list[int] = []  # the sequence indexed
        # per n: n-gram -> its latest start j with a continuation, i.e. j + n <= len(seq) - 1
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}

    def _index_to(self, tokens: list[int]) -> None:
        """Bring the index to ``tokens``: add the starts that the appended tokens made valid, or
        rebuild when ``tokens`` does not extend the indexed sequence (another request). The prefix
        check is one list comparison, a few microseconds at 4k tokens."""
        old = len(self._seq)
        if len(tokens) < old or tokens[:old] != self._seq:
            self._reset_index()
            old = 0
        seq = self._seq
        seq.extend(int(t) for t in tokens[old:])
        for n, index in self._index.items():
            # the last token (the anchor) gains a continuation: starts old-n .. len-1-n become valid
            for j in range(max(0, old - n), len(seq) - n):
                index[tuple(seq[j : j + n])] = j  # ascending j: the latest start wins

    def _indexed_lookup(self, tokens: list[int], max_tokens: int) -> tuple[list[int], int]:
        """What ``lookup`` returns, from the index."""
        self._index_to(tokens)
        seq = self._seq
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            j = self._index[n].get(tuple(seq[-n:]))
            if j is not None:
                return seq[j + n : j + n + max_tokens], n
        return [], 0

    def propose(self, tokens: list[int], max_tokens: int) -> HostDraft:
        found, n = self._indexed_lookup(tokens, max_tokens) if max_tokens > 0 else ([], 0)
        self._last_n = n
        confidence = self._hits[n] / (self._hits[n] + self._misses[n]) if n else 0.0
        # lists: tensors only if a reader asks (the engine moves them); the confidence rounded to
        # float32, as the tensor it was (the schedule sees the same numbers either way)
        return HostDraft(found, float(np.float32(confidence)))

    def feedback(self, verified: int, accepted: int) -> None:
        n = self._last_n
        if not n:
            return
        decay = 0.9  # about the last ten rounds of this match length count
        if not verified:
            # Not verified, nothing learned: drift back towards the prior (1, 1) so that a match
            # length once judged poor gets tried again as the text changes.
            self._hits[n] = 1.0 + decay * (self._hits[n] - 1.0)
            self._misses[n] = 1.0 + decay * (self._misses[n] - 1.0)
            return
        self._hits[n] = decay * self._hits[n] + accepted
        self._misses[n] = decay * self._misses[n] + (1 if accepted < verified else 0)
