"""Fused Metal kernels for the phase-coupling scan (the oracle is reference.py).

    scan     one dispatch runs all T steps for the whole batch: a threadgroup per
             (sequence b, group g), a thread per oscillator j, the group's mean field
             reduced every step with simd_sum (and threadgroup memory across simdgroups
             when n > 32); fp32 state, z_t written for every t
    scan VJP a second fused kernel runs the adjoint recurrence in reverse time and gives the
             gradient of every input (d, k, c, z0)
    step     one token on a (B, G, n) state, for decoding (same header math)

Memory (store vs recompute): the forward's outputs are the states z_t for every t, so the
backward *reads* z_{t-1} from them (store, at no extra cost: they exist anyway as the scan's
result) and *recomputes* the group mean m_{t-1} and w_t = z_{t-1} + K_t (m_{t-1} - z_{t-1})
on the fly -- m costs one group reduction, which the adjoint needs in the same step anyway
(the transpose of the mean is a broadcast of the adjoint's group mean), so both share it.
Nothing beyond the outputs is kept between the two kernels.

Forcing R (reference.coupling_field) is a template switch of the forward and step kernels;
forced runs are inference-only and have no VJP.

The source strings below are exactly what MLX compiles; tests/metal_harness compiles the very
same strings as C++ on the CPU (these machines have no Metal) and checks them against the
reference, forward and backward. `_run_kernel` is the one place a kernel is launched.
Status: verified through that harness (including that its generated signature is byte for byte
the one MLX generates) -- not yet run on a real Apple GPU; dispatch's first-use self_check
guards the first run on one.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import numpy as np

from . import reference

MAX_THREADS = 1024  # Apple GPUs: at most 1024 threads per threadgroup (one per oscillator)
SIMD_WIDTH = 32

HEADER = f"""
// mlx_kssm phase-coupling scan: shared helpers (see mlx_kssm/kernels/metal.py)
#define KSSM_MAX_SIMD {MAX_THREADS // SIMD_WIDTH}
#define KSSM_PHASE_EPS {reference.PHASE_EPS!r}f

// Sum of v over the threadgroup: simd_sum within each simdgroup, then the per-simdgroup
// partials through threadgroup memory. `buf` alternates between two slots by step parity,
// so one barrier per reduction suffices: a slot is rewritten two steps later, after every
// thread has passed the next step's barrier, hence after every thread has read it.
template <typename V>
inline V kssm_group_sum(V v, threadgroup V* buf, int ns, uint lane, uint sid) {{
    v = metal::simd_sum(v);
    if (ns > 1) {{
        if (lane == 0) {{
            buf[sid] = v;
        }}
        metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
        v = buf[0];
        for (int s = 1; s < ns; ++s) {{
            v += buf[s];
        }}
    }}
    return v;
}}

