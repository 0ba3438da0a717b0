"""Pure-MLX reference of the phase-coupling recurrence (the oracle for every kernel).

Per group of n oscillators, complex state z (carried as real pairs zr, zi):

    m_{t-1} = mean_j z_{t-1,j}                                   (mean field)
    w_j     = z_{t-1,j} + K_t (m_{t-1} - z_{t-1,j})              (coupling)
    z_{t,j} = d_{t,j} * w_j + c_{t,j}                            (damped rotation + drive)

with d = lambda e^{i alpha} (|d| = lambda < 1), c = (1 - lambda) b, K in [0, 2].
As a matrix, z_t = D_t C_t z_{t-1} + c_t, C_t = (1-K) I + (K/n) 1 1^T. C_t keeps the group
mean and scales the deviation from it by (1-K), |1-K| <= 1 for K in [0, 2], and the two parts
are orthogonal, so ||C_t||_2 <= 1 and ||D_t C_t||_2 <= max lambda < 1: the state is bounded by
max |c| / (1 - max lambda) and every backward Jacobian has norm < 1 (no gradient blow-up over
any number of steps).

Forcing R (inference only): the mean field becomes r e^{i psi} mean_j |z_j| where
psi = arg(mean_j z_j / |z_j|); this makes the step nonlinear, so it only has the sequential form.

Shapes: d*, c*: (B, T, G, n); K: (B, T, G, 1); z0*: (B, G, n). Returns zr, zi: (B, T, G, n).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

PHASE_EPS = 1e-6  # |z|^2 floor when normalizing to unit phasors


def coupling_field(zr, zi, force_r=None):
    """Mean field (per group, keepdims) the coupling pulls toward; forced magnitude if force_r."""
    if force_r is None:
        return mx.mean(zr, axis=-1, keepdims=True), mx.mean(zi, axis=-1, keepdims=True)
    amp = mx.sqrt(zr * zr + zi * zi + PHASE_EPS)
    pr = mx.mean(zr / amp, axis=-1, keepdims=True)
    pi = mx.mean(zi / amp, axis=-1, keepdims=True)
    pabs = mx.sqrt(pr * pr + pi * pi + 1e-12)
    scale = force_r * mx.mean(amp, axis=-1, keepdims=True) / pabs
    return pr * scale, pi * scale


def scan_step(zr, zi, dr, di, k, cr, ci, force_r=None):
    """One token: state (B, G, n) at t-1 -> state at t. Used for decoding and forced runs."""
    mr, mi = coupling_field(zr, zi, force_r)
    wr = zr + k * (mr - zr)
    wi = zi + k * (mi - zi)
    return dr * wr - di * wi + cr, dr * wi + di * wr + ci


def scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """T applications of scan_step. Under mx.compile (the trainer compiles its step) the loop
    is traced once per shape, so no Python runs per token after the first call."""
    zr, zi = z0r, z0i
    outs_r, outs_i = [], []
    for t in range(dr.shape[1]):
        zr, zi = scan_step(zr, zi, dr[:, t], di[:, t], k[:, t], cr[:, t], ci[:, t], force_r)
        outs_r.append(zr)
        outs_i.append(zi)
    return mx.stack(outs_r, axis=1), mx.stack(outs_i, axis=1)


def _adjoint(dr, di, k, zr, zi, z0r, z0i, gzr, gzi):
    """Gradients of the free scan from the states it produced (the VJP of scan_free).

    With a_t = dL/dz_t and gw_t = conj(d_t) a_t (the gradient reaching w_t), the adjoint runs
    backwards as a_{t-1} = g_{t-1} + (1 - k_t) gw_t + (k_t / n) sum_j gw_t; only that recursion
    is sequential: w_t, the mean fields and every parameter gradient are computed for all t at
    once from the stored states (storing them costs nothing extra: they are the output).
    """
    T = dr.shape[1]
    prev_r = mx.concatenate([z0r[:, None], zr[:, :-1]], axis=1)
    prev_i = mx.concatenate([z0i[:, None], zi[:, :-1]], axis=1)
    mr = mx.mean(prev_r, axis=-1, keepdims=True)
    mi = mx.mean(prev_i, axis=-1, keepdims=True)
    n = dr.shape[-1]
    ar, ai = gzr[:, T - 1], gzi[:, T - 1]
    gws_r, gws_i = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        gwr = dr[:, t] * ar + di[:, t] * ai
        gwi = dr[:, t] * ai - di[:, t] * ar
        gws_r[t], gws_i[t] = gwr, gwi
        kt = k[:, t]
        ar = (1 - kt) * gwr + (kt / n) * mx.sum(gwr, axis=-1, keepdims=True)
        ai = (1 - kt) * gwi + (kt / n) * mx.sum(gwi, axis=-1, keepdims=True)
        if t > 0:
            ar, ai = ar + gzr[:, t - 1], ai + gzi[:, t - 1]
    gwr, gwi = mx.stack(gws_r, axis=1), mx.stack(gws_i, axis=1)
    wr = prev_r + k * (mr - prev_r)
    wi = prev_i + k * (mi - prev_i)
    # a_t = g_t + what step t+1 passed back (zero after the last step)
    a_r = gzr + mx.concatenate([_carry(gwr, k, n)[:, 1:], mx.zeros_like(gzr[:, :1])], axis=1)
    a_i = gzi + mx.concatenate([_carry(gwi, k, n)[:, 1:], mx.zeros_like(gzi[:, :1])], axis=1)
    g_dr = a_r * wr + a_i * wi
    g_di = a_i * wr - a_r * wi
    g_k = mx.sum(gwr * (mr - prev_r) + gwi * (mi - prev_i), axis=-1, keepdims=True)
    return g_dr, g_di, g_k, a_r, a_i, ar, ai


def _carry(gw, k, n):
    """What step t passes back to z_{t-1}: (1 - k_t) gw_t + (k_t / n) sum_j gw_t."""
    return (1 - k) * gw + (k / n) * mx.sum(gw, axis=-1, keepdims=True)


@mx.custom_function
def scan_free(dr, di, k, cr, ci, z0r, z0i):
    """The free-running scan with a hand-written VJP (_adjoint). Autodiff through
    scan_sequential differentiates T input slices, each of whose VJPs writes a full-size
    zero array: O(T^2) work, ~10x slower than this at T = 256."""
    return scan_sequential(dr, di, k, cr, ci, z0r, z0i)


@scan_free.vjp
def _scan_free_vjp(primals, cotangents, outputs):
    dr, di, k, cr, ci, z0r, z0i = primals
    gzr, gzi = cotangents
    zr, zi = outputs
    g_dr, g_di, g_k, g_cr, g_ci, g_z0r, g_z0i = _adjoint(dr, di, k, zr, zi, z0r, z0i, gzr, gzi)
    return g_dr, g_di, g_k, g_cr, g_ci, g_z0r, g_z0i


def _transition_matrices(dr, di, k):
    """Real 2n x 2n form of M_t = D_t C_t, shape (B, T, G, 2n, 2n)."""
    n = dr.shape[-1]
    eye = mx.eye(n)
    c = (1.0 - k)[..., None] * eye + (k / n)[..., None] * mx.ones((n, n))  # (B,T,G,n,n)
    top = mx.concatenate([dr[..., None] * c, -di[..., None] * c], axis=-1)
    bottom = mx.concatenate([di[..., None] * c, dr[..., None] * c], axis=-1)
    return mx.concatenate([top, bottom], axis=-2)


def scan_associative(dr, di, k, cr, ci, z0r, z0i):
    """Same states as scan_sequential (free run) from a log-depth scan over (M_t, u_t) pairs:
    (M2, u2) o (M1, u1) = (M2 M1, M2 u1 + u2). Hillis-Steele form: ceil(log2 T) levels of
    batched (2n x 2n) matmuls, no per-token Python loop."""
    n = dr.shape[-1]
    T = dr.shape[1]
    a = _transition_matrices(dr, di, k)
    u = mx.concatenate([cr, ci], axis=-1)  # (B,T,G,2n)
    z0 = mx.concatenate([z0r, z0i], axis=-1)  # (B,G,2n)
    # fold the initial state into the first drive: u_0 += M_0 z0
    first = (a[:, 0] @ z0[..., None])[..., 0] + u[:, 0]
    u = mx.concatenate([first[:, None], u[:, 1:]], axis=1)
    s = 1
    while s < T:
        a_prev, u_prev = a[:, :-s], u[:, :-s]
        a_cur, u_cur = a[:, s:], u[:, s:]
        u_new = (a_cur @ u_prev[..., None])[..., 0] + u_cur
        u = mx.concatenate([u[:, :s], u_new], axis=1)
        if 2 * s < T:  # the last level needs no matrix products
            a = mx.concatenate([a[:, :s], a_cur @ a_prev], axis=1)
        s *= 2
    return u[..., :n], u[..., n:]


def readout(zr, zi, harmonics: int, force_r=None):
    """Order parameters of the unit phasors, per group and harmonic.

    Returns (features, r): features (..., G, 3H) = [Re Z_h, Im Z_h, |Z_h|] for h = 1..H,
    r (...,) = mean over groups of |Z_1| (the layer's R). Forcing sets |Z_1| = force_r in
    every group, keeping its phase, so the reported R equals force_r exactly.
    """
    amp = mx.sqrt(zr * zr + zi * zi + PHASE_EPS)
    pr, pi = zr / amp, zi / amp
    hr, hi = pr, pi
    feats = []
    r_groups = None
    for h in range(1, harmonics + 1):
        if h > 1:  # p^h = p^(h-1) * p
            hr, hi = hr * pr - hi * pi, hr * pi + hi * pr
        re = mx.mean(hr, axis=-1)
        im = mx.mean(hi, axis=-1)
        mag = mx.sqrt(re * re + im * im + 1e-12)
        if h == 1:
            if force_r is not None:
                scale = force_r / mag
                re, im = re * scale, im * scale
                mag = mx.full(mag.shape, force_r, dtype=mag.dtype)
            r_groups = mag
        feats += [re, im, mag]
    features = mx.stack(feats, axis=-1)  # (..., G, 3H): [re1, im1, mag1, re2, ...]
    return features, mx.mean(r_groups, axis=-1)


def random_inputs(B: int, T: int, G: int, n: int, seed: int = 0):
    """Inputs in the model's range: |d| = lambda in (0.5, 0.99), K in [0, 2], c = (1-lambda) b."""
    rng = np.random.default_rng(seed)
    lam = rng.uniform(0.5, 0.99, (B, T, G, n))
    alpha = rng.uniform(-np.pi, np.pi, (B, T, G, n))
    k = rng.uniform(0.0, 2.0, (B, T, G, 1))
    b = rng.normal(size=(2, B, T, G, n))
    z0 = rng.normal(size=(2, B, G, n))
    arrs = (lam * np.cos(alpha), lam * np.sin(alpha), k, (1 - lam) * b[0], (1 - lam) * b[1],
            z0[0], z0[1])
    return tuple(mx.array(a.astype(np.float32)) for a in arrs)
