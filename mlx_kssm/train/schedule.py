"""Learning-rate schedule: linear warmup then cosine decay, a pure function of the step.

The LR of update `step` (1-based) depends on nothing but the step and the schedule's fields,
which the trainer state stores, so resuming can neither advance it twice nor bend it.

Extending (or shortening) --max-steps on resume re-plans only the future: past the current
step (and past warmup) the cosine restarts from the current LR and decays to the same floor
over the new horizon, so the LR is continuous at the resume point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Schedule:
    base_lr: float
    warmup_steps: int
    total_steps: int  # the horizon the schedule now decays toward
    min_lr_ratio: float = 0.1
    # horizon changes on resume, oldest first: (step, LR at that step, new total);
    # `first_total` keeps the original horizon for the steps before the first change
    restarts: tuple = ()
    first_total: Optional[int] = None

    @property
    def min_lr(self) -> float:
        return self.base_lr * self.min_lr_ratio

    def lr(self, step: int) -> float:
        for restart_step, restart_lr, total in reversed(self.restarts):
            if step > restart_step:
                return _cosine(step - restart_step, total - restart_step, restart_lr, self.min_lr)
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        total = self.first_total if self.restarts else self.total_steps
        return _cosine(step - self.warmup_steps, total - self.warmup_steps, self.base_lr,
                       self.min_lr)

    def with_horizon(self, total_steps: int, current_step: int) -> "Schedule":
        """The schedule continued from `current_step` toward a new `total_steps`; the LR of
        every step up to `current_step` is unchanged."""
        if total_steps == self.total_steps:
            return self
        if current_step <= self.warmup_steps and not self.restarts:
            # the cosine has not started yet: the plain schedule over the new horizon
            return Schedule(self.base_lr, self.warmup_steps, total_steps, self.min_lr_ratio)
        restart = (current_step, self.lr(current_step), total_steps)
        return Schedule(self.base_lr, self.warmup_steps, total_steps, self.min_lr_ratio,
                        self.restarts + (restart,), self.first_total or self.total_steps)

    def scaled(self, factor: float) -> "Schedule":
        """The same shape with every LR from here on multiplied by `factor` (a new
        --learning-rate on resume: warmup, cosine, restarts and floor all scale together)."""
        return Schedule(self.base_lr * factor, self.warmup_steps, self.total_steps,
                        self.min_lr_ratio,
                        tuple((s, lr * factor, total) for s, lr, total in self.restarts),
                        self.first_total)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["restarts"] = [list(r) for r in self.restarts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(**{**d, "restarts": tuple(tuple(r) for r in d.get("restarts", ()))})


def _cosine(done: int, span: int, start: float, floor: float) -> float:
    if span <= 0:
        return floor if done > 0 else start
    progress = min(max(done / span, 0.0), 1.0)
    return floor + (start - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
