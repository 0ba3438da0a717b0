"""Load an optimized BLAS into the process before MLX's Linux CPU build binds its own.

The `mlx-cpu` wheel for Linux links netlib's *reference* BLAS (~4 GFLOP/s on a 2-core x86
machine). `libmlx.so` resolves `cblas_sgemm` through the global symbol scope, so a library
that exports the same symbols and is loaded with RTLD_GLOBAL *before* `mlx.core` is imported
takes over (OpenBLAS: ~100 GFLOP/s there). macOS is unaffected (Accelerate / Metal).

Safety: an OpenBLAS build for the wrong CPU dies with SIGILL, which no Python code can catch,
so each candidate is first tried in a child process (one small sgemm through ctypes, checked
against NumPy). The verdict is cached per library file (path, size, mtime) so later imports
cost nothing. Anything off -> a warning and MLX keeps its own BLAS.

Environment:
  MLX_KSSM_NO_BLAS=1       do nothing (use MLX's bundled BLAS)
  MLX_KSSM_BLAS=/path.so   try this library instead of searching
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

from ._files import atomic_write_text  # stdlib only: safe before mlx is imported

# What happened, for `mlx-kssm doctor` and the tests.
STATUS: dict = {"active": False, "library": None, "reason": "not attempted"}

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)

# Runs in a child process: sgemm through the library's C interface vs NumPy.
_PROBE = r"""
import ctypes, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
f = lib.cblas_sgemm
m, n, k = 67, 45, 33
rng = np.random.default_rng(0)
a = rng.standard_normal((m, k)).astype(np.float32)
b = rng.standard_normal((k, n)).astype(np.float32)
c = np.zeros((m, n), np.float32)
P = ctypes.POINTER(ctypes.c_float)
f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
              ctypes.c_int, ctypes.c_float, P, ctypes.c_int, P, ctypes.c_int,
              ctypes.c_float, P, ctypes.c_int]
# CblasRowMajor=101, CblasNoTrans=111
f(101, 111, 111, m, n, k, 1.0, a.ctypes.data_as(P), k, b.ctypes.data_as(P), n, 0.0,
  c.ctypes.data_as(P), n)
err = float(np.max(np.abs(c - a.astype(np.float64) @ b)))
print("ok" if err < 1e-3 else "mismatch %g" % err)
"""


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mlx_kssm" / "blas_probe.json"


def _fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{int(st.st_mtime)}"


def _probe(path: str) -> str:
    """'ok' or the reason the library cannot be trusted (cached per library file)."""
    cache = _cache_file()
    key = _fingerprint(path)
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True,
                             text=True, timeout=60)
        verdict = out.stdout.strip() if out.returncode == 0 else (
            f"probe process failed (exit {out.returncode}): "
            + (out.stderr.strip().splitlines() or ["no output"])[-1])
    except (OSError, subprocess.SubprocessError) as e:
        verdict = f"probe could not run: {e}"
    known[key] = verdict or "probe printed nothing"
    try:  # atomic: a concurrent import never reads half a file
        atomic_write_text(cache, json.dumps(known, indent=1))
    except OSError:
        pass
    return known[key]


def find_openblas() -> str | None:
    explicit = os.environ.get("MLX_KSSM_BLAS")
    if explicit:
        return explicit
    for path in _CANDIDATES:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("openblas")
    return name if name and os.path.isabs(name) else None


def setup() -> dict:
    """Arrange the optimized BLAS (Linux only). Safe to call more than once."""
    if STATUS["reason"] != "not attempted":
        return STATUS
    if platform.system() != "Linux":
        STATUS.update(reason=f"not needed on {platform.system()}")
        return STATUS
    if os.environ.get("MLX_KSSM_NO_BLAS"):
        STATUS.update(reason="disabled by MLX_KSSM_NO_BLAS")
        return STATUS
    if "mlx.core" in sys.modules:
        STATUS.update(reason="mlx was imported before mlx_kssm; MLX keeps its reference BLAS")
        warnings.warn("mlx_kssm: `mlx` was imported before `mlx_kssm`, so MLX keeps its slow "
                      "reference BLAS on Linux. Import mlx_kssm first.", stacklevel=3)
        return STATUS
    path = find_openblas()
    if path is None:
        STATUS.update(reason="no OpenBLAS found (Debian/Ubuntu: apt-get install libopenblas0-pthread)")
        warnings.warn("mlx_kssm: no OpenBLAS found; MLX matmuls on this Linux CPU use the slow "
                      "reference BLAS. Install libopenblas0-pthread (or set MLX_KSSM_BLAS).",
                      stacklevel=3)
        return STATUS
    if not os.path.exists(path):
        STATUS.update(reason=f"{path} does not exist")
        warnings.warn(f"mlx_kssm: MLX_KSSM_BLAS={path} does not exist; keeping MLX's BLAS.",
                      stacklevel=3)
        return STATUS
    verdict = _probe(path)
    if verdict != "ok":
        STATUS.update(library=path, reason=f"rejected: {verdict}")
        warnings.warn(f"mlx_kssm: {path} failed its check ({verdict}); keeping MLX's BLAS.",
                      stacklevel=3)
        return STATUS
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    STATUS.update(active=True, library=path, reason="loaded before mlx")
    return STATUS


def verify_in_process() -> bool:
    """After `import mlx.core`: one matmul against NumPy (used by doctor and the tests)."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal((80, 72)).astype(np.float32)
    got = np.array(mx.array(a) @ mx.array(b))
    return bool(np.max(np.abs(got - a.astype(np.float64) @ b)) < 1e-3)


def measure_gflops(m: int = 2048, k: int = 256, n: int = 20544, repeats: int = 3) -> float:
    """float32 matmul throughput of MLX as loaded now (default shape: an output head)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((m, k))
    b = mx.random.normal((k, n))
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9
