"""The training scan where no fused GPU kernel runs (CPU; also the fallback everywhere).

Same recurrence and argument order as reference.py (the oracle), computed in complex64:

    forward   z_t = d_t (z_{t-1} + k_t (m_{t-1} - z_{t-1})) + c_t,  m = mean_j z_j
    adjoint   with a_t = dL/dz_t (its cotangent plus what step t+1 passes back) and
              gw_t = conj(d_t) a_t, the gradient reaching w_t:
                  a_{t-1} = g_{t-1} + (1 - k_t) gw_t + (k_t / n) sum_j gw_t
                  dL/dc_t = a_t,  dL/dd_t = a_t conj(w_t),
                  dL/dk_t = Re sum_j conj(gw_t) (m_{t-1} - z_{t-1})

Why complex64 and a hand-written adjoint: a step is one group mean plus one fused
elementwise kernel in complex form, against three kernels on (re, im) pairs, so the sequential
loop (traced once under mx.compile) runs about twice as fast; and autodiff through T slices
would write a full-size zero array per slice (O(T^2)). Only the recursions over t are
sequential; w, the mean fields and the parameter gradients are computed for all t at once
from the stored states (the forward's output, so storing them costs nothing).

The boundary is real (zr, zi) so callers and autodiff never see complex arrays; the results
equal reference.scan_sequential and its autodiff gradients to float rounding (tests check).
"""

from __future__ import annotations

import mlx.core as mx


def _complex(re, im):
    return re + 1j * im


def _steps(x):
    """x (B, T, ...) as T arrays (B, 1, ...): one split node for the whole loop, where
    slicing would add two graph nodes per step (their scheduling costs more than the math)."""
    return mx.split(x, x.shape[1], axis=1)


def _forward(d, k, c, z0):
    ds, ks, cs = _steps(d), _steps(k), _steps(c)
    z, states = z0[:, None], []
    for t in range(len(ds)):
        m = mx.mean(z, axis=-1, keepdims=True)
        z = ds[t] * (z + ks[t] * (m - z)) + cs[t]
        states.append(z)
    return mx.concatenate(states, axis=1)


@mx.custom_function
def scan_free(dr, di, k, cr, ci, z0r, z0i):
    """States (zr, zi), each (B, T, G, n), of the free-running recurrence (see module doc).
    Shapes: d*, c* (B, T, G, n); k (B, T, G, 1); z0* (B, G, n)."""
    z = _forward(_complex(dr, di), k, _complex(cr, ci), _complex(z0r, z0i))
    return mx.real(z), mx.imag(z)


@scan_free.vjp
def _scan_free_vjp(primals, cotangents, outputs):
    dr, di, k, cr, ci, z0r, z0i = primals
    gz = _complex(*(mx.zeros_like(o) if g is None else g for g, o in zip(cotangents, outputs)))
    z, z0 = _complex(*outputs), _complex(z0r, z0i)
    gw, carry = _adjoint(mx.conj(_complex(dr, di)), k, gz)
    a = gz + mx.concatenate([carry[:, 1:], mx.zeros_like(carry[:, :1])], axis=1)  # dL/dz_t
    prev = mx.concatenate([z0[:, None], z[:, :-1]], axis=1)  # z_{t-1}
    field = mx.mean(prev, axis=-1, keepdims=True) - prev  # m_{t-1} - z_{t-1}
    g_d = a * mx.conj(prev + k * field)
    g_k = mx.sum(mx.real(mx.conj(gw) * field), axis=-1, keepdims=True)
    g_z0 = carry[:, 0]
    return (mx.real(g_d), mx.imag(g_d), g_k.astype(k.dtype), mx.real(a), mx.imag(a),
            mx.real(g_z0), mx.imag(g_z0))


def _adjoint(d_conj, k, gz):
    """The reverse recursion, written on gw_t = conj(d_t) a_t so that each step is one
    elementwise kernel and one group sum. Returns gw_t and the carry
    (1 - k_t) gw_t + (k_t / n) sum_j gw_t that step t passes back to z_{t-1}, for every t."""
    k_mean = k / d_conj.shape[-1]
    one_minus = 1 - k
    ds, gzs, oms, kms = _steps(d_conj), _steps(gz), _steps(one_minus), _steps(k_mean)
    T = len(ds)
    gw = ds[T - 1] * gzs[T - 1]
    s = mx.sum(gw, axis=-1, keepdims=True)
    gws, sums = [gw], [s]
    for t in range(T - 2, -1, -1):
        gw = ds[t] * (gzs[t] + oms[t + 1] * gw + kms[t + 1] * s)
        s = mx.sum(gw, axis=-1, keepdims=True)
        gws.append(gw)
        sums.append(s)
    gw = mx.concatenate(gws[::-1], axis=1)
    return gw, one_minus * gw + k_mean * mx.concatenate(sums[::-1], axis=1)
