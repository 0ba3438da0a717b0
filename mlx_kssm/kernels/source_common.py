"""The kernel bodies both fused backends ship, written once: the forward scan, its adjoint and
the decode step (their math: reference.py; the adjoint's: _SCAN_VJP below).

The arithmetic of a step is plain C, the same in Metal and CUDA. What differs is named by the
`$` fields of a backend's `Dialect` (metal.py, cuda.py): the index types, the built-in block and
thread positions, block memory and its reductions (each backend's HEADER defines
`kssm_field` and KSSM_SLOT, the size of one reduction slot). `Dialect.body(name)` is the text
MLX compiles for kernel `name`.

Every body guards the loads and stores of its thread with `live` (whether thread j holds an
oscillator): CUDA blocks are whole warps, so the last one may have dead lanes (cuda.py); a
Metal threadgroup is exactly n threads, so there it is the constant `true` and the guards fold
away. Dead lanes keep every value at zero, so they add nothing to the block sums.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from string import Template

# Where the block and the thread are: sequence b and group g from the block, oscillator j from
# the thread; G and N from d's last two axes ($g_axis, $n_axis: (B, T, G, n) or (B, G, n)).
_PROLOGUE = """
    const $index b = $block.z;
    const $index g = $block.y;
    const $count j = $thread;
    const $index G = dr_shape[$g_axis];
    const $count N = dr_shape[$n_axis];
    const bool live = $live;$lanes
    const int warps = (N + 31) / 32;   // lane groups of 32 (simdgroups / warps) in the block
    const float inv_n = 1.0f / float(N);"""

# z_t = d_t (z_{t-1} + K_t (m - z_{t-1})) + c_t for this thread's oscillator: (zr_, zi_) goes
# from z_{t-1} to z_t, with m the field kssm_field returned and kidx, idx the step's (b, t, g)
# in k and (b, t, g, j) in d and c.
_FORWARD_STEP = """
            float kk = k[kidx];
            float wr = zr_ + kk * (m.x - zr_);
            float wi = zi_ + kk * (m.y - zi_);
            float a = dr[idx];
            float bb = di[idx];
            zr_ = a * wr - bb * wi + cr[idx];
            zi_ = a * wi + bb * wr + ci[idx];"""

# Inputs: d*, c* (B,T,G,n); k (B,T,G,1); z0* (B,G,n); force_r (1,). Outputs zr, zi (B,T,G,n).
_SCAN = """
    $shared red[2 * KSSM_SLOT];$prologue
    const int T = dr_shape[1];
    const $index s0 = (b * G + g) * N + j;   // (b, g, j) in z0
    const float r = force_r[0];
    float zr_ = live ? z0r[s0] : 0.0f;
    float zi_ = live ? z0i[s0] : 0.0f;
    $index kidx = b * T * G + g;     // (b, t, g) in k
    $index idx = kidx * N + j;       // (b, t, g, j) in d, c, z
    for (int t = 0; t < T; ++t) {
        float2 m = kssm_field<FORCED>(zr_, zi_, r, inv_n, red + (t & 1) * KSSM_SLOT,
                                      $lane_args);
        if (live) {$forward_step
            zr[idx] = zr_;
            zi[idx] = zi_;
        }
        kidx += G;
        idx += G * N;
    }
