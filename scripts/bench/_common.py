"""Helpers shared by the benchmark scripts: timing with median/min/max, machine info, JSON."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Seconds per call of fn(): median, min, max over `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "runs": repeats}


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
