"""Fused CUDA kernels for the phase-coupling scan: the twin of metal.py (oracle: reference.py).

Same three kernels, same math, same arguments (fused.py): the forward scan (free or forced R),
its adjoint in reverse time as the VJP, and the decode step. A block per (sequence b, group g),
a thread per oscillator j; the group's mean field is reduced every step with a warp butterfly
(__shfl_xor_sync) and, when n > 32, the per-warp partials through shared memory. Store vs
recompute as in metal.py: the backward reads z_{t-1} from the forward's outputs and recomputes
the group mean and w_t on the fly.

The kernel bodies are Metal's (source_common.py), in CUDA's words (`DIALECT`); the header and
the reductions are CUDA's own. Where it differs from the Metal source:
- blocks are whole warps: n is rounded up to a multiple of 32 (`block_threads`) and the extra
  "dead" lanes (j >= n) load nothing, store nothing and add zero to every sum, so every
  shuffle runs with the full mask 0xffffffff over 32 live threads (a shuffle whose mask names
  a thread that does not exist is undefined behaviour in CUDA);
- MLX turns template arguments into `constexpr` lines at the top of the body (there is no C++
  template around a cuda_kernel), so FORCED reaches the header's helper as a template argument
  from there;
- a block sum reduces K floats at once (kssm_block_sum): the adjoint's five sums per step
  share one reduction and one barrier (metal.py takes two);
- indices are 64-bit (size_t): B*T*G*n can pass 2^31 at training sizes.

MLX builds the kernel text around these strings (mlx/backend/cuda/custom_kernel.cpp,
`build_kernel`): its default header (MLX's device utils.cuh, <cooperative_groups.h>), our
HEADER, then inside `namespace mlx::core::cu` a `__global__ void custom_kernel_<name><template
hash>(const float* x, [const __grid_constant__ Shape x_shape,] ..., float* y, ...)`; the grid is
given in threads and becomes ceil(grid / threadgroup) blocks of `threadgroup` threads.
Status: compiled with NVRTC and run on the CPU through tests/kernel_harness (the same harness as
the Metal source), both without a GPU, in the tests; run on one NVIDIA H100 (MLX 0.32.4's CUDA
build): self-check passed, parity with the reference on the GPU within 4e-6, and v2 trained
with it (research/RESULTS.md section 11). dispatch's first-use self_check guards each new GPU.
"""

from __future__ import annotations

import functools

import mlx.core as mx

from . import fused, reference, source_common
from .fused import MAX_THREADS

WARP = 32

HEADER = f"""
// mlx_kssm phase-coupling scan: shared helpers (see mlx_kssm/kernels/cuda.py)
#define KSSM_MAX_WARPS {MAX_THREADS // WARP}
#define KSSM_MAX_SUMS 5
#define KSSM_SLOT (KSSM_MAX_WARPS * KSSM_MAX_SUMS)
#define KSSM_PHASE_EPS {reference.PHASE_EPS!r}f

// Sum each of the K values in x over the block, in place: a butterfly over the warp
// (__shfl_xor_sync; every lane ends with the same sums; blocks are whole warps, see cuda.py,
// so the full mask is right), then the per-warp partials through shared memory. `buf` (one
// slot of KSSM_SLOT floats) alternates between two slots by step parity, so one barrier per
// reduction suffices: a slot is rewritten two steps later, after every thread has passed the
// next step's barrier, hence after every thread has read it.
template <int K>
__device__ inline void kssm_block_sum(float (&x)[K], float* buf, int warps) {{
    for (int c = 0; c < K; ++c) {{
        for (int offset = 16; offset > 0; offset >>= 1) {{
            x[c] += __shfl_xor_sync(0xffffffffu, x[c], offset);
        }}
    }}
    if (warps > 1) {{
        if ((threadIdx.x & 31) == 0) {{
            for (int c = 0; c < K; ++c) {{
                buf[(threadIdx.x >> 5) * K + c] = x[c];
            }}
        }}
        __syncthreads();
        for (int c = 0; c < K; ++c) {{
            x[c] = buf[c];
            for (int w = 1; w < warps; ++w) {{
                x[c] += buf[w * K + c];
            }}
        }}
    }}
}}

// The field the coupling pulls toward (reference.coupling_field): the group mean of z, or
// with forcing r * e^(i psi) * mean_j |z_j|, psi the phase of the mean unit phasor. Dead lanes
// (live == false) add zero.
template <int FORCED>
__device__ inline float2 kssm_field(float zr, float zi, float r, float inv_n, float* buf,
                                   bool live, int warps) {{
    if (FORCED) {{
        float amp = sqrtf(zr * zr + zi * zi + KSSM_PHASE_EPS);
        float s[3] = {{live ? zr / amp : 0.0f, live ? zi / amp : 0.0f, live ? amp : 0.0f}};
        kssm_block_sum(s, buf, warps);
        float pr = s[0] * inv_n;
        float pi = s[1] * inv_n;
        float pabs = sqrtf(pr * pr + pi * pi + 1e-12f);
        float scale = r * (s[2] * inv_n) / pabs;
        return make_float2(pr * scale, pi * scale);
    }}
    float s[2] = {{live ? zr : 0.0f, live ? zi : 0.0f}};
    kssm_block_sum(s, buf, warps);
    return make_float2(s[0] * inv_n, s[1] * inv_n);
}}
"""

