"""Trainer state: where a run stands between steps, besides arrays. A checkpoint saves it as
trainer_state.json (`TrainerState.to_json`) and --resume reads it back
(`TrainerState.from_json`): nothing else reads or writes those keys. The keys are those
mlx-kssm 0.2 wrote, so its run folders still resume.

Arrays live beside it in the checkpoint: the model's weights, and the optimizer's and the
Grokfast filter's state (optimizer.safetensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import mlx.core as mx

from .config import TrainConfig
from .schedule import Schedule
from ..data.loader import SAMPLERS


@dataclass
class TrainerState:
    config: TrainConfig  # the run's options (--resume merges the flags given into these)
    schedule: Schedule  # the LR of every step (its horizon can change on resume)
    step: int = 0  # optimizer updates done; also the data position (batches are f(seed, step))
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0  # what --patience counts
    explosion_min: float = math.inf  # the explosion detector's running minimum of the loss
    rng_key: tuple = (0, 0)  # MLX's global RNG key (hi, lo), taken before each save
    history_len: int = 0  # history.jsonl lines up to this checkpoint's own event
    world_size: int = 1  # processes the run trains on

    def to_json(self) -> dict:
        """trainer_state.json's content. `lr`, `max_steps`, `data` and `saved` are there for
        people reading the file (and the model card); loading derives them again."""
        c = self.config
        return {"step": self.step, "max_steps": c.max_steps, "schedule": self.schedule.to_dict(),
                "lr": self.schedule.lr(max(self.step, 1)),
                "best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "evals_without_improvement": self.evals_without_improvement,
                "explosion_min": self.explosion_min if math.isfinite(self.explosion_min)
                else None,
                "rng_key": list(self.rng_key),
                "data": {"sampler": SAMPLERS[c.sampling].__name__, "seed": c.seed,
                         "position": self.step * c.grad_accum, "world_size": self.world_size},
                "history_len": self.history_len,
                "config": c.to_dict(),
                "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    @classmethod
    def from_json(cls, saved: dict, source: str = "trainer_state.json") -> "TrainerState":
        """The state `to_json` wrote; ValueError naming `source` if a key is missing or of
        the wrong kind (a file edited by hand, or not a checkpoint's)."""
        try:
            hi, lo = saved["rng_key"]
            minimum = saved.get("explosion_min")  # None: no finite loss seen yet
            return cls(config=TrainConfig.from_dict(saved["config"]),
                       schedule=Schedule.from_dict(saved["schedule"]),
                       step=int(saved["step"]), best_val_loss=saved["best_val_loss"],
                       best_step=saved["best_step"],
                       evals_without_improvement=int(saved["evals_without_improvement"]),
                       explosion_min=math.inf if minimum is None else float(minimum),
                       rng_key=(int(hi), int(lo)), history_len=int(saved["history_len"]),
                       world_size=int((saved.get("data") or {}).get("world_size", 1)))
        except KeyError as e:
            raise ValueError(f"{source}: no {e.args[0]!r}: not a checkpoint mlx-kssm can resume "
                             "from") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{source}: unreadable trainer state ({e})") from None

    def take_rng_key(self) -> None:
        """Record MLX's global RNG key (nothing random is drawn in a training step, but the key
        is saved anyway, so a future use of it still resumes exactly)."""
        self.rng_key = tuple(int(x) for x in mx.random.state[0].tolist())

    def restore_rng_key(self) -> None:
        hi, lo = self.rng_key
        mx.random.seed((hi << 32) | lo)
