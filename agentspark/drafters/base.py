"""The drafter interface: propose a chain of tokens after the committed sequence.

The engine calls ``start`` once per request, then per round ``propose`` with the whole committed
sequence (prompt + generated; its last token is the anchor x0, not yet in the target's cache).
A drafter that needs the target's hidden states names the layers in ``capture_layers``; the
engine then hands them over in ``observe`` after every target forward (prefill and verify), so
no second target pass is ever made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ..sampling import SamplingParams


@dataclass
class Draft:
    tokens: Tensor  # [gamma] long (any device: the engine moves it to the target's)
    probs: Tensor | None = None  # [gamma, V] q after the request's sampling params; None = deterministic
    confidences: Tensor | None = None  # [gamma] P(d_k survives | d_<k survived), learned drafters only

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def truncate(self, n: int) -> Draft:
        """The first n drafted tokens (the scheduler trims *before* the verify forward)."""
        return Draft(
            tokens=self.tokens[:n],
            probs=None if self.probs is None else self.probs[:n],
            confidences=None if self.confidences is None else self.confidences[:n],
        )

    def token_list(self, n: int) -> list[int]:
        """The first n drafted tokens as ints (what the batch engine builds its rows from)."""
        return self.tokens[:n].tolist()

    def confidence_list(self) -> list[float] | None:
        """The confidences as floats (what the schedule reads), None when the drafter gives none."""
        return None if self.confidences is None else self.confidences.tolist()

    @staticmethod
    def empty(device: torch.device) -> Draft:
        return Draft(tokens=torch.empty(0, dtype=torch.long, device=device))


class HostDraft(Draft):
    """A deterministic draft made on the host (the n-gram lookup): its tokens and its per-position
    confidences as lists; ``tokens`` and ``confidences`` become tensors only when read. The
    batch engine reads the lists: two tensors made and read back per row cost ~10 us of a round's
    host time each (x 64 rows on the H200)."""

    def __init__(self, tokens: list[int], confidences: list[float]) -> None:  # no dataclass __init__: no tensors
        if len(confidences) != len(tokens):
            raise ValueError(f"{len(tokens)} draft tokens but {len(confidences)} confidences")
        self._tokens, self._confidences = tokens, confidences
        self._as_tensors: tuple[Tensor, Tensor] | None = None

    def _tensors(self) -> tuple[Tensor, Tensor]:
        if self._as_tensors is None:
            self._as_tensors = (torch.tensor(self._tokens, dtype=torch.long),
                                torch.tensor(self._confidences, dtype=torch.float32))
        return self._as_tensors

    tokens = property(lambda self: self._tensors()[0])  # type: ignore[assignment]  # [gamma] long, CPU
    confidences = property(lambda self: self._tensors()[1])  # type: ignore[assignment]  # [gamma]
    probs = None  # deterministic: q is one-hot

    def __len__(self) -> int:
        return len(self._tokens)

    def truncate(self, n: int) -> HostDraft:
        return HostDraft(self._tokens[:n], self._confidences[:n])

    def token_list(self, n: int) -> list[int]:
        return self._tokens[:n]

    def confidence_list(self) -> list[float]:
        return self._confidences


@dataclass
class DeviceDraft:
    """A draft that stays on the device until the round's one host sync: tokens, q and the length to
    verify were computed there (the drafter's CUDA graph, the schedule included)."""

    tokens: Tensor  # [g] long, target ids, on the target's device
    length: Tensor  # [1] long: how many leading tokens to verify (the schedule's choice, <= room)
    probs: Tensor | None  # [g, V] q (sampled drafts), None when greedy
    drafted: int  # g, known on the host

    def __len__(self) -> int:
        return self.drafted


class Drafter(ABC):
    name: str = "drafter"
    capture_layers: tuple[int, ...] = ()

    def start(self, prompt_ids: list[int], params: SamplingParams, generator: torch.Generator | None) -> None:
        """A new request begins (drop any per-request state)."""

    @abstractmethod
    def propose(self, tokens: list[int], max_tokens: int) -> Draft:
        """Up to max_tokens draft tokens continuing ``tokens`` (may return fewer, even none)."""

    def track(self, tokens: list[int]) -> None:
        """The committed sequence at a round another drafter drafted (HybridDrafter): a drafter
        that keeps a record of the tokens behind its context updates it here."""

    def observe(self, hidden: Tensor, start: int) -> None:
        """Target hidden states [T, m*H] of positions [start, start+T) from the last forward."""

    def observe_later(self, hidden: Tensor, start: int, *, owned: bool = False) -> None:
        """``observe``, with the work allowed to wait: a drafter may keep the features and do it
        when it next drafts (one forward for many rounds, or for many rows). ``owned``: ``hidden``
        is the caller's own copy (not a buffer the next forward overwrites), so a drafter may keep
        it as it is. The default observes now."""
        self.observe(hidden, start)

    def reusable_context(self) -> int:
        """After ``start``: how many leading prompt positions' target features this drafter still
        holds from its last request (a session then prefills only what was appended). 0 = none."""
        return 0

    def feedback(self, verified: int, accepted: int) -> None:
        """How the last round went: ``accepted`` of ``verified`` draft tokens survived."""

    def bind_device(self, features: Tensor, schedule: DeviceSchedule, *, graphs: bool = True) -> bool:
        """Offer device drafting (a CUDA graph runner): ``features`` [Tmax, m*H] is where each
        round leaves the target features of its row, ``schedule`` how many tokens to verify. A
        drafter that can then propose ``DeviceDraft``s and observe rounds from ``features`` says
        True; the default keeps host drafting."""
        return False

    def observe_round(self, start: int, count: int) -> None:
        """After a round (device drafting only): the features of positions [start, start+count)
        are rows 0..count-1 of the bound ``features`` buffer."""

    def sibling(self) -> Drafter:
        """A new drafter of the same kind and configuration, sharing this one's weights but none of
        its request state: one per KV slot of the batch engine, each with its own conversation."""
        raise NotImplementedError(f"the {self.name} drafter cannot serve more than one request at a time")

    @staticmethod
    def propose_rows(drafters: list[Drafter], tokens: list[list[int]], rooms: list[int]) -> list[Draft]:
        """The drafts of several requests, each drafter continuing its own tokens (the batched
        engine's rows). A kind whose drafts come from one forward overrides it to draft all rows
        in that forward; this one proposes one request at a time."""
        return [d.propose(t, r) for d, t, r in zip(drafters, tokens, rooms)]


def propose_rows(drafters: list[Drafter], tokens: list[list[int]], rooms: list[int]) -> list[Draft]:
    """Every row's draft: through the kind's batched ``propose_rows`` when all the drafters are of
    one kind, else one request at a time."""
    kind = type(drafters[0]) if drafters else Drafter
    if len(drafters) > 1 and all(type(d) is kind for d in drafters):
        return kind.propose_rows(drafters, tokens, rooms)
    return Drafter.propose_rows(drafters, tokens, rooms)


@dataclass
class DeviceSchedule:
    """What a device drafter needs to choose the length on the device (scheduler.device_length):
    the engine's schedule name and threshold, and the SPS table as a device tensor it keeps current."""

    name: str
    threshold: float
    sps: Tensor  # [max_draft + 1] steps/s at 1.. tokens per forward (updated in place)
