"""Training: `train(config)` and the pieces it is made of (config, schedule, optimizers,
checkpoints, lock, health gates, status)."""

from .config import STAGE_STEPS, TrainConfig, build_config
from .health import stage_verdict
from .trainer import TrainResult, read_history, train

__all__ = ["STAGE_STEPS", "TrainConfig", "TrainResult", "build_config", "read_history",
           "stage_verdict", "train"]
