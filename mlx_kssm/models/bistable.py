"""The bistable core of v3 (and of upstream-v3): u from eight per-token projections a..h.

    u = (d g - c h) / (a g - c e),  kept in the bistable regime [0.1, 10]
    Delta = b g - c f
    regularizer  lambda_delta / (|Delta| + eps)  +  lambda_logu * (-log(u / 10))

K-SSM v3 couples its oscillators with K = 2 sigma(u), so K lies in [1.05, 2) inside the regime.
The bound on u passes gradient everywhere ("soft", the only one).

Boxed projections (core_box s, v3's default 0.45). Raw linear projections make u a ratio of
two products that training drives across its pole, where u leaves the regime and the
gradient explodes (research/RESULTS.md section 10). So K-SSM v3 centres the projections on the
point where u = 1 and Delta = 1 and squashes each to within +-s of it:
a, b, d, g in [1 - s, 1 + s] and c, e, f, h in [-s, s]. Then the denominator, the numerator and
Delta are all >= (1 - s)^2 - s^2 = 1 - 2s > 0, and u lies in [1 - 2s, 1 / (1 - 2s)]: with
s = 0.45 exactly the regime [0.1, 10], with every value reachable. upstream-v3 keeps the raw
projections (s = 0), as the design it reproduces had them, and its ten (models/upstream_v3.py).
"""

from __future__ import annotations

import contextlib

import mlx.core as mx
import mlx.nn as nn

U_LO, U_HI = 0.1, 10.0  # the bistable regime of u
# The log barrier on u is -log(u / U_HI) = -log u + log U_HI: the earlier -log u plus a
# constant, so the same gradient, but >= 0 over the whole regime (-log u alone is negative
# once u > 1, which printed a negative regularizer)
U_SHARPNESS = 10.0  # softplus sharpness of the soft bound: identity ~0.3 inside the bounds
U_LEAK = 0.01  # gradient that always passes the bound (value unchanged)
DELTA_EPS = 1e-2
N_PROJECTIONS = 8  # a..h: what u and Delta read
# a..h where u = (1*1 - 0)/(1*1 - 0) = 1 and Delta = 1*1: the centre of the box, and the raw
# projections' initial biases, so every position starts inside the regime and the
# 1/(|Delta| + eps) term starts small (with zero biases u is a ratio of two near-zero products:
# Cauchy-like, about half the positions beyond the bounds, and the regularizer's gradient
# reaches 1/eps^2).
CORE_CENTER = (1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0)
INIT_WEIGHT_SCALE = 0.1
CORE_BOX = 0.45  # u's range over the box, [1 - 2s, 1 / (1 - 2s)], is then [0.1, 10]


def core_projections(p, box: float):
    """a..h (..., 8) from the linear projections p: p itself (box 0: raw, where upstream-v3's
    ten pass unchanged), or CORE_CENTER + box * p / sqrt(1 + p^2) (the bank's algebraic
    squash) when box > 0."""
    if not box:
        return p
    return mx.array(CORE_CENTER) + box * (p * mx.rsqrt(1 + p * p))


# u's floor while a `forced_u_floor` block runs (an inference-time probe; empty otherwise)
FORCED_U_FLOOR = []


@contextlib.contextmanager
def forced_u_floor(floor: float):
    """Inference only: inside this block every bistable core bounds u below by `floor`
    instead of U_LO (the clamp sweep of `mlx-kssm validate`). Training never enters it, the
    weights are untouched, and the trained floor returns when the block ends. A compiled
    graph freezes the floor it was traced with: compile inside the block, or not at all."""
    floor = float(floor)
    if not 0.0 < floor < U_HI:
        raise ValueError(f"a u floor must lie in (0, {U_HI:g}), got {floor}")
    FORCED_U_FLOOR.append(floor)
    try:
        yield floor
    finally:
        FORCED_U_FLOOR.pop()


def bound_u(u_raw, mode: str = "soft"):
    """Keep u in [0.1, 10], smoothly, with a gradient everywhere. `mode` names the bound:
    "soft", the only one (ModelArgs.u_bound). The floor is U_LO except inside
    `forced_u_floor`."""
    if mode != "soft":
        raise ValueError(f"u_bound {mode!r} is no longer supported: only 'soft'")
    lo = FORCED_U_FLOOR[-1] if FORCED_U_FLOOR else U_LO
    b = U_SHARPNESS
    u = lo + nn.softplus(b * (u_raw - lo)) / b
    u = U_HI - nn.softplus(b * (U_HI - u)) / b
    return u + U_LEAK * (u_raw - mx.stop_gradient(u_raw))


def raw_u(p):
    """u = (d g - c h) / (a g - c e) from the projections p (..., 8 or more), before the bound; the
    denominator is kept at least 1e-3 from zero."""
    a, c, d, e, g, h = (p[..., i] for i in (0, 2, 3, 4, 6, 7))
    num = d * g - c * h
    den = a * g - c * e
    den = mx.where(mx.abs(den) < 1e-3, mx.where(den < 0, -1e-3, 1e-3), den)
    return num / den


def bistable_core(p, mode: str, lambda_delta: float, lambda_logu: float, box: float = 0.0):
    """From the linear projections p (..., 8; upstream-v3's (..., 10)): (u bounded, aux) with
    aux = {"u": mean u, "u_at_bound": fraction of positions whose raw u lies outside the
    regime, "reg": the regularizer}. box: see core_projections."""
    p = core_projections(p, box)
    u_raw = raw_u(p)
    u = bound_u(u_raw, mode)
    b, c, f, g = (p[..., i] for i in (1, 2, 5, 6))
    big_delta = b * g - c * f
    reg = (lambda_delta * mx.mean(1 / (mx.abs(big_delta) + DELTA_EPS))
           + lambda_logu * mx.mean(-mx.log(u / U_HI)))
    at_bound = mx.mean(((u_raw < U_LO) | (u_raw > U_HI)).astype(mx.float32))
    return u, {"u": mx.mean(u), "u_at_bound": at_bound, "reg": reg}


def init_core_projection(linear: nn.Linear, start: int, box: float) -> None:
    """Set the core outputs [start, start + 8) of `linear` to the in-regime init: small
    weights, and biases that put a..h at CORE_CENTER (0 when boxed, the centre itself when
    raw)."""
    stop = start + N_PROJECTIONS
    weight, bias = linear.weight, linear.bias
    center = mx.zeros((N_PROJECTIONS,)) if box else mx.array(CORE_CENTER)
    linear.weight = mx.concatenate(
        [weight[:start], INIT_WEIGHT_SCALE * weight[start:stop], weight[stop:]])
    linear.bias = mx.concatenate([bias[:start], center, bias[stop:]])
