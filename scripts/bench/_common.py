"""Helpers shared by the benchmark scripts: timing with median/min/max, machine info, JSON."""

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


def timed(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Seconds per call of fn(): summarize() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


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