// The field the coupling pulls toward (reference.coupling_field): the group mean of z, or
// with forcing r * e^(i psi) * mean_j |z_j|, psi the phase of the mean unit phasor.
template <int FORCED>
inline float2 kssm_field(float zr, float zi, float r, float inv_n,
                         threadgroup float4* buf, int ns, uint lane, uint sid) {{
    if (FORCED) {{
        float amp = metal::sqrt(zr * zr + zi * zi + KSSM_PHASE_EPS);
        float4 s = kssm_group_sum(float4(zr / amp, zi / amp, amp, 0.0f), buf, ns, lane, sid);
        float pr = s.x * inv_n;
        float pi = s.y * inv_n;
        float pabs = metal::sqrt(pr * pr + pi * pi + 1e-12f);
        float scale = r * (s.z * inv_n) / pabs;
        return float2(pr * scale, pi * scale);
    }}
    float4 s = kssm_group_sum(float4(zr, zi, 0.0f, 0.0f), buf, ns, lane, sid);
    return float2(s.x * inv_n, s.y * inv_n);
}}
"""

# Inputs: d*, c* (B,T,G,n); k (B,T,G,1); z0* (B,G,n); force_r (1,). Outputs zr, zi (B,T,G,n).
# Grid (n, G, B), threadgroup (n, 1, 1).
SCAN_SOURCE = """
    threadgroup float4 red[2 * KSSM_MAX_SIMD];
    const uint b = threadgroup_position_in_grid.z;
    const uint g = threadgroup_position_in_grid.y;
    const uint j = thread_position_in_threadgroup.x;
    const uint lane = thread_index_in_simdgroup;
    const uint sid = simdgroup_index_in_threadgroup;
    const int T = dr_shape[1];
    const uint G = dr_shape[2];
    const uint N = dr_shape[3];
    const int ns = (N + 31) / 32;
    const float inv_n = 1.0f / float(N);
    const float r = force_r[0];

    const uint s0 = (b * G + g) * N + j;
    float zr_ = z0r[s0];
    float zi_ = z0i[s0];
    uint kidx = b * T * G + g;       // (b, t, g) in k
    uint idx = kidx * N + j;         // (b, t, g, j) in d, c, z
    for (int t = 0; t < T; ++t) {
        float2 m = kssm_field<FORCED>(zr_, zi_, r, inv_n, red + (t & 1) * KSSM_MAX_SIMD,
                                      ns, lane, sid);
        float kk = k[kidx];
        float wr = zr_ + kk * (m.x - zr_);
        float wi = zi_ + kk * (m.y - zi_);
        float a = dr[idx];
        float bb = di[idx];
        zr_ = a * wr - bb * wi + cr[idx];
        zi_ = a * wi + bb * wr + ci[idx];
        zr[idx] = zr_;
        zi[idx] = zi_;
        kidx += G;
        idx += G * N;
    }
"""

# Adjoint in reverse time. Inputs: dr, di, k, z0r, z0i, zr, zi (forward states), gzr, gzi
# (cotangents of the states). Outputs: gdr, gdi, gk, gcr, gci, gz0r, gz0i.
# With a = dL/dz_t (cotangent at t plus what flows back from t+1), z_t = d_t w_t + c_t:
#   dc = a, dd = a conj(w), gw = conj(d) a, dK = sum_j gw_j . (m - z_{t-1,j}),
#   dL/dz_{t-1} = (1 - K) gw + K mean_j gw_j (+ the cotangent at t-1).
SCAN_VJP_SOURCE = """
    threadgroup float4 red4[2 * KSSM_MAX_SIMD];
    threadgroup float red1[2 * KSSM_MAX_SIMD];
    const uint b = threadgroup_position_in_grid.z;
    const uint g = threadgroup_position_in_grid.y;
    const uint j = thread_position_in_threadgroup.x;
    const uint lane = thread_index_in_simdgroup;
    const uint sid = simdgroup_index_in_threadgroup;
    const int T = dr_shape[1];
    const uint G = dr_shape[2];
    const uint N = dr_shape[3];
    const int ns = (N + 31) / 32;
    const float inv_n = 1.0f / float(N);

    const uint s0 = (b * G + g) * N + j;
    const uint step = G * N;
    uint kidx = (b * T + (T - 1)) * G + g;
    uint idx = kidx * N + j;
    float ar = 0.0f;
    float ai = 0.0f;
    for (int t = T - 1; t >= 0; --t) {
        ar += gzr[idx];
        ai += gzi[idx];
        gcr[idx] = ar;
        gci[idx] = ai;
        float pr = (t > 0) ? zr[idx - step] : z0r[s0];   // z_{t-1}
        float pi = (t > 0) ? zi[idx - step] : z0i[s0];
        float a = dr[idx];
        float bb = di[idx];
        float gwr = a * ar + bb * ai;
        float gwi = a * ai - bb * ar;
        float4 s = kssm_group_sum(float4(pr, pi, gwr, gwi), red4 + (t & 1) * KSSM_MAX_SIMD,
                                  ns, lane, sid);
        float sdot = kssm_group_sum(gwr * pr + gwi * pi, red1 + (t & 1) * KSSM_MAX_SIMD,
                                    ns, lane, sid);
        float mr = s.x * inv_n;
        float mi = s.y * inv_n;
        float kk = k[kidx];
        float wr = pr + kk * (mr - pr);
        float wi = pi + kk * (mi - pi);
        gdr[idx] = ar * wr + ai * wi;
        gdi[idx] = ai * wr - ar * wi;
        if (j == 0) {
            gk[kidx] = mr * s.z + mi * s.w - sdot;
        }
        ar = (1.0f - kk) * gwr + kk * (s.z * inv_n);
        ai = (1.0f - kk) * gwi + kk * (s.w * inv_n);
        if (t > 0) {
            kidx -= G;
            idx -= step;
        }
    }
    gz0r[s0] = ar;
    gz0i[s0] = ai;
