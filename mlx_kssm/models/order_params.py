"""The readout every oscillator model shares: order parameters of unit phasors.

For a group of n unit phasors p_j = e^{i theta_j} and harmonic h, Z_h = mean_j p_j^h. The
features are [Re Z_h, Im Z_h, |Z_h|] for h = 1..H, per group; R of a layer is the mean over
its groups of |Z_1|. Forcing sets |Z_1| = r in every group, keeping its phase, so the R
reported while forcing equals r exactly. See docs/model.md.
"""

from __future__ import annotations

import mlx.core as mx

from ..kernels.reference import PHASE_EPS  # |z|^2 floor when normalizing to a unit phasor


def unit_phasors(zr, zi):
    """z / |z| with a floor on |z|^2, as real pairs."""
    inv = mx.rsqrt(zr * zr + zi * zi + PHASE_EPS)
    return zr * inv, zi * inv


def order_parameters(pr, pi, harmonics: int, force_r=None):
    """(features (..., G, 3H), R (...)) from unit phasors pr, pi (..., G, n)."""
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
    return mx.stack(feats, axis=-1), mx.mean(r_groups, axis=-1)
