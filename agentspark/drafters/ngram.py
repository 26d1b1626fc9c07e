"""N-gram prompt lookup: copy what followed the latest earlier occurrence of the last n tokens.

Agents copy a lot from tool results and earlier turns, so this training-free drafter is strong.
The search covers the whole context (prompt and generated tokens). It is deterministic: q is
one-hot, so the verifier accepts d_k with probability p_k(d_k).

Its confidences are running estimates of each draft position's acceptance given the positions
before it were accepted, per match length n (a longer matched suffix predicts better), learned
from the verifier's feedback with decay so they follow the text; the scheduler uses them to verify
only what is likely to pay. Per position, because a copy that survived its first tokens tends to
go on: one rate for every position (survival c^j) made the deep tokens of a long copy look poor,
and the batch schedule, which pays for every extra depth of its padded rows, stopped short of
what a fixed k = 3 verified (the H200, C = 4: adaptive 0.93-0.97 of k = 3, run 37).

It stays on the host and costs a few microseconds a round: ``propose`` reads an incremental
index (per n, each n-gram's latest start whose continuation exists), extended only by the tokens
committed since the last call. ``lookup`` is the reference: a numpy scan of the whole sequence
that returns the same thing, O(context) a call (the property test holds the two equal).
"""

from __future__ import annotations

from array import array

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
        # per match length n, per draft position j (0-based, grown on demand): decayed counts of
        # the rounds whose verify reached d_j and accepted / rejected it (prior 1 / 1)
        sizes = range(min_ngram, max_ngram + 1)
        self._hits: dict[int, list[float]] = {n: [] for n in sizes}
        self._misses: dict[int, list[float]] = {n: [] for n in sizes}
        # per n: the conditional acceptance per position, float32-rounded, kept until feedback
        # changes that n (propose runs every row every drafting round: x 64 rows on the H200)
        self._conf: dict[int, list[float]] = {n: [] for n in sizes}
        # per n: the per-token rate over all positions (decayed accepted / rejected counts): what
        # HybridDrafter weighs the lookup against its learned drafter by, c / (1 - c) tokens
        self._rate = {n: [1.0, 1.0] for n in sizes}
        self._last_n = self._drafted = 0  # the last propose's match length and draft length
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
        seq.extend(map(int, tokens[old:]))
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

    DECAY = 0.9  # about the last ten observations of a (match length, position) count

    def propose(self, tokens: list[int], max_tokens: int) -> HostDraft:
        found, n = self._indexed_lookup(tokens, max_tokens) if max_tokens > 0 else ([], 0)
        self._last_n, self._drafted = n, len(found)
        # lists: tensors only if a reader asks (the engine moves them); the confidences rounded to
        # float32, as the tensor they were (the schedule sees the same numbers either way)
        return HostDraft(found, self.confidences(n, len(found)) if found else [])

    def confidences(self, n: int, length: int) -> list[float]:
        """P(d_j accepted | d_<j accepted) for j = 1..length of a match of length n (0.5 before
        any feedback there)."""
        conf = self._conf[n]
        if len(conf) < length:
            hits, misses = self._grown(n, length)
            conf[len(conf):] = _conditionals(hits[len(conf):], misses[len(conf):])
        return conf[:length]

    def token_rate(self) -> float:
        """The last match length's per-token acceptance over all positions (0 without a match)."""
        n = self._last_n
        if not n:
            return 0.0
        hits, misses = self._rate[n]
        return float(np.float32(hits / (hits + misses)))

    def _grown(self, n: int, length: int) -> tuple[list[float], list[float]]:
        hits, misses = self._hits[n], self._misses[n]
        if len(hits) < length:
            hits.extend([1.0] * (length - len(hits)))
            misses.extend([1.0] * (length - len(misses)))
        return hits, misses

    def feedback(self, verified: int, accepted: int) -> None:
        n = self._last_n
        if not n:
            return
        decay = self.DECAY
        rate = self._rate[n]
        hits, misses = self._grown(n, self._drafted)  # verified <= drafted
        # (the positions' updates as slice assignments of comprehensions: the same floats as a loop
        # over the indices, at about half its cost; the adaptive batch's drafted-but-unverified
        # rows drift all 7 positions every round)
        if not verified:
            # Not verified, nothing learned: drift back towards the prior (1, 1) so that a match
            # length once judged poor gets tried again as the text changes.
            rate[0], rate[1] = 1.0 + decay * (rate[0] - 1.0), 1.0 + decay * (rate[1] - 1.0)
            d = self._drafted
            hits[:d] = [1.0 + decay * (h - 1.0) for h in hits[:d]]
            misses[:d] = [1.0 + decay * (m - 1.0) for m in misses[:d]]
        else:
            rate[0], rate[1] = decay * rate[0] + accepted, decay * rate[1] + (1 if accepted < verified else 0)
            # the verify reached d_1 .. d_{a+1} (d_{a+1} only if it was verified): the accepted ones
            # are hits of their position, the first rejected one a miss; deeper ones were not
            # reached and say nothing (their counts are left as they are)
            if accepted:
                hits[:accepted] = [decay * h + 1.0 for h in hits[:accepted]]
                misses[:accepted] = [decay * m for m in misses[:accepted]]
            if accepted < verified:
                hits[accepted], misses[accepted] = decay * hits[accepted], decay * misses[accepted] + 1.0
        # the cached conditionals of the positions changed (a verify changes only 1 .. a + 1)
        conf = self._conf[n]
        upto = min(self._drafted if not verified else min(accepted + 1, verified), len(conf))
        if upto:
            conf[:upto] = _conditionals(hits[:upto], misses[:upto])


def _conditionals(hits: list[float], misses: list[float]) -> list[float]:
    """hits / (hits + misses) per position, float32-rounded in one C pass (np.float32 per value
    cost ~1 us each)."""
    return array("f", [h / (h + m) for h, m in zip(hits, misses)]).tolist()
