"""Pick the implementation of the phase-coupling scan: a fused kernel or the pure-MLX reference.

The choice is an argument (`kernel=`) of `oscillator_scan` and `oscillator_step`, as mlx-lm's
`use_kernel` is, never process state: a model carries its own (`use_kernel(model, mode)` sets
it on every oscillator bank; `--kernel` and the trainer's `config.kernel` do that), so two
models in one process may differ. Set it before compiling: a compiled graph keeps the
implementation it was traced with.

    auto       the fused kernel of the GPU backend that is present -- Metal on Apple Silicon,
               CUDA under MLX's CUDA build -- after a one-time parity check against the
               reference; the reference everywhere else
    metal      the fused Metal kernel; an error where Metal is absent
    cuda       the fused CUDA kernel; an error where MLX has no CUDA GPU
    reference  the pure-MLX scan: kernels/cpu.py for training (hand-written adjoint), the
               sequential oracle in reference.py for forced runs and decoding

A fused kernel that fails its first-use check (compile error or mismatch) is not used: one
warning, then the reference. That result is kept per process (it is a fact about the machine,
not a choice). Forced-R runs (inference) use the kernel's forced variant where a kernel is in
use, the sequential reference step elsewhere.
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
SCAN_KERNEL_ATTR = "scan_kernel"  # the attribute of a module whose scan follows use_kernel

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


def check_kernel(mode: str) -> str:
    """`mode` if this machine can run it: ValueError for an unknown mode, RuntimeError for a
    fused backend whose GPU is absent."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel must be one of {KERNEL_MODES}, got {mode!r}")
    if mode in _NEEDS and gpu_backend() != mode:
        raise RuntimeError(f"{_NEEDS[mode]}; use --kernel auto or reference here")
    return mode


def use_kernel(model, mode: str):
    """Make every oscillator scan of `model` run `mode` (checked first); returns the model.
    Models without oscillators (the transformer) are returned unchanged."""
    check_kernel(mode)
    for module in model.modules():
        if hasattr(module, SCAN_KERNEL_ATTR):
            setattr(module, SCAN_KERNEL_ATTR, mode)
    return model


def kernel_of(model) -> str:
    """The scan mode `use_kernel` gave `model` ("auto" for a model without oscillators)."""
    for module in model.modules():
        if hasattr(module, SCAN_KERNEL_ATTR):
            return getattr(module, SCAN_KERNEL_ATTR)
    return "auto"


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


def resolve_kernel(mode: str = "auto") -> str:
    """What a scan with `mode` runs here: 'metal', 'cuda' or 'reference'."""
    check_kernel(mode)
    backend = gpu_backend()
    if backend is None or mode not in ("auto", backend):
        return "reference"
    return backend if kernel_usable(backend) else "reference"


def oscillator_scan(dr, di, k, cr, ci, z0r, z0i, force_r=None, kernel: str = "auto"):
    """States (zr, zi), each (B, T, G, n), of the recurrence in reference.py, from the initial
    state (z0r, z0i), with the implementation `kernel` names (KERNEL_MODES)."""
    impl = resolve_kernel(kernel)
    if impl != "reference":
        return backend_module(impl).scan(dr, di, k, cr, ci, z0r, z0i, force_r=force_r)
    if force_r is None:  # free run: complex scan with a hand-written adjoint (training)
        return cpu.scan_free(dr, di, k, cr, ci, z0r, z0i)
    return reference.scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r)


def oscillator_step(dr, di, k, cr, ci, zr, zi, force_r=None, kernel: str = "auto"):
    """One decoding step on a (B, G, n) state (zr, zi), with the implementation `kernel`
    names."""
    impl = resolve_kernel(kernel)
    if impl != "reference":
        return backend_module(impl).step(dr, di, k, cr, ci, zr, zi, force_r=force_r)
    return reference.scan_step(dr, di, k, cr, ci, zr, zi, force_r)
