"""GraphedDrafting: what a learned drafter's device path shares, whatever its architecture.

Two bodies per drafter (``_observe_body``, ``_propose_body``), written by the subclass over static
device buffers; here they become CUDA graphs, captured on first use with inputs that park every
write on trash positions (``_park``), then replayed. The host's part of a round is a few ints and
floats written into pinned buffers and copied with one async copy each; they are rewritten only
after the last round's sync, so the last copy from them has finished. ``graphs=False`` runs the
bodies eagerly: that is how their logic is tested on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..sampling import SamplingParams


class GraphedDrafting:
    def __init__(self, device: torch.device, propose_ints: int, draft_slots: int, draft_vocab: int, *,
                 graphs: bool = True) -> None:
        pin = device.type == "cuda"
        self.device, self.graphs = device, graphs
        self.p_ints = torch.zeros(propose_ints, dtype=torch.long, device=device)
        self.p_ints_host = torch.zeros(propose_ints, dtype=torch.long, pin_memory=pin)
        self.o_ints = torch.zeros(2, dtype=torch.long, device=device)  # observe: [start | count]
        self.o_ints_host = torch.zeros(2, dtype=torch.long, pin_memory=pin)
        self.floats = torch.ones(2, device=device)  # [temperature | top_p]
        self.floats_host = torch.ones(2, pin_memory=pin)
        self.race = torch.ones(draft_slots, draft_vocab, device=device)  # [B, Vd] the picks' exponential race
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self._observe_graph: torch.cuda.CUDAGraph | None = None
        self._propose: dict[tuple[bool, bool], tuple[torch.cuda.CUDAGraph | None, Any]] = {}

    # ---- what a subclass writes -----------------------------------------------------------
    def _observe_body(self) -> None:
        raise NotImplementedError

    def _propose_body(self, greedy: bool, filtered: bool) -> Any:
        raise NotImplementedError

    def _park(self) -> None:
        """Set p_ints and o_ints so that a warm-up run of either body writes only trash positions."""
        raise NotImplementedError

    # ---- capture and replay ---------------------------------------------------------------
    def _capture(self, body: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # kernels compiled, algorithms chosen, outside the capture
                body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode():
            out = body()
        return graph, out

    def _parked_capture(self, body: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        """Capture ``body`` with parked inputs, then put the real inputs back."""
        saved = self.p_ints.clone(), self.o_ints.clone(), self.floats.clone()
        self._park()
        captured = self._capture(body)
        for buffer, value in zip((self.p_ints, self.o_ints, self.floats), saved):
            buffer.copy_(value)
        return captured

    @torch.inference_mode()
    def observe(self, start: int, count: int) -> None:
        """Rows [0, count) of the features buffer are the target features of [start, start+count)."""
        host = self.o_ints_host.numpy()
        host[0], host[1] = start, count
        self.o_ints.copy_(self.o_ints_host, non_blocking=True)
        if not self.graphs:
            self._observe_body()
            return
        if self._observe_graph is None:
            self._observe_graph, _ = self._parked_capture(self._observe_body)
        self._observe_graph.replay()

    def _run_propose(self, params: SamplingParams, generator: torch.Generator | None) -> Any:
        """After the subclass wrote p_ints_host: copy the inputs, draw the sampled picks' noise
        from the request's generator (async), and replay (or capture) the propose graph."""
        greedy = params.greedy
        filtered = not greedy and (params.top_k > 0 or params.top_p < 1.0)
        self.p_ints.copy_(self.p_ints_host, non_blocking=True)
        if not greedy:
            fl = self.floats_host.numpy()
            fl[0], fl[1] = params.temperature, params.top_p
            self.floats.copy_(self.floats_host, non_blocking=True)
            self.race.exponential_(generator=generator).clamp_min_(1e-30)
        if not self.graphs:
            return self._propose_body(greedy, filtered)
        key = (greedy, filtered)
        if key not in self._propose:
            self._propose[key] = self._parked_capture(lambda: self._propose_body(greedy, filtered))
        graph, outputs = self._propose[key]
        graph.replay()
        return outputs


def parked(buffer: Tensor, values: list[int]) -> None:
    """Write ``values`` into the first entries of a device int buffer, zeros after (capture time only)."""
    host = torch.zeros(buffer.shape[0], dtype=torch.long)
    host[: len(values)] = torch.tensor(values)
    buffer.copy_(host.to(buffer.device))
