"""Helpers shared by the benchmark scripts: the step timer (`seconds`, `timed`: median/min/max),
the trainer's own step, machine info, JSON."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def summarize(values) -> dict | None:
    """median, min, max and count of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def seconds(fn, *args) -> float:
    """Wall-clock seconds of one call fn(*args): the one step timer every benchmark uses. fn
    must finish its work before returning (mx.eval, torch.cuda.synchronize): MLX and CUDA
    compute lazily or asynchronously, and an unfinished step would time only its graph."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Seconds per call of fn(): summarize() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    return summarize([seconds(fn) for _ in range(repeats)])


def trainer_step(model, batch_size: int, seq_len: int, learning_rate: float = 1e-3,
                 weight_decay: float = 0.01):
    """The trainer's own compiled step (train.step.make_step: AdamW, clip 1.0, no accumulation)
    on `model`; returns (run, optimizer) where run(inputs, targets) does one evaluated
    optimizer step and returns the loss. Benchmarks time this, so they time what `train` runs."""
    import mlx.core as mx
    from mlx_kssm.train.optim import Grokfast, build_optimizer, set_learning_rate
    from mlx_kssm.train.step import make_step

    optimizer = build_optimizer("adamw", learning_rate, weight_decay)
    optimizer.init(model.trainable_parameters())
    grokfast = Grokfast(model.trainable_parameters(), enabled=False)
    step, state = make_step(model, optimizer, grokfast, grad_accum=1, grad_clip=1.0, world=1)

    def run(inputs, targets):
        set_learning_rate(optimizer, learning_rate)
        loss = step(mx.array(inputs), mx.array(targets), None, True)[0]
        mx.eval(state, loss)
        return loss

    return run, optimizer


def machine() -> dict:
    import mlx.core as mx
    from mlx_kssm import _blas

    return {"platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "mlx": mx.__version__,
            "device": str(mx.default_device()), "blas": _blas.STATUS.get("library")
            if _blas.STATUS.get("active") else "mlx bundled",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