"""

# Adjoint in reverse time. Inputs: dr, di, k, z0r, z0i, zr, zi (forward states), gzr, gzi
# (cotangents of the states). Outputs: gdr, gdi, gk, gcr, gci, gz0r, gz0i. The forward's states
# give z_{t-1}; the group mean and w_t are recomputed. With a = dL/dz_t (the cotangent at t plus
# what flows back from t+1) and z_t = d_t w_t + c_t:
#   dc = a, dd = a conj(w), gw = conj(d) a, dK = sum_j gw_j . (m - z_{t-1,j}),
#   dL/dz_{t-1} = (1 - K) gw + K mean_j gw_j (+ the cotangent at t-1). `$adjoint_sums` reduces, in s[5], the
# group sums of z_{t-1} (re, im), of gw (re, im) and of gw . z_{t-1}.
_SCAN_VJP = """$adjoint_shared$prologue
    const int T = dr_shape[1];
    const $index s0 = (b * G + g) * N + j;   // (b, g, j) in z0
    const $index step = G * N;
    $index kidx = (b * T + (T - 1)) * G + g;
    $index idx = kidx * N + j;
    float ar = 0.0f;
    float ai = 0.0f;
    for (int t = T - 1; t >= 0; --t) {
        float pr = 0.0f;   // z_{t-1}
        float pi = 0.0f;
        float a = 0.0f;
        float bb = 0.0f;
        if (live) {
            ar += gzr[idx];
            ai += gzi[idx];
            gcr[idx] = ar;
            gci[idx] = ai;
            pr = (t > 0) ? zr[idx - step] : z0r[s0];
            pi = (t > 0) ? zi[idx - step] : z0i[s0];
            a = dr[idx];
            bb = di[idx];
        }
        float gwr = a * ar + bb * ai;
        float gwi = a * ai - bb * ar;$adjoint_sums
        float mr = s[0] * inv_n;
        float mi = s[1] * inv_n;
        float kk = k[kidx];
        if (live) {
            float wr = pr + kk * (mr - pr);
            float wi = pi + kk * (mi - pi);
            gdr[idx] = ar * wr + ai * wi;
            gdi[idx] = ai * wr - ar * wi;
            ar = (1.0f - kk) * gwr + kk * (s[2] * inv_n);
            ai = (1.0f - kk) * gwi + kk * (s[3] * inv_n);
        }
        if (j == 0) {
            gk[kidx] = mr * s[2] + mi * s[3] - s[4];
        }
        if (t > 0) {
            kidx -= G;
            idx -= step;
        }
    }
    if (live) {
        gz0r[s0] = ar;
        gz0i[s0] = ai;
    }
"""

# One decoding token. Inputs: zr, zi, dr, di, cr, ci (B,G,n); k (B,G,1); force_r (1,).
# Outputs zr_out, zi_out (B,G,n).
_STEP = """
    $shared red[KSSM_SLOT];$prologue
    const $index kidx = b * G + g;
    const $index idx = kidx * N + j;
    float zr_ = live ? zr[idx] : 0.0f;
    float zi_ = live ? zi[idx] : 0.0f;
    float2 m = kssm_field<FORCED>(zr_, zi_, force_r[0], inv_n, red, $lane_args);
    if (live) {$forward_step
        zr_out[idx] = zr_;
        zi_out[idx] = zi_;
    }
"""

# kernel name -> (body, the axis of G in d: 2 for (B, T, G, n), 1 for the step's (B, G, n))
BODIES = {"kssm_scan": (_SCAN, 2), "kssm_scan_vjp": (_SCAN_VJP, 2), "kssm_step": (_STEP, 1)}


@dataclass(frozen=True)
class Dialect:
    """What a backend's kernel bodies say in its own words (each field fills `$field`)."""

    index: str      # type of flat indices into the arrays
    count: str      # type of the oscillator j and the group size N
    block: str      # the block's position in the grid (.y: group, .z: sequence)
    thread: str     # the thread's position in its block (.x: oscillator)
    live: str       # whether thread j holds an oscillator
    lanes: str      # lines naming the thread's lane group, where the reductions need them
    lane_args: str  # kssm_field's arguments after the reduction buffer
    shared: str     # the declaration of block memory for reduction slots
    adjoint_shared: str  # the adjoint's block memory
    adjoint_sums: str    # the adjoint's reduction: declares float s[5] (see _SCAN_VJP)

    def body(self, name: str) -> str:
        """The body of kernel `name` (a BODIES key) in this dialect."""
        template, g_axis = BODIES[name]
        text = Template(template).safe_substitute(prologue=_PROLOGUE, forward_step=_FORWARD_STEP)
        return Template(text).substitute(asdict(self), g_axis=g_axis, n_axis=g_axis + 1)
