"""What the fused Metal and CUDA scans share (the oracle is reference.py).

Both backends ship the same three kernels, with the same inputs, outputs and launch:

    kssm_scan      dr, di, k, cr, ci, z0r, z0i, force_r -> zr, zi      (template FORCED: 0 | 1)
    kssm_scan_vjp  dr, di, k, z0r, z0i, zr, zi, gzr, gzi -> gdr, gdi, gk, gcr, gci, gz0r, gz0i
    kssm_step      zr, zi, dr, di, k, cr, ci, force_r -> zr_out, zi_out (template FORCED: 0 | 1)

(the kernels' buffer order; the Python functions take the state last, as reference.py does)

one block (Metal: threadgroup) per (sequence b, group g), one thread per oscillator j. The grid
is given in threads, (threads, G, B), as mx.fast.metal_kernel and mx.fast.cuda_kernel both take
it; `threads` is n, or n rounded up to whole warps where the backend needs that (cuda.py).

A backend module (metal.py, cuda.py) holds only its header, its `Dialect` of the kernel bodies
(source_common.py writes them once for both) and `_run_kernel(name, **call)`, the one place a
kernel is launched, and builds a `FusedScan` from them. Everything else lives here once: call arguments, input preparation, the `mx.custom_function` whose VJP
is the adjoint kernel, the decode step, and the parity check against the reference that the
tests and the first-use self-check both run, with `random_inputs`, its inputs.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from . import reference

KERNEL_ARGS = {  # kernel name -> (input names, output names)
    "kssm_scan": (["dr", "di", "k", "cr", "ci", "z0r", "z0i", "force_r"], ["zr", "zi"]),
    "kssm_scan_vjp": (["dr", "di", "k", "z0r", "z0i", "zr", "zi", "gzr", "gzi"],
                      ["gdr", "gdi", "gk", "gcr", "gci", "gz0r", "gz0i"]),
    "kssm_step": (["zr", "zi", "dr", "di", "k", "cr", "ci", "force_r"], ["zr_out", "zi_out"]),
}
GRAD_NAMES = ("dr", "di", "k", "cr", "ci", "z0r", "z0i")

MAX_THREADS = 1024  # per block on Apple GPUs and on NVIDIA GPUs alike
MAX_BLOCKS = 65535  # CUDA's limit on gridDim.y and gridDim.z (G and B); Metal allows more
TOLERANCE = 2e-4    # parity: max abs difference / max(1, max |reference|)


def kernel_spec(name: str, header: str, sources: dict, **backend_args) -> dict:
    """Arguments of mx.fast.metal_kernel / cuda_kernel for kernel `name`, given the backend's
    header and {kernel name: body} (read at call time, so a planted bug in a string shows)."""
    input_names, output_names = KERNEL_ARGS[name]
    return dict(name=name, input_names=input_names, output_names=output_names,
                source=sources[name], header=header, ensure_row_contiguous=True, **backend_args)


def launch(kernel, call: dict, missing: str):
    """Run a built kernel (or None where the backend's GPU is absent: RuntimeError(missing))
    with mx.fast.*_kernel call arguments."""
    if kernel is None:
        raise RuntimeError(missing)
    return kernel(**call)


def _force_arg(force_r):
    if force_r is None:
        return mx.zeros((1,), mx.float32), 0
    return mx.reshape(mx.array(force_r, dtype=mx.float32), (1,)), 1


def prepare(dr, di, k, cr, ci, z0r, z0i):
    """fp32, full shapes (broadcast and cast are ordinary ops, so autodiff undoes them)."""
    B, T, G, n = np.broadcast_shapes(dr.shape, di.shape, cr.shape, ci.shape)
    full = (B, T, G, n)
    return (_f32(dr, full), _f32(di, full), _f32(k, (B, T, G, 1)), _f32(cr, full),
            _f32(ci, full), _f32(z0r, (B, G, n)), _f32(z0i, (B, G, n)))


def _f32(x, shape):
    return mx.broadcast_to(x.astype(mx.float32), shape)


def random_inputs(B: int, T: int, G: int, n: int, seed: int = 0):
    """Scan inputs (dr, di, k, cr, ci, z0r, z0i) in the model's range, for parity checks and
    tests: |d| = lambda in (0.5, 0.99), K in [0, 2], c = (1-lambda) b."""
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.5, 0.99, (B, T, G, n))
    alpha = rng.uniform(-np.pi, np.pi, (B, T, G, n))
    k = rng.uniform(0.0, 2.0, (B, T, G, 1))
    b = rng.normal(size=(2, B, T, G, n))
    z0 = rng.normal(size=(2, B, G, n))
    arrs = (lam * np.cos(alpha), lam * np.sin(alpha), k, (1 - lam) * b[0], (1 - lam) * b[1],
            z0[0], z0[1])
    return tuple(mx.array(a.astype(np.float32)) for a in arrs)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


class FusedScan:
    """The fused scan of one backend. `run_kernel(name, **call)` launches a kernel with
    mx.fast.*_kernel call arguments; `available()` says whether the backend's GPU is here;
    `block_threads(n)` is the block size for n oscillators."""

    def __init__(self, backend: str, run_kernel: Callable, available: Callable[[], bool],
                 block_threads: Callable[[int], int] = lambda n: n):
        self.backend = backend
        self._run = run_kernel
        self._available = available
        self._block_threads = block_threads
        self._scan_free = self._make_scan_free()

    # ------------------------------------------------------------- call arguments

    def launch(self, B: int, G: int, n: int) -> dict:
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"the fused scan runs one thread per oscillator: n must be in "
                             f"[1, {MAX_THREADS}], got {n}")
        if max(B, G) > MAX_BLOCKS:
            raise ValueError(f"the fused scan runs one block per (sequence, group): batch and "
                             f"groups must be at most {MAX_BLOCKS}, got B={B}, G={G}")
        threads = self._block_threads(n)
        return dict(grid=(threads, G, B), threadgroup=(threads, 1, 1))

    def scan_call(self, dr, di, k, cr, ci, z0r, z0i, force_r=None) -> dict:
        """Call arguments of the forward scan kernel (all arrays fp32 and full-shape)."""
        B, T, G, n = dr.shape
        fr, forced = _force_arg(force_r)
        return dict(inputs=[dr, di, k, cr, ci, z0r, z0i, fr], template=[("FORCED", forced)],
                    output_shapes=[(B, T, G, n)] * 2, output_dtypes=[mx.float32] * 2,
                    **self.launch(B, G, n))

    def scan_vjp_call(self, dr, di, k, z0r, z0i, zr, zi, gzr, gzi) -> dict:
        B, T, G, n = dr.shape
        full, kshape, zshape = (B, T, G, n), (B, T, G, 1), (B, G, n)
        return dict(inputs=[dr, di, k, z0r, z0i, zr, zi, gzr, gzi],
                    output_shapes=[full, full, kshape, full, full, zshape, zshape],
                    output_dtypes=[mx.float32] * 7, **self.launch(B, G, n))

    def step_call(self, dr, di, k, cr, ci, zr, zi, force_r=None) -> dict:
        B, G, n = dr.shape
        fr, forced = _force_arg(force_r)
        return dict(inputs=[zr, zi, dr, di, k, cr, ci, fr], template=[("FORCED", forced)],
                    output_shapes=[(B, G, n)] * 2, output_dtypes=[mx.float32] * 2,
                    **self.launch(B, G, n))

    def example_calls(self, n: int = 5) -> list[tuple[str, dict]]:
        """One call of every shipped variant (forward free/forced, adjoint, step free/forced);
        the generated source depends on these, not on the sizes."""
        x = random_inputs(2, 3, 4, n)
        dr, di, k, cr, ci, z0r, z0i = x
        t0 = [a[:, 0] for a in (dr, di, k, cr, ci)]
        return [("kssm_scan", self.scan_call(*x)),
                ("kssm_scan", self.scan_call(*x, force_r=0.5)),
                ("kssm_scan_vjp", self.scan_vjp_call(dr, di, k, z0r, z0i, dr, di, dr, di)),
                ("kssm_step", self.step_call(*t0, z0r, z0i)),
                ("kssm_step", self.step_call(*t0, z0r, z0i, force_r=0.5))]

    # ------------------------------------------------------------- the operations

    def _make_scan_free(self):
        run = self._run

        @mx.custom_function
        def scan_free(dr, di, k, cr, ci, z0r, z0i):
            zr, zi = run("kssm_scan", **self.scan_call(dr, di, k, cr, ci, z0r, z0i))
            return zr, zi

        @scan_free.vjp
        def scan_free_vjp(primals, cotangents, outputs):
            dr, di, k, cr, ci, z0r, z0i = primals
            zr, zi = outputs
            gzr, gzi = (mx.zeros_like(o) if c is None else c.astype(mx.float32)
                        for c, o in zip(cotangents, outputs))
            return tuple(run("kssm_scan_vjp",
                             **self.scan_vjp_call(dr, di, k, z0r, z0i, zr, zi, gzr, gzi)))

        return scan_free

    def scan(self, dr, di, k, cr, ci, z0r, z0i, force_r=None):
        """States (zr, zi), each (B, T, G, n) fp32, as reference.scan_sequential. Differentiable
        w.r.t. all seven inputs when free-running; forced runs (inference) have no gradient."""
        args = prepare(dr, di, k, cr, ci, z0r, z0i)
        if force_r is not None:
            zr, zi = self._run("kssm_scan", **self.scan_call(*args, force_r=force_r))
            return zr, zi
        return self._scan_free(*args)

    def step(self, dr, di, k, cr, ci, zr, zi, force_r=None):
        """One decoding token on a (B, G, n) state, as reference.scan_step (no gradient)."""
        B, G, n = np.broadcast_shapes(dr.shape, di.shape, cr.shape, ci.shape, zr.shape)
        s = (B, G, n)
        zr_out, zi_out = self._run("kssm_step", **self.step_call(
            _f32(dr, s), _f32(di, s), _f32(k, (B, G, 1)), _f32(cr, s), _f32(ci, s),
            _f32(zr, s), _f32(zi, s), force_r=force_r))
        return zr_out, zi_out

    # ------------------------------------------------------------- checks

    def parity_check(self, B: int = 2, T: int = 9, G: int = 2, n: int = 5, force_r=None,
                     seed: int = 0, tol: float = TOLERANCE, grads: bool = True,
                     step_check: bool = True) -> dict:
        """Kernel vs reference on random inputs of shape (B, T, G, n): the states, every
        gradient (free runs; random cotangents through mx.vjp) and the decode step. Errors are
        max abs differences scaled by max(1, max |reference|). Returns {"ok", "errors",
        "max_error"}."""
        inputs = random_inputs(B, T, G, n, seed)
        rng = np.random.default_rng(seed + 1)
        cots = [mx.array(rng.normal(size=(B, T, G, n)).astype(np.float32)) for _ in range(2)]
        errors = {}
        if force_r is None and grads:
            ref_out, ref_g = mx.vjp(lambda *a: reference.scan_sequential(*a), list(inputs), cots)
            ker_out, ker_g = mx.vjp(lambda *a: self.scan(*a), list(inputs), cots)
            for name, a, b in zip(GRAD_NAMES, ker_g, ref_g):
                errors[f"grad_{name}"] = rel_err(a, b)
        else:
            ref_out = reference.scan_sequential(*inputs, force_r=force_r)
            ker_out = self.scan(*inputs, force_r=force_r)
        errors["zr"], errors["zi"] = (rel_err(a, b) for a, b in zip(ker_out, ref_out))
        if step_check:
            dr, di, k, cr, ci, z0r, z0i = inputs
            t_in = [x[:, 0] for x in (dr, di, k, cr, ci)]
            ref_s = reference.scan_step(*t_in, z0r, z0i, force_r=force_r)
            ker_s = self.step(*t_in, z0r, z0i, force_r=force_r)
            errors["step_zr"], errors["step_zi"] = (rel_err(a, b) for a, b in zip(ker_s, ref_s))
        worst = max(errors.values())
        return {"ok": bool(np.isfinite(worst) and worst <= tol), "errors": errors,
                "max_error": worst}

    def self_check(self) -> tuple[bool, str]:
        """The first-use check dispatch runs: build the kernels and compare them with the
        reference on small inputs (n = 5; n = 40 for the cross-warp/simdgroup reduction;
        forward, gradients, decode step, forced R). Returns (ok, detail)."""
        if not self._available():
            return False, f"{self.backend} is not available"
        for kw in (dict(B=2, T=7, G=4, n=5), dict(B=1, T=5, G=8, n=40),
                   dict(B=2, T=6, G=4, n=16, force_r=0.6)):
            res = self.parity_check(**kw)
            if not res["ok"]:
                bad = {k: f"{v:.2e}" for k, v in res["errors"].items() if not v <= TOLERANCE}
                return False, f"mismatch vs reference at {kw}: {bad}"
        return True, "ok"
