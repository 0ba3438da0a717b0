"""`upstream-v3`: the earlier PyTorch K-SSM v3 design, kept faithfully for comparison.

Every position is computed on its own: the oscillator phases at position t are
theta_j = omega_j t + phi_j + s(x_t), the token entering as ONE scalar s (a common phase
shift), followed by a few Kuramoto coupling iterations with K = 2 sigma(u) from the bistable
core. Nothing carries information from one token to the next, so the model is a bigram model
with positional features, and its R does not depend on the input at all (a common shift leaves
|Z_h| unchanged). tests/test_model.py checks both properties.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .base import MLP, LanguageModel, ModelArgs, check_layer_cache_kind
from .bistable import bistable_core
from .order_params import order_parameters

COUPLING_ITERS = 3
# a..j, as the earlier design projected them: the core reads a..h (i and j are unused), and
# the replica keeps all ten so that its folders and its parameter count stay the design's
UPSTREAM_PROJECTIONS = 10


class PositionCache:
    def __init__(self):
        self.offset = 0


class PhaseLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        N = args.n_oscillators
        self.H = args.harmonics
        self.u_bound = args.u_bound
        self.lambda_delta, self.lambda_logu = args.lambda_delta, args.lambda_logu
        self.norm = nn.RMSNorm(args.d_model)
        self.to_scalar = nn.Linear(args.d_model, 1)  # the token as one scalar
        self.to_core = nn.Linear(args.d_model, UPSTREAM_PROJECTIONS)  # the bistable core's
        self.omega = mx.linspace(0.01, 1.0, N)
        self.phi = mx.random.uniform(-math.pi, math.pi, (N,))
        self.dt = mx.array(0.1)
        self.out_proj = nn.Linear(3 * args.harmonics, args.d_model)

    def __call__(self, x, offset: int = 0, force_r=None):
        B, T, _ = x.shape
        h = self.norm(x)
        pos = mx.arange(offset, offset + T).astype(mx.float32)[None, :, None]
        theta = self.omega * pos + self.phi + self.to_scalar(h)  # (B, T, N)
        u, aux = bistable_core(self.to_core(h), self.u_bound, self.lambda_delta,
                               self.lambda_logu)
        k = (2 * mx.sigmoid(u))[..., None]
        for _ in range(COUPLING_ITERS):
            zr, zi = mx.mean(mx.cos(theta), -1, keepdims=True), mx.mean(mx.sin(theta), -1, keepdims=True)
            r, psi = mx.sqrt(zr * zr + zi * zi + 1e-12), mx.arctan2(zi, zr)
            if force_r is not None:
                r = mx.full(r.shape, force_r)
            theta = theta + self.dt * k * r * mx.sin(psi - theta)
        # the whole bank is one group: (B, T, 1, N) unit phasors
        feats, r_out = order_parameters(mx.cos(theta)[..., None, :], mx.sin(theta)[..., None, :],
                                        self.H, force_r)
        y = x + self.out_proj(feats[..., 0, :])
        return y, r_out, aux


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.phase = PhaseLayer(args)
        self.mlp = MLP(args.d_model, args.ffn_hidden)

    def __call__(self, x, offset=0, force_r=None):
        x, r, aux = self.phase(x, offset, force_r)
        return self.mlp(x), r, aux


class Model(LanguageModel):
    def __init__(self, args: ModelArgs):
        super().__init__(args, Block)

    def make_cache(self):
        return [PositionCache() for _ in self.layers]

    def check_layer_cache(self, i, layer_cache, batch):
        """Only positions are cached (no per-sequence state), so any batch continues."""
        check_layer_cache_kind(i, layer_cache, PositionCache)

    def __call__(self, inputs, cache=None, force_r=None, return_r=False, return_aux=False):
        """inputs (B, T) int -> logits (B, T, V). Token ids must lie in [0, vocab_size): not
        checked here, for speed; the data loaders check them."""
        def step(i, x, force):
            # run() has checked `cache` before the first step reads it
            offset = cache[0].offset if cache is not None else 0
            return self.layers[i](x, offset, force)
        out = self.run(inputs, force_r, step, return_r, return_aux, cache)
        if cache is not None:
            for c in cache:
                c.offset += inputs.shape[1]
        return out
