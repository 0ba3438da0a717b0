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
twin (fused.py), and so are the kernel bodies (source_common.py: written once, in each backend's
words); this file holds the Metal header, Metal's `DIALECT` and `_run_kernel`, the one place a
kernel is launched. HEADER and the *_SOURCE strings below are exactly what MLX compiles;
tests/kernel_harness compiles the very same strings as C++ on the CPU (these machines have no
Metal) and checks them against the reference, forward and backward.
Status: verified through that harness (including that its generated signature is byte for byte
the one MLX generates) -- not yet run on a real Apple GPU; dispatch's first-use self_check
guards the first run on one.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from . import fused, reference, source_common
from .fused import MAX_THREADS

SIMD_WIDTH = 32

HEADER = f"""
// mlx_kssm phase-coupling scan: shared helpers (see mlx_kssm/kernels/metal.py)
#define KSSM_MAX_SIMD {MAX_THREADS // SIMD_WIDTH}
#define KSSM_SLOT KSSM_MAX_SIMD  // one reduction slot: a partial per simdgroup
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

# The bodies are source_common's, in Metal's words. Grid (n, G, B), threadgroup (n, 1, 1).
# The adjoint's five group sums per step take two reductions here: a float4 (z_{t-1} and gw)
# and the dot.
DIALECT = source_common.Dialect(
    index="uint", count="uint",
    block="threadgroup_position_in_grid", thread="thread_position_in_threadgroup.x",
    live="true",  # a threadgroup is exactly n threads
    lanes="""
    const uint lane = thread_index_in_simdgroup;
    const uint sid = simdgroup_index_in_threadgroup;""",
    lane_args="warps, lane, sid",
    shared="threadgroup float4",
    adjoint_shared="""
    threadgroup float4 red4[2 * KSSM_SLOT];
    threadgroup float red1[2 * KSSM_SLOT];""",
    adjoint_sums="""
        float4 s4 = kssm_group_sum(float4(pr, pi, gwr, gwi), red4 + (t & 1) * KSSM_SLOT,
                                   warps, lane, sid);
        float s[5] = {s4.x, s4.y, s4.z, s4.w,
                      kssm_group_sum(gwr * pr + gwi * pi, red1 + (t & 1) * KSSM_SLOT,
                                     warps, lane, sid)};""")
SCAN_SOURCE, SCAN_VJP_SOURCE, STEP_SOURCE = (
    DIALECT.body(name) for name in ("kssm_scan", "kssm_scan_vjp", "kssm_step"))


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
    return fused.launch(_make_kernel(name), call,
                        "the fused scan kernel needs a Metal GPU (mx.metal.is_available())")


# Looked up at call time (not bound here), so a harness that replaces _run_kernel or a test
# that pretends Metal is available reaches every operation below.
_ops = fused.FusedScan("Metal", lambda name, **call: _run_kernel(name, **call),
                       lambda: mx.metal.is_available())
scan, step = _ops.scan, _ops.step
parity_check, self_check = _ops.parity_check, _ops.self_check
example_calls = _ops.example_calls
