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

Launch, call arguments, the custom VJP, the step and the parity check are shared with the CUDA
twin (fused.py); this file holds the Metal source and `_run_kernel`, the one place a kernel is
launched. The source strings below are exactly what MLX compiles; tests/kernel_harness compiles
the very same strings as C++ on the CPU (these machines have no Metal) and checks them against
the reference, forward and backward.
Status: verified through that harness (including that its generated signature is byte for byte
the one MLX generates) -- not yet run on a real Apple GPU; dispatch's first-use self_check
guards the first run on one.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from . import fused, reference
from .fused import MAX_THREADS

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
    """Arguments of mx.fast.metal_kernel for kernel `name`."""
    sources = {"kssm_scan": SCAN_SOURCE, "kssm_scan_vjp": SCAN_VJP_SOURCE,
               "kssm_step": STEP_SOURCE}
    return fused.kernel_spec(name, HEADER, sources, atomic_outputs=False)


@functools.lru_cache(maxsize=None)
def _make_kernel(name: str):
    """Build kernel `name` once per process; None where Metal is absent."""
    if not mx.metal.is_available():
        return None
    return mx.fast.metal_kernel(**kernel_spec(name))


def _run_kernel(name: str, **call):
    """Launch kernel `name` with mx.fast.metal_kernel call arguments (inputs, template, grid,
    threadgroup, output_shapes, output_dtypes). The C++ harness substitutes this function."""
    kernel = _make_kernel(name)
    if kernel is None:
        raise RuntimeError("the fused scan kernel needs a Metal GPU (mx.metal.is_available())")
    return kernel(**call)


# Looked up at call time (not bound here), so a harness that replaces _run_kernel or a test
# that pretends Metal is available reaches every operation below.
_ops = fused.FusedScan("Metal", lambda name, **call: _run_kernel(name, **call),
                       lambda: mx.metal.is_available())
scan, step = _ops.scan, _ops.step
parity_check, self_check = _ops.parity_check, _ops.self_check
example_calls = _ops.example_calls
