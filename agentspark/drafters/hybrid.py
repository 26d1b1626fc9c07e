"""HybridDrafter: n-gram lookups first, a learned drafter where they find nothing worth verifying.

Agent turns mix copying (tool arguments, JSON echoed from earlier turns: free to draft by lookup,
long accepted runs) with new text (where only a learned drafter can guess). Each round:

1. The n-gram lookup runs (on the host, about 20 microseconds at 4k tokens: examples/ngram_cost.py).
   If it matched and its running per-token acceptance c (for that match length) promises at least
   as many tokens as the learned drafter has been winning, c / (1 - c) >= gain, the lookup's draft
   is used.
2. Otherwise the learned drafter drafts, if it is paying: ``gain``, the decayed mean of draft
   tokens it got accepted per round it drafted, is at least ``min_gain`` (the break-even: a learned
   draft costs its own forward plus the longer verify). A learned drafter that is not paying is
   skipped, except for one probe round every ``probe_every`` rounds, so that it comes back when
   the text changes.
3. Else the lookup's draft if any (it costs nothing), else no draft (a plain step).

Every choice depends only on the committed tokens and on past rounds' outcomes, never on what is
drafted this round, and the draft carries the chosen drafter's own q: the verifier keeps the
target's distribution exactly (the sampling test covers it). The learned drafter observes every
target forward whoever drafted, so its context cache never has holes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidRequestError
from ..sampling import SamplingParams
from .base import DeviceSchedule, Draft, Drafter
from .ngram import NgramDrafter


class HybridDrafter(Drafter):
    def __init__(self, learned: Drafter, lookup: NgramDrafter | None = None, *, min_gain: float = 0.5,
                 probe_every: int = 16, decay: float = 0.8) -> None:
        if min_gain < 0 or probe_every < 1 or not 0 <= decay < 1:
            raise InvalidRequestError(
                f"need min_gain >= 0, probe_every >= 1 and 0 <= decay < 1, got {min_gain}, {probe_every}, {decay}"
            )
        self.learned = learned
        self.lookup = lookup or NgramDrafter()
        self.name = f"ngram+{learned.name}"
        self.capture_layers = learned.capture_layers
        self.min_gain, self.probe_every, self.decay = min_gain, probe_every, decay
        self.gain = 1.0  # optimistic start: the learned drafter gets tried first
        self.skipped = 0  # rounds since the learned drafter last drafted
        self.source: Drafter | None = None  # who drafted this round
        self.counts = {"ngram": 0, "learned": 0, "none": 0}  # rounds by source (reports, tests)

    def sibling(self) -> HybridDrafter:
        return HybridDrafter(self.learned.sibling(), self.lookup.sibling(), min_gain=self.min_gain,
                             probe_every=self.probe_every, decay=self.decay)

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        self.learned.start(prompt_ids, params, generator)
        self.lookup.start(prompt_ids, params, generator)

    def reusable_context(self) -> int:
        return self.learned.reusable_context()

    def observe(self, hidden: Tensor, start: int) -> None:
        self.learned.observe(hidden, start)

    def bind_device(self, features: Tensor, schedule: DeviceSchedule, *, graphs: bool = True) -> bool:
        return self.learned.bind_device(features, schedule, graphs=graphs)

    def observe_round(self, start: int, count: int) -> None:
        self.learned.observe_round(start, count)

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        found = self.lookup.propose(tokens, max_tokens)
        c = float(found.confidences[0]) if len(found) else 0.0
        if len(found) and c / max(1.0 - c, 1e-6) >= self.gain:
            self.learned.track(tokens)
            return self._use(self.lookup, found)
        due = self.skipped + 1 >= self.probe_every
        if self.gain >= self.min_gain or due:
            draft = self.learned.propose(tokens, max_tokens)
            if len(draft):
                return self._use(self.learned, draft)
        self.skipped += 1
        self.learned.track(tokens)
        return self._use(self.lookup, found) if len(found) else self._use(None, found)

    def _use(self, source: Drafter | None, draft: Draft) -> Draft:
        self.source = source
        self.counts["none" if source is None else "learned" if source is self.learned else "ngram"] += 1
        if source is self.learned:
            self.skipped = 0
        return draft

    def feedback(self, verified: int, accepted: int) -> None:
        if self.source is self.learned:
            self.gain = self.decay * self.gain + (1 - self.decay) * accepted
        if self.source is not None:
            self.source.feedback(verified, accepted)
        self.source = None