"""

# One decoding token. Inputs: zr, zi, dr, di, cr, ci (B,G,n); k (B,G,1); force_r (1,).
# Outputs zr_out, zi_out (B,G,n). Grid (n, G, B), threadgroup (n, 1, 1).
STEP_SOURCE = """
    threadgroup float4 red[KSSM_MAX_SIMD];
    const uint b = threadgroup_position_in_grid.z;
    const uint g = threadgroup_position_in_grid.y;
    const uint j = thread_position_in_threadgroup.x;
    const uint G = dr_shape[1];
    const uint N = dr_shape[2];
    const uint kidx = b * G + g;
    const uint idx = kidx * N + j;
    float zr_ = zr[idx];
    float zi_ = zi[idx];
    float2 m = kssm_field<FORCED>(zr_, zi_, force_r[0], 1.0f / float(N), red, (N + 31) / 32,
                                  thread_index_in_simdgroup, simdgroup_index_in_threadgroup);
    float kk = k[kidx];
    float wr = zr_ + kk * (m.x - zr_);
    float wi = zi_ + kk * (m.y - zi_);
    float a = dr[idx];
    float bb = di[idx];
    zr_out[idx] = a * wr - bb * wi + cr[idx];
    zi_out[idx] = a * wi + bb * wr + ci[idx];
