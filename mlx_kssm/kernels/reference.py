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
Argument order, here and in every implementation (cpu.py, fused.py, dispatch.py): the inputs
(dr, di, k, cr, ci), then the state (z0r, z0i for a scan, zr, zi for a step), then force_r.
"""

from __future__ import annotations

import mlx.core as mx

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


def scan_step(dr, di, k, cr, ci, zr, zi, force_r=None):
    """One token: state (B, G, n) at t-1 -> state at t. Used for decoding and forced runs."""
    mr, mi = coupling_field(zr, zi, force_r)
    wr = zr + k * (mr - zr)
    wi = zi + k * (mi - zi)
    return dr * wr - di * wi + cr, dr * wi + di * wr + ci


def scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """T applications of scan_step: the oracle every implementation is checked against, and
    the forced-R scan (inference). Training uses kernels/cpu.py or a fused GPU kernel."""
    zr, zi = z0r, z0i
    outs_r, outs_i = [], []
    for t in range(dr.shape[1]):
        zr, zi = scan_step(dr[:, t], di[:, t], k[:, t], cr[:, t], ci[:, t], zr, zi, force_r)
        outs_r.append(zr)
        outs_i.append(zi)
    return mx.stack(outs_r, axis=1), mx.stack(outs_i, axis=1)

