"""K-SSM: Kuramoto state-space language model (SPEC 3).

Each layer carries a bank of Stuart-Landau oscillators (complex amplitude and phase, G groups
of n) over the token sequence; see kernels/reference.py for the recurrence and why it is
stable. The layer output is x_t + W f(order parameters of z_t), and the order parameters are
computed from the unit phasors only: the amplitude and everything else of the state never
reach the output, so context flows through the phases' synchronization, R, alone.

The `bolted` readout is a negative control (the Phase-Mamba / v2 failure): the output reads
the raw state, and R only rescales it just before a norm that undoes the scale.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..kernels import oscillator_scan, oscillator_step
from ..kernels.reference import coupling_field, readout
from .base import MLP, LanguageModel, ModelArgs, merge_aux, per_layer_force

U_LO, U_HI = 0.1, 10.0  # bistable regime of u (v3)
U_SHARPNESS = 10.0  # softplus sharpness of the soft bound: identity ~0.3 inside the bounds
U_LEAK = 0.01  # gradient that always passes the bound (value unchanged)
DELTA_EPS = 1e-2


class OscillatorCache:
    """Per-layer decoding state: the oscillator bank (zr, zi), each (B, G, n)."""

    def __init__(self):
        self.state = None
        self.offset = 0


def bound_u(u_raw, mode: str):
    """Keep u in [0.1, 10]. 'soft' is smooth with a gradient everywhere; 'hard' is v3's clamp
    (zero gradient outside, which froze u at the floor in the earlier project)."""
    if mode == "hard":
        return mx.clip(u_raw, U_LO, U_HI)
    b = U_SHARPNESS
    u = U_LO + nn.softplus(b * (u_raw - U_LO)) / b
    u = U_HI - nn.softplus(b * (U_HI - u)) / b
    return u + U_LEAK * (u_raw - mx.stop_gradient(u_raw))


def bistable_u(p, mode: str):
    """The earlier v3 core from its 10 projections a..j: u = (dg - ch)/(ag - ce),
    Delta = bg - cf. Returns (u bounded, Delta, fraction of positions at the bound)."""
    a, b, c, d, e, f, g, h = (p[..., i] for i in range(8))  # i, j: unused, as in v3
    num = d * g - c * h
    den = a * g - c * e
    den = mx.where(mx.abs(den) < 1e-3, mx.where(den < 0, -1e-3, 1e-3), den)
    u_raw = num / den
    at_bound = mx.mean(((u_raw < U_LO) | (u_raw > U_HI)).astype(mx.float32))
    return bound_u(u_raw, mode), b * g - c * f, at_bound


def _damping_spread(count: int, mode: str):
    """Initial damping lambda from 0.6 to 0.995: memories of ~2.5 to ~200 tokens."""
    if mode == "log":
        return 1 - mx.exp(mx.linspace(math.log(0.4), math.log(0.005), count))
    return mx.linspace(0.6, 0.995, count)


class OscillatorBank(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        G, n = args.n_groups, args.osc_per_group
        N = G * n
        self.G, self.n, self.H = G, n, args.harmonics
        self.bistable = args.bistable
        self.u_bound = args.u_bound
        self.readout_mode = args.readout
        self.lambda_delta, self.lambda_logu = args.lambda_delta, args.lambda_logu
        self.norm = nn.RMSNorm(args.d_model)
        coupling_dims = 10 if args.bistable else G
        self.dynamics = args.dynamics
        if args.dynamics == "group":
            # drive (re, im) per oscillator; Delta, damping logit per group; coupling
            self.in_proj = nn.Linear(args.d_model, 2 * N + 2 * G + coupling_dims)
            self.omega = mx.linspace(-math.pi, math.pi, G + 1)[:-1].reshape(G, 1)
            lam = mx.linspace(0.6, 0.995, G).reshape(G, 1)
        else:
            # Delta (freq. perturbation; none for a fixed rotation), damping logit, drive
            # (re, im), coupling
            self.n_delta = 0 if args.rotation == "fixed" else N
            self.in_proj = nn.Linear(args.d_model, self.n_delta + 3 * N + coupling_dims)
            # natural frequencies spread over (-pi, pi); damping spread so the bank has
            # memories from a few tokens to a few hundred (like S4D/LRU initializations)
            self.omega = mx.linspace(-math.pi, math.pi, N + 1)[:-1].reshape(G, n)
            if args.rotation == "cayley":  # angle 2 atan(beta): omega = 2 atan(beta0)
                self.omega = mx.tan(0.5 * mx.linspace(-3.0, 3.0, N).reshape(G, n))
            lam = _damping_spread(N, args.damping_init).reshape(G, n)
        if args.damping == "algebraic":  # the logit whose algebraic squash is lam
            u = 2 * lam - 1
            self.lambda_bias = u * mx.rsqrt(1 - u * u)
        else:
            self.lambda_bias = mx.log(lam / (1 - lam))
        if args.coupling_bias and not args.bistable:
            bias = self.in_proj.bias
            self.in_proj.bias = mx.concatenate([bias[:-G], mx.full((G,), args.coupling_bias)])
        if args.gate:
            self.gate_proj = nn.Linear(args.d_model, args.d_model)
        self.use_gate, self.gate_act = args.gate, args.gate_act
        self.rotation, self.drive, self.damping = args.rotation, args.drive, args.damping
        if args.feature_norm:
            self.feature_norm = nn.RMSNorm(3 * args.harmonics * G)
        self.use_feature_norm = args.feature_norm
        self.dt_raw = mx.array(0.5413)  # softplus^-1(1): dt starts at 1
        theta0 = mx.random.uniform(-math.pi, math.pi, (G, n))
        self.z0 = mx.stack([mx.cos(theta0), mx.sin(theta0)])  # learned initial state
        if args.readout == "bolted":
            self.out_proj = nn.Linear(2 * N, args.d_model)
            self.state_norm = nn.RMSNorm(2 * N)
        else:
            self.out_proj = nn.Linear(3 * args.harmonics * G, args.d_model)
        # Ablation switch: zero the order-parameter features (SPEC 3.1 property 2 test).
        self.ablate_readout = False

    def _inputs(self, x):
        """Per-token scan inputs from the layer input (all positions at once)."""
        B, T, _ = x.shape
        G, n = self.G, self.n
        N = G * n
        p = self.in_proj(self.norm(x))
        if self.dynamics == "group":
            br = mx.tanh(p[..., :N]).reshape(B, T, G, n)
            bi = mx.tanh(p[..., N:2 * N]).reshape(B, T, G, n)
            delta = p[..., 2 * N:2 * N + G].reshape(B, T, G, 1)
            lam = mx.sigmoid(p[..., 2 * N + G:2 * N + 2 * G].reshape(B, T, G, 1) + self.lambda_bias)
            rest = p[..., 2 * N + 2 * G:]
        else:
            nd = self.n_delta
            delta = p[..., :nd].reshape(B, T, G, n) if nd else None
            lam = self._squash(p[..., nd:nd + N].reshape(B, T, G, n) + self.lambda_bias)
            br = self._bound(p[..., nd + N:nd + 2 * N]).reshape(B, T, G, n)
            bi = self._bound(p[..., nd + 2 * N:nd + 3 * N]).reshape(B, T, G, n)
            rest = p[..., nd + 3 * N:]
        if self.rotation == "cayley":
            beta = self.omega + delta
            inv = 1 / (1 + beta * beta)
            rot_r, rot_i = (1 - beta * beta) * inv, 2 * beta * inv
        else:
            alpha = nn.softplus(self.dt_raw) * (self.omega if delta is None else self.omega + delta)
            rot_r, rot_i = mx.cos(alpha), mx.sin(alpha)
        aux = {}
        if self.bistable:
            u, big_delta, at_bound = bistable_u(rest, self.u_bound)
            k = mx.broadcast_to((2 * mx.sigmoid(u))[..., None, None], (B, T, G, 1))
            aux = {"u": mx.mean(u), "u_at_bound": at_bound,
                   "reg": self.lambda_delta * mx.mean(1 / (mx.abs(big_delta) + DELTA_EPS))
                   + self.lambda_logu * mx.mean(-mx.log(u))}
        else:
            k = mx.sigmoid(rest)[..., None]
        dr, di = lam * rot_r, lam * rot_i
        if self.dynamics == "group":
            dr, di = mx.broadcast_to(dr, (B, T, G, n)), mx.broadcast_to(di, (B, T, G, n))
        return (dr, di, k, (1 - lam) * br, (1 - lam) * bi), aux

    def _bound(self, v):
        if self.drive == "algebraic":
            return v * mx.rsqrt(1 + v * v)
        return v / (1 + mx.abs(v)) if self.drive == "softsign" else mx.tanh(v)

    def _squash(self, v):
        if self.damping == "algebraic":  # 0.5 + 0.5 v / sqrt(1 + v^2): no exp
            return 0.5 + 0.5 * v * mx.rsqrt(1 + v * v)
        return mx.sigmoid(v)

    def _initial_state(self, B):
        z0 = mx.broadcast_to(self.z0[:, None], (2, B, self.G, self.n))
        return z0[0], z0[1]

    def __call__(self, x, cache: OscillatorCache | None = None, force_r=None):
        """x (B, T, D) -> (y, R (B, T), aux). With a cache, continues from its state."""
        B, T, _ = x.shape
        scan_in, aux = self._inputs(x)
        if cache is not None and cache.state is not None:
            z0r, z0i = cache.state
        else:
            z0r, z0i = self._initial_state(B)
        # Bolted control: R never feeds the dynamics (forcing it must change nothing).
        dyn_force = None if self.readout_mode == "bolted" else force_r
        if cache is not None and T == 1:
            zr, zi = oscillator_step(z0r, z0i, *(a[:, 0] for a in scan_in), force_r=dyn_force)
            zr, zi = zr[:, None], zi[:, None]
        else:
            zr, zi = oscillator_scan(*scan_in, z0r, z0i, force_r=dyn_force)
        if cache is not None:
            cache.state = (zr[:, -1], zi[:, -1])
            cache.offset += T
        features, r = readout(zr, zi, self.H, force_r)
        if self.ablate_readout:
            features = mx.zeros_like(features)
        if self.readout_mode == "bolted":
            # The v2 failure: R scales the state just before a norm, which undoes the scale.
            state = mx.concatenate([zr, zi], axis=-1).reshape(B, T, -1)
            y = x + self.out_proj(self.state_norm(state * r[..., None]))
        else:
            features = features.reshape(B, T, -1)
            if self.use_feature_norm:
                features = self.feature_norm(features)
            out = self.out_proj(features)
            if self.use_gate:
                g = self.gate_proj(self.norm(x))
                if self.gate_act == "algebraic":
                    out = out * g * (0.5 + 0.5 * g * mx.rsqrt(1 + g * g))
                else:
                    out = out * nn.silu(g)
            y = x + out
        return y, r, aux


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.bank = OscillatorBank(args)
        self.mlp = MLP(args.d_model, args.ffn_hidden)

    def __call__(self, x, cache=None, force_r=None):
        x, r, aux = self.bank(x, cache, force_r)
        return self.mlp(x), r, aux


class Model(LanguageModel):
    def __init__(self, args: ModelArgs):
        super().__init__(args, Block)

    def make_cache(self):
        return [OscillatorCache() for _ in self.layers]

    def __call__(self, inputs, cache=None, force_r=None, return_r=False, return_aux=False):
        """inputs (B, T) int -> logits (B, T, V); optionally R per layer (B, T, L) and aux
        (reg loss, u statistics for v3)."""
        forces = per_layer_force(force_r, len(self.layers))
        x = self.embed(inputs)
        rs, auxes = [], []
        for i, layer in enumerate(self.layers):
            x, r, aux = layer(x, None if cache is None else cache[i], forces[i])
            rs.append(r)
            auxes.append(aux)
        return self.outputs(self.head(x), mx.stack(rs, axis=-1), merge_aux(auxes),
                            return_r, return_aux)


__all__ = ["Model", "OscillatorBank", "OscillatorCache", "coupling_field", "bound_u"]
