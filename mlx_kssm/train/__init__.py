"""Training: `train(config)` and the pieces it is made of (config, schedule, optimizers,
checkpoints, lock, health gates, status)."""

from .config import STAGE_STEPS, TrainConfig, build_config
from .health import stage_verdict
from .runlog import read_history

__all__ = ["STAGE_STEPS", "TrainConfig", "TrainResult", "build_config", "read_history",
           "stage_verdict", "train"]


def __getattr__(name: str):
    # `train` and `TrainResult` import the trainer (and with it MLX's optimizers) on first
    # use, so what only reads a run folder (status, monitor, plot) never loads them
    if name in ("train", "TrainResult"):
        from . import trainer
        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
