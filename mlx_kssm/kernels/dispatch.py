"""Pick the implementation of the phase-coupling scan: a fused kernel or the pure-MLX reference.

    auto       the fused kernel of the GPU backend that is present -- Metal on Apple Silicon,
               CUDA under MLX's CUDA build -- after a one-time parity check against the
               reference; the reference everywhere else
    metal      the fused Metal kernel; an error where Metal is absent
    cuda       the fused CUDA kernel; an error where MLX has no CUDA GPU
    reference  the pure-MLX scan: kernels/cpu.py for training (hand-written adjoint), the
               sequential oracle in reference.py for forced runs and decoding

A fused kernel that fails its first-use check (compile error or mismatch) is not used: one
warning, then the reference. Forced-R runs (inference) use the kernel's forced variant where a
kernel is in use, the sequential reference step elsewhere.
"""

from __future__ import annotations

import warnings

import mlx.core as mx

from . import cpu, reference

KERNEL_MODES = ("auto", "metal", "cuda", "reference")
BACKEND_LABELS = {"metal": "Metal", "cuda": "CUDA"}
_NEEDS = {
    "metal": "--kernel metal needs a Metal GPU (Apple Silicon macOS)",
    "cuda": "--kernel cuda needs an NVIDIA GPU and MLX's CUDA build (pip install \"mlx[cuda13]\" "
            "or \"mlx[cuda12]\")",
}

_mode = "auto"
_kernel_ok: dict[str, bool] = {}  # backend -> result of its self-check in this process


def backend_module(backend: str):
    """The kernels module of a fused backend: metal.py or cuda.py."""
    if backend == "metal":
        from . import metal
        return metal
    from . import cuda
    return cuda


def gpu_backend() -> str | None:
    """The fused backend this machine can run: 'metal', 'cuda' or None."""
    if mx.metal.is_available():
        return "metal"
    from . import cuda
    return "cuda" if cuda.is_available() else None


def set_kernel(mode: str) -> None:
    """Choose the scan implementation for this process (`--kernel`)."""
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel must be one of {KERNEL_MODES}, got {mode!r}")
    if mode in _NEEDS and gpu_backend() != mode:
        raise RuntimeError(f"{_NEEDS[mode]}; use --kernel auto or reference here")
    _mode = mode


def get_kernel() -> str:
    return _mode


def kernel_usable(backend: str) -> bool:
    """Build and parity-check `backend`'s kernels once per process; warn and fall back on
    failure."""
    if backend not in _kernel_ok:
        try:
            ok, detail = backend_module(backend).self_check()
        except Exception as e:  # compile errors surface here
            ok, detail = False, f"{type(e).__name__}: {e}"
        if not ok:
            warnings.warn(f"mlx_kssm: fused {BACKEND_LABELS[backend]} scan kernel failed its "
                          f"self-check ({detail}); using the pure-MLX reference instead.",
                          stacklevel=3)
        _kernel_ok[backend] = ok
    return _kernel_ok[backend]


def active_impl() -> str:
    """What a free-running scan uses now: 'metal', 'cuda' or 'reference'."""
    backend = gpu_backend()
    if backend is None or _mode not in ("auto", backend):
        return "reference"
    return backend if kernel_usable(backend) else "reference"


def oscillator_scan(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """States (zr, zi), each (B, T, G, n), of the recurrence in reference.py."""
    impl = active_impl()
    if impl != "reference":
        return backend_module(impl).scan(dr, di, k, cr, ci, z0r, z0i, force_r=force_r)
    if force_r is None:  # free run: complex scan with a hand-written adjoint (training)
        return cpu.scan_free(dr, di, k, cr, ci, z0r, z0i)
    return reference.scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r)


def oscillator_step(zr, zi, dr, di, k, cr, ci, force_r=None):
    """One decoding step on a (B, G, n) state."""
    impl = active_impl()
    if impl != "reference":
        return backend_module(impl).step(zr, zi, dr, di, k, cr, ci, force_r=force_r)
    return reference.scan_step(zr, zi, dr, di, k, cr, ci, force_r)
