"""The demo's rehearsal: where a runner captures CUDA graphs, the whole session runs once untimed
through each backend (then their caches are forgotten), so the speculative session, which runs
first, does not pay every graph capture that the plain replay then finds done (H200, run 32:
round 0 1,273 ms speculative against 212 ms plain). Elsewhere nothing is rehearsed."""

from __future__ import annotations

from types import SimpleNamespace

from agentspark.backends.scripted import ScriptedBackend
from agentspark.commands.demo import TASKS, rehearse_session
from agentspark.tools import calculator


class _Rehearsed(ScriptedBackend):
    """A scripted backend standing in for a LocalBackend: ``engine.runner.graphs`` (with the
    runner's ``capture_lengths``) and a reset count."""

    def __init__(self, graphs: bool) -> None:
        super().__init__(["Done."] * 16)
        self.resets = 0
        self.engine = SimpleNamespace(runner=SimpleNamespace(graphs=graphs, capture_lengths=lambda: 0),
                                      reset=self._reset)

    def _reset(self) -> None:
        self.resets += 1


def test_graph_runners_rehearse_the_whole_session_then_forget_their_caches():
    spec, plain = _Rehearsed(graphs=True), _Rehearsed(graphs=False)
    assert rehearse_session((spec, plain), [calculator], "system", None)
    for backend in (spec, plain):  # both: the plain replay must not pay captures the session did not
        tasks = [r["messages"][-1]["content"] for r in backend.requests]
        assert tasks == [t for t, _ in TASKS]
        assert [r["tool_choice"] for r in backend.requests] == [c for _, c in TASKS]
        assert backend.resets == 1


def test_without_graphs_nothing_is_rehearsed():
    """The control: CPU engines (no graph runner) run no rehearsal."""
    spec, plain = _Rehearsed(graphs=False), _Rehearsed(graphs=False)
    assert not rehearse_session((spec, plain), [calculator], "system", None)
    assert spec.requests == plain.requests == [] and spec.resets == plain.resets == 0
