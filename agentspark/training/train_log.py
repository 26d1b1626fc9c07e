"""What a training run records, kept across runs: it lives in the checkpoint's
training_state.json, so a run resumed on another machine continues the same log.

- ``history``: the last ``TAIL`` step records as the trainer made them (loss terms, lr, seconds);
- ``curve``: the mean of every ``CURVE_WINDOW`` consecutive steps (windows aligned on step
  numbers, so a run that stops mid-window completes it after the resume from the tail): the whole
  loss curve of every run in a few kB per thousand steps;
- ``evals``: one held-out summary per checkpoint written;
- ``runs``: one entry per run (its first and last step, seconds, why it ended).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TAIL = 200
CURVE_WINDOW = 10


@dataclass
class TrainLog:
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def add_step(self, stats: dict) -> None:
        self.history.append(stats)
        step = int(stats["step"])
        if step % CURVE_WINDOW == 0:
            window = [h for h in self.history if step - CURVE_WINDOW < int(h["step"]) <= step]
            if len(window) == CURVE_WINDOW:  # else the steps before came from a checkpoint too old to hold them
                keys = [k for k, v in window[0].items() if isinstance(v, float) and k != "step"]
                self.curve.append({"step": step, **{k: sum(h[k] for h in window) / CURVE_WINDOW for k in keys}})
        del self.history[:-TAIL]

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict) -> TrainLog:
        return TrainLog(history=list(raw.get("history", [])), curve=list(raw.get("curve", [])),
                        evals=list(raw.get("evals", [])), runs=list(raw.get("runs", [])))