# The bodies are source_common's, in CUDA's words. Blocks (1, G, B) of 32 * ceil(n / 32)
# threads; the adjoint's five group sums per step share one block reduction.
DIALECT = source_common.Dialect(
    index="size_t", count="int",
    block="blockIdx", thread="threadIdx.x",
    live="j < N",  # the dead lanes of the last warp hold no oscillator
    lanes="",
    lane_args="live, warps",
    shared="__shared__ float",
    adjoint_shared="""
    __shared__ float red[2 * KSSM_SLOT];""",
    adjoint_sums="""
        // one reduction for the step: mean of z_{t-1}, sum of gw, sum of gw . z_{t-1}
        float s[5] = {pr, pi, gwr, gwi, gwr * pr + gwi * pi};
        kssm_block_sum(s, red + (t & 1) * KSSM_SLOT, warps);""")
SCAN_SOURCE, SCAN_VJP_SOURCE, STEP_SOURCE = (
    DIALECT.body(name) for name in ("kssm_scan", "kssm_scan_vjp", "kssm_step"))


def kernel_spec(name: str) -> dict:
    """Arguments of mx.fast.cuda_kernel for kernel `name`."""
    sources = {"kssm_scan": SCAN_SOURCE, "kssm_scan_vjp": SCAN_VJP_SOURCE,
               "kssm_step": STEP_SOURCE}
    return fused.kernel_spec(name, HEADER, sources, shared_memory=0)


def is_available() -> bool:
    """An NVIDIA GPU under MLX's CUDA backend (mlx[cuda12] / mlx[cuda13])."""
    return hasattr(mx, "cuda") and mx.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _make_kernel(name: str):
    """Build kernel `name` once per process; None where CUDA is absent."""
    if not is_available():
        return None
    return mx.fast.cuda_kernel(**kernel_spec(name))


def _run_kernel(name: str, **call):
    """Launch kernel `name` with mx.fast.cuda_kernel call arguments (inputs, template, grid,
    threadgroup, output_shapes, output_dtypes). The C++ harness substitutes this function."""
    return fused.launch(_make_kernel(name), call, "the fused CUDA scan needs an NVIDIA GPU with "
                        "MLX's CUDA build (mx.cuda.is_available())")


def block_threads(n: int) -> int:
    """Threads per block for n oscillators: whole warps (see the module docstring)."""
    return WARP * ((n + WARP - 1) // WARP)


# Looked up at call time (not bound here), so a harness that replaces _run_kernel or a test
# that pretends CUDA is available reaches every operation below.
_ops = fused.FusedScan("CUDA", lambda name, **call: _run_kernel(name, **call),
                       lambda: is_available(), block_threads=block_threads)
scan, step = _ops.scan, _ops.step
parity_check, self_check = _ops.parity_check, _ops.self_check
example_calls = _ops.example_calls
