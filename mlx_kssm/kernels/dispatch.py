"""Pick the implementation of the phase-coupling scan: fused kernel or pure-MLX reference.

    auto       the fused Metal kernel on a Metal GPU (after a one-time parity check against
               the reference), the reference everywhere else
    metal      the fused Metal kernel; an error where Metal is absent
    reference  the pure-MLX scan: kernels/cpu.py for training (hand-written adjoint), the
               sequential oracle in reference.py for forced runs and decoding

Forced-R runs (inference) use the kernel's forced variant under `metal`/`auto` on Metal, the
sequential reference step elsewhere.
"""

from __future__ import annotations

import warnings

import mlx.core as mx

from . import cpu, reference

KERNEL_MODES = ("auto", "metal", "reference")

_mode = "auto"
_kernel_ok: bool | None = None  # None: not checked yet in this process


def set_kernel(mode: str) -> None:
    """Choose the scan implementation for this process (`--kernel`)."""
    global _mode
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel must be one of {KERNEL_MODES}, got {mode!r}")
    if mode == "metal" and not mx.metal.is_available():
        raise RuntimeError("--kernel metal needs a Metal GPU (Apple Silicon macOS); "
                           "use --kernel auto or reference here")
    _mode = mode


def get_kernel() -> str:
    return _mode


def _metal_usable() -> bool:
    """Build and parity-check the kernel once per process; warn and fall back on failure."""
    global _kernel_ok
    if _kernel_ok is None:
        try:
            from . import metal
            ok, detail = metal.self_check()
        except Exception as e:  # compile errors surface here
            ok, detail = False, f"{type(e).__name__}: {e}"
        if not ok:
            warnings.warn(f"mlx_kssm: fused Metal scan kernel failed its self-check ({detail}); "
                          "using the pure-MLX reference instead.", stacklevel=3)
        _kernel_ok = ok
    return _kernel_ok


def active_impl() -> str:
    """What a free-running scan uses now: 'metal' or 'reference'."""
    if _mode == "reference" or not mx.metal.is_available():
        return "reference"
    return "metal" if _metal_usable() else "reference"


def oscillator_scan(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """States (zr, zi), each (B, T, G, n), of the recurrence in reference.py."""
    if active_impl() == "metal":
        from . import metal
        return metal.scan(dr, di, k, cr, ci, z0r, z0i, force_r=force_r)
    if force_r is None:  # free run: complex scan with a hand-written adjoint (training)
        return cpu.scan_free(dr, di, k, cr, ci, z0r, z0i)
    return reference.scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r)


def oscillator_step(zr, zi, dr, di, k, cr, ci, force_r=None):
    """One decoding step on a (B, G, n) state."""
    if active_impl() == "metal":
        from . import metal
        return metal.step(zr, zi, dr, di, k, cr, ci, force_r=force_r)
    return reference.scan_step(zr, zi, dr, di, k, cr, ci, force_r)
