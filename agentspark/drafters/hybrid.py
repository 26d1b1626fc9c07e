"""HybridDrafter: n-gram lookups first, a learned drafter where they find nothing worth verifying.

Agent turns mix copying (tool arguments, JSON echoed from earlier turns: free to draft by lookup,
long accepted runs) with new text (where only a learned drafter can guess). Each round:

1. The n-gram lookup runs (on the host, about 20 microseconds at 4k tokens: examples/ngram_cost.py).
   If it matched and its running per-token acceptance c (for that match length, over all
   positions: ``NgramDrafter.token_rate``) promises at least as many tokens as the learned drafter
   has been winning, c / (1 - c) >= gain, the lookup's draft is used.
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
from .base import DeviceSchedule, Draft, Drafter, propose_rows
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

    def track(self, tokens: list[int]) -> None:
        self.learned.track(tokens)

    def observe_later(self, hidden: Tensor, start: int, *, owned: bool = False) -> None:
        self.learned.observe_later(hidden, start, owned=owned)

    def bind_device(self, features: Tensor, schedule: DeviceSchedule, *, graphs: bool = True) -> bool:
        return self.learned.bind_device(features, schedule, graphs=graphs)

    def observe_round(self, start: int, count: int) -> None:
        self.learned.observe_round(start, count)

    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        found, wants_learned = self._lookup_first(tokens, max_tokens)
        if not wants_learned:
            return found
        return self._after_learned(tokens, found, self.learned.propose(tokens, max_tokens))

    @staticmethod
    def propose_rows(drafters: list[HybridDrafter], tokens: list[list[int]], rooms: list[int]) -> list[Draft]:
        """Each row's lookup first, then one batched learned draft (the learned kind's
        ``propose_rows``) for the rows whose rule asks for it: the same choices as ``propose``."""
        out: list[Draft | None] = [None] * len(drafters)
        wants: list[tuple[int, Draft]] = []
        for i, (d, toks, room) in enumerate(zip(drafters, tokens, rooms)):
            found, wants_learned = d._lookup_first(toks, room)
            if wants_learned:
                wants.append((i, found))
            else:
                out[i] = found
        learned = propose_rows([drafters[i].learned for i, _ in wants], [tokens[i] for i, _ in wants],
                               [rooms[i] for i, _ in wants]) if wants else []
        for (i, found), draft in zip(wants, learned):
            out[i] = drafters[i]._after_learned(tokens[i], found, draft)
        return out

    def _lookup_first(self, tokens: list[int], max_tokens: int) -> tuple[Draft, bool]:
        """Steps 1 and 2 up to the learned draft: (the lookup's draft, whether the learned drafter
        should draft now). When it should not, the round's choice is already made and returned."""
        found = self.lookup.propose(tokens, max_tokens)
        c = self.lookup.token_rate() if len(found) else 0.0
        if len(found) and c / max(1.0 - c, 1e-6) >= self.gain:
            self.learned.track(tokens)
            return self._use(self.lookup, found), False
        due = self.skipped + 1 >= self.probe_every
        if self.gain >= self.min_gain or due:
            return found, True
        return self._fall_back(tokens, found), False

    def _after_learned(self, tokens: list[int], found: Draft, draft: Draft) -> Draft:
        return self._use(self.learned, draft) if len(draft) else self._fall_back(tokens, found)

    def _fall_back(self, tokens: list[int], found: Draft) -> Draft:
        """Step 3: the lookup's draft if any, else none (the learned drafter did not draft)."""
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