"""


def kernel_spec(name: str) -> dict:
    """Arguments of mx.fast.metal_kernel for kernel `name` (read at call time, so a test that
    plants a bug in a source string sees it)."""
    specs = {
        "kssm_scan": (["dr", "di", "k", "cr", "ci", "z0r", "z0i", "force_r"], ["zr", "zi"],
                      SCAN_SOURCE),
        "kssm_scan_vjp": (["dr", "di", "k", "z0r", "z0i", "zr", "zi", "gzr", "gzi"],
                          ["gdr", "gdi", "gk", "gcr", "gci", "gz0r", "gz0i"], SCAN_VJP_SOURCE),
        "kssm_step": (["zr", "zi", "dr", "di", "k", "cr", "ci", "force_r"], ["zr_out", "zi_out"],
                      STEP_SOURCE),
    }
    input_names, output_names, source = specs[name]
    return dict(name=name, input_names=input_names, output_names=output_names, source=source,
                header=HEADER, ensure_row_contiguous=True, atomic_outputs=False)


KERNEL_NAMES = ("kssm_scan", "kssm_scan_vjp", "kssm_step")


@functools.lru_cache(maxsize=None)
def _make_kernel(name: str):
    """Build kernel `name` once per process; None where Metal is absent."""
    if not mx.metal.is_available():
        return None
    return mx.fast.metal_kernel(**kernel_spec(name))


def _make_scan_kernel():
    return _make_kernel("kssm_scan")


def _make_scan_vjp_kernel():
    return _make_kernel("kssm_scan_vjp")


def _make_step_kernel():
    return _make_kernel("kssm_step")


def _run_kernel(name: str, **call):
    """Launch kernel `name` with mx.fast.metal_kernel call arguments (inputs, template, grid,
    threadgroup, output_shapes, output_dtypes). The C++ harness substitutes this function."""
    kernel = _make_kernel(name)
    if kernel is None:
        raise RuntimeError("the fused scan kernel needs a Metal GPU (mx.metal.is_available())")
    return kernel(**call)


def _launch(B: int, G: int, n: int):
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"the fused scan runs one thread per oscillator: n must be in "
                         f"[1, {MAX_THREADS}], got {n}")
    return dict(grid=(n, G, B), threadgroup=(n, 1, 1))


def _force_arg(force_r):
    if force_r is None:
        return mx.zeros((1,), mx.float32), 0
    return mx.reshape(mx.array(force_r, dtype=mx.float32), (1,)), 1


def scan_call(dr, di, k, cr, ci, z0r, z0i, force_r=None) -> dict:
    """Call arguments of the forward scan kernel (all arrays fp32 and full-shape)."""
    B, T, G, n = dr.shape
    fr, forced = _force_arg(force_r)
    return dict(inputs=[dr, di, k, cr, ci, z0r, z0i, fr], template=[("FORCED", forced)],
                output_shapes=[(B, T, G, n)] * 2, output_dtypes=[mx.float32] * 2,
                **_launch(B, G, n))


def scan_vjp_call(dr, di, k, z0r, z0i, zr, zi, gzr, gzi) -> dict:
    B, T, G, n = dr.shape
    full, kshape, zshape = (B, T, G, n), (B, T, G, 1), (B, G, n)
    return dict(inputs=[dr, di, k, z0r, z0i, zr, zi, gzr, gzi],
                output_shapes=[full, full, kshape, full, full, zshape, zshape],
                output_dtypes=[mx.float32] * 7, **_launch(B, G, n))


def step_call(zr, zi, dr, di, k, cr, ci, force_r=None) -> dict:
    B, G, n = dr.shape
    fr, forced = _force_arg(force_r)
    return dict(inputs=[zr, zi, dr, di, k, cr, ci, fr], template=[("FORCED", forced)],
                output_shapes=[(B, G, n)] * 2, output_dtypes=[mx.float32] * 2,
                **_launch(B, G, n))


def _prepare(dr, di, k, cr, ci, z0r, z0i):
    """fp32, full shapes (broadcast and cast are ordinary ops, so autodiff undoes them)."""
    B, T, G, n = np.broadcast_shapes(dr.shape, di.shape, cr.shape, ci.shape)
    f32 = lambda x, s: mx.broadcast_to(x.astype(mx.float32), s)  # noqa: E731
    full = (B, T, G, n)
    return (f32(dr, full), f32(di, full), f32(k, (B, T, G, 1)), f32(cr, full), f32(ci, full),
            f32(z0r, (B, G, n)), f32(z0i, (B, G, n)))


@mx.custom_function
def _scan_free(dr, di, k, cr, ci, z0r, z0i):
    zr, zi = _run_kernel("kssm_scan", **scan_call(dr, di, k, cr, ci, z0r, z0i))
    return zr, zi


@_scan_free.vjp
def _scan_free_vjp(primals, cotangents, outputs):
    dr, di, k, cr, ci, z0r, z0i = primals
    zr, zi = outputs
    gzr, gzi = (mx.zeros_like(o) if c is None else c.astype(mx.float32)
                for c, o in zip(cotangents, outputs))
    gdr, gdi, gk, gcr, gci, gz0r, gz0i = _run_kernel(
        "kssm_scan_vjp", **scan_vjp_call(dr, di, k, z0r, z0i, zr, zi, gzr, gzi))
    return gdr, gdi, gk, gcr, gci, gz0r, gz0i


def scan(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """States (zr, zi), each (B, T, G, n) fp32, as reference.scan_sequential. Differentiable
    w.r.t. all seven inputs when free-running; forced runs (inference) have no gradient."""
    args = _prepare(dr, di, k, cr, ci, z0r, z0i)
    if force_r is not None:
        zr, zi = _run_kernel("kssm_scan", **scan_call(*args, force_r=force_r))
        return zr, zi
    return _scan_free(*args)


def step(zr, zi, dr, di, k, cr, ci, force_r=None):
    """One decoding token on a (B, G, n) state, as reference.scan_step (no gradient)."""
    B, G, n = np.broadcast_shapes(dr.shape, di.shape, cr.shape, ci.shape, zr.shape)
    f = lambda x, s=(B, G, n): mx.broadcast_to(x.astype(mx.float32), s)  # noqa: E731
    zr_out, zi_out = _run_kernel("kssm_step", **step_call(
        f(zr), f(zi), f(dr), f(di), f(k, (B, G, 1)), f(cr), f(ci), force_r=force_r))
    return zr_out, zi_out


GRAD_NAMES = ("dr", "di", "k", "cr", "ci", "z0r", "z0i")


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def parity_check(B: int = 2, T: int = 9, G: int = 2, n: int = 5, force_r=None, seed: int = 0,
                 tol: float = 2e-4, grads: bool = True, step_check: bool = True) -> dict:
    """Kernel vs reference on random inputs of shape (B, T, G, n): the states, every gradient
    (free runs; random cotangents through mx.vjp) and the decode step. Errors are max abs
    differences scaled by max(1, max |reference|). Returns {"ok", "errors", "max_error"}."""
    inputs = reference.random_inputs(B, T, G, n, seed)
    rng = np.random.default_rng(seed + 1)
    cots = [mx.array(rng.normal(size=(B, T, G, n)).astype(np.float32)) for _ in range(2)]
    errors = {}
    if force_r is None and grads:
        ref_out, ref_g = mx.vjp(lambda *a: reference.scan_sequential(*a), list(inputs), cots)
        ker_out, ker_g = mx.vjp(lambda *a: scan(*a), list(inputs), cots)
        for name, a, b in zip(GRAD_NAMES, ker_g, ref_g):
            errors[f"grad_{name}"] = _rel_err(a, b)
    else:
        ref_out = reference.scan_sequential(*inputs, force_r=force_r)
        ker_out = scan(*inputs, force_r=force_r)
    errors["zr"], errors["zi"] = (_rel_err(a, b) for a, b in zip(ker_out, ref_out))
    if step_check:
        dr, di, k, cr, ci, z0r, z0i = inputs
        t_in = [x[:, 0] for x in (dr, di, k, cr, ci)]
        ref_s = reference.scan_step(z0r, z0i, *t_in, force_r=force_r)
        ker_s = step(z0r, z0i, *t_in, force_r=force_r)
        errors["step_zr"], errors["step_zi"] = (_rel_err(a, b) for a, b in zip(ker_s, ref_s))
    worst = max(errors.values())
    return {"ok": bool(np.isfinite(worst) and worst <= tol), "errors": errors, "max_error": worst}


def self_check() -> tuple[bool, str]:
    """The first-use check dispatch runs: build the kernels and compare them with the
    reference on small inputs (n = 5 and n = 40 for the multi-simdgroup path; forward,
    gradients, decode step, forced R). Returns (ok, detail)."""
    if not mx.metal.is_available():
        return False, "Metal is not available"
    for kw in (dict(B=2, T=7, G=4, n=5), dict(B=1, T=5, G=8, n=40),
               dict(B=2, T=6, G=4, n=16, force_r=0.6)):
        res = parity_check(**kw)
        if not res["ok"]:
            bad = {k: f"{v:.2e}" for k, v in res["errors"].items() if not v <= 2e-4}
            return False, f"mismatch vs reference at {kw}: {bad}"
    return True, "ok"
