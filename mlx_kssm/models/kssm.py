"""K-SSM: Kuramoto state-space language model. The math, its bound and the designs are in
docs/model.md; the recurrence's oracle is kernels/reference.py.

Each layer carries a bank of oscillators (complex amplitude and phase, G groups of n) over the
token sequence. Per token and oscillator, from the current layer input x_t only:

    lambda_t  damping in (0, 1)            d_t = lambda_t e^{i alpha}   (alpha = dt * omega)
    b_t       bounded complex drive        c_t = (1 - lambda_t) b_t
    K_t       coupling to the group's mean field, per group
    g_t       the output gate (design 2)

The scan gives z_t; the layer output is x_t + out_proj(order parameters of z_t / |z_t|) * g_t.
Amplitudes and everything else of the state never reach the output, so context flows through
the phases' synchronization, R, alone.

The `bolted` readout is a negative control (the Phase-Mamba / v2 failure): the output reads
the raw state, and R only rescales it just before a norm that undoes the scale.
"""

from __future__ import annotations

import math
import re

import mlx.core as mx
import mlx.nn as nn

from ..kernels import oscillator_scan, oscillator_step
from .base import MLP, LanguageModel, ModelArgs, check_layer_cache_kind
from .bistable import N_PROJECTIONS, bistable_core, init_core_projection
from .order_params import order_parameters, unit_phasors
from .quantized import QuantizableLinear


class OscillatorCache:
    """Per-layer decoding state: the oscillator bank (zr, zi), each (B, G, n)."""

    def __init__(self):
        self.state = None


def algebraic_unit(v):
    """v / sqrt(1 + v^2): a bounded odd squash like tanh, from a square root (no exp)."""
    return v * mx.rsqrt(1 + v * v)


def projection_sizes(args: "ModelArgs") -> tuple:  # quoted: the mlx-lm export copies it
    """Widths of in_proj's outputs, in order: [Delta (rotation "input")], damping logit, drive
    re, drive im, coupling (G logits, or the 8 bistable projections), [gate (args.gate)]."""
    N = args.n_oscillators
    coupling = N_PROJECTIONS if args.bistable else args.n_groups
    return ((N,) if args.rotation == "input" else ()) + (N, N, N, coupling) + (
        (args.d_model,) if args.gate else ())


def coupling_offset(args: ModelArgs) -> int:
    """Where the coupling outputs (G logits or the bistable a..h) start in in_proj's output."""
    sizes = projection_sizes(args)
    return sum(sizes[:-2 if args.gate else -1])


# K-SSM v3 folders and checkpoints saved before the core was pruned project ten core values,
# a..j, where i and j (read by nothing: u and Delta need a..h) are the two rows right after h,
# before the gate. Dropping them changes no output, and lets those folders load into the
# eight-row layout.
UNUSED_CORE_ROWS = 2
# in_proj's tensors, and the optimizer state named after them (states.0.<name>.m, grokfast.<name>)
_IN_PROJ_ARRAY = re.compile(
    r"(?:^|\.)layers\.\d+\.bank\.in_proj\.(?:weight|bias|scales|biases)(?:\.|$)")


def drop_unused_core_rows(args: ModelArgs, arrays: dict) -> dict:
    """`arrays` (saved weights, quantized or not, or a checkpoint's optimizer state) with rows
    i and j taken out of every in_proj tensor that has the ten-projection width; every other
    array, and every array of a model saved with eight, as it is."""
    if args.model_type != "kssm" or not args.bistable:
        return arrays
    width = sum(projection_sizes(args))
    old_width = width + UNUSED_CORE_ROWS
    after_h = coupling_offset(args) + N_PROJECTIONS
    keep = mx.concatenate([mx.arange(after_h), mx.arange(after_h + UNUSED_CORE_ROWS, old_width)])
    return {name: value[keep] if (_IN_PROJ_ARRAY.search(name) and value.ndim
                                  and value.shape[0] == old_width) else value
            for name, value in arrays.items()}


def damping_spread(count: int):
    """Initial damping lambda from 0.6 to 0.995: memories of ~2.5 to ~200 tokens."""
    return mx.linspace(0.6, 0.995, count)


class OscillatorBankBase(nn.Module):
    """An oscillator bank but for its scan and cache: the scan's inputs and the output gate
    from the current layer input x_t alone, the initial state, and the layer's output from the
    states z_t. The base of OscillatorBank here and in the model file of an mlx-lm export
    (export/model_file.py copies it), so the two compute the same. A subclass holds `args`,
    `G`, `n` and the weights read here: norm, in_proj, omega, lambda_bias, dt_raw, z0, out_proj
    (and state_norm for the bolted readout)."""

    # -- the squashes: algebraic (square roots) or exp-based, as args.squash says
    def _unit(self, v):
        return algebraic_unit(v) if self.args.squash == "algebraic" else mx.tanh(v)

    def _prob(self, v):
        return 0.5 + 0.5 * algebraic_unit(v) if self.args.squash == "algebraic" else mx.sigmoid(v)

    def _inputs(self, x):
        """Scan inputs (dr, di, k, cr, ci), each (B, T, G, n) or (B, T, G, 1) for k, the gate
        (B, T, D) or None, and aux (v3's u statistics and regularizer), for all positions."""
        B, T, _ = x.shape
        shape = (B, T, self.G, self.n)
        sizes = projection_sizes(self.args)
        parts = mx.split(self.in_proj(self.norm(x)),
                         [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)], axis=-1)
        if self.args.rotation == "input":
            delta, parts = parts[0].reshape(shape), parts[1:]
            alpha = nn.softplus(self.dt_raw) * (self.omega + delta)
        else:
            alpha = nn.softplus(self.dt_raw) * self.omega
        lam = self._prob(parts[0].reshape(shape) + self.lambda_bias)
        br, bi = self._unit(parts[1]).reshape(shape), self._unit(parts[2]).reshape(shape)
        aux = {}
        if self.args.bistable:
            u, aux = bistable_core(parts[3], self.args.u_bound, self.args.lambda_delta,
                                   self.args.lambda_logu, self.args.core_box)
            k = mx.broadcast_to((2 * mx.sigmoid(u))[..., None, None], (B, T, self.G, 1))
        else:
            k = mx.sigmoid(parts[3])[..., None]
        gate = None
        if self.args.gate:
            g = parts[4]
            gate = g * self._prob(g)  # silu for "exp"
        drive = 1 - lam
        scan_in = (lam * mx.cos(alpha), lam * mx.sin(alpha), k, drive * br, drive * bi)
        return scan_in, gate, aux

    def _initial_state(self, B):
        z0 = mx.broadcast_to(self.z0[:, None], (2, B, self.G, self.n))
        return z0[0], z0[1]

    def _output(self, x, features, r, zr, zi, gate):
        """x + out_proj(the order-parameter features), times the gate where there is one."""
        B, T, _ = x.shape
        if self.args.readout == "bolted":
            # The v2 failure: R scales the state just before a norm, which undoes the scale.
            state = mx.concatenate([zr, zi], axis=-1).reshape(B, T, -1)
            out = self.out_proj(self.state_norm(state * r[..., None]))
        else:
            out = self.out_proj(features.reshape(B, T, -1))
        if gate is not None:
            out = out * gate
        return x + out


class OscillatorBank(OscillatorBankBase):
    """One layer's token mixer: per-token inputs, the oscillator scan, the readout."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        G, n = args.n_groups, args.osc_per_group
        N = G * n
        self.G, self.n, self.H = G, n, args.harmonics
        self.args = args
        self.norm = nn.RMSNorm(args.d_model)
        sizes = projection_sizes(args)
        # QuantizableLinear: quantized at any width (the readout's is rarely a multiple of 32)
        self.in_proj = QuantizableLinear(args.d_model, sum(sizes))
        coupling_start = coupling_offset(args)
        if args.bistable:
            init_core_projection(self.in_proj, coupling_start, args.core_box)
        # natural frequencies spread over (-pi, pi); damping spread so the bank has memories
        # from a few tokens to a few hundred (like S4D/LRU initializations)
        self.omega = mx.linspace(-math.pi, math.pi, N + 1)[:-1].reshape(G, n)
        self.lambda_bias = self._logit(damping_spread(N)).reshape(G, n)
        self.dt_raw = mx.array(0.5413)  # softplus^-1(1): dt starts at 1
        theta0 = mx.random.uniform(-math.pi, math.pi, (G, n))
        self.z0 = mx.stack([mx.cos(theta0), mx.sin(theta0)])  # learned initial state
        if args.readout == "bolted":
            self.out_proj = QuantizableLinear(2 * N, args.d_model)
            self.state_norm = nn.RMSNorm(2 * N)
        else:
            self.out_proj = QuantizableLinear(3 * args.harmonics * G, args.d_model)
        # Ablation switch: zero the order-parameter features (the only-path test).
        self.ablate_readout = False
        self.scan_kernel = "auto"  # the scan's implementation: kernels.use_kernel sets it

    def _logit(self, p):
        """The inverse of _prob."""
        if self.args.squash == "algebraic":
            u = 2 * p - 1
            return u * mx.rsqrt(1 - u * u)
        return mx.log(p / (1 - p))

    def __call__(self, x, cache: OscillatorCache | None = None, force_r=None):
        """x (B, T, D) -> (y, R (B, T), aux). With a cache, continues from its state."""
        B, T, _ = x.shape
        scan_in, gate, aux = self._inputs(x)
        if cache is not None and cache.state is not None:
            z0r, z0i = cache.state
        else:
            z0r, z0i = self._initial_state(B)
        # Bolted control: R never feeds the dynamics (forcing it must change nothing).
        dyn_force = None if self.args.readout == "bolted" else force_r
        if cache is not None and T == 1:
            zr, zi = oscillator_step(*(a[:, 0] for a in scan_in), z0r, z0i, force_r=dyn_force,
                                     kernel=self.scan_kernel)
            zr, zi = zr[:, None], zi[:, None]
        else:
            zr, zi = oscillator_scan(*scan_in, z0r, z0i, force_r=dyn_force,
                                     kernel=self.scan_kernel)
        if cache is not None:
            cache.state = (zr[:, -1], zi[:, -1])
        features, r = order_parameters(*unit_phasors(zr, zi), self.H, force_r)
        if self.ablate_readout:
            features = mx.zeros_like(features)
        return self._output(x, features, r, zr, zi, gate), r, aux


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

    def upgrade_saved(self, arrays: dict) -> dict:
        """v3 folders saved with ten core projections: see drop_unused_core_rows."""
        return drop_unused_core_rows(self.args, arrays)

    def check_layer_cache(self, i, layer_cache, batch):
        """A filled cache continues `batch` sequences of this model's bank: its state is
        (zr, zi), each (B, G, n); another batch or bank would broadcast or fail in MLX."""
        check_layer_cache_kind(i, layer_cache, OscillatorCache)
        if layer_cache.state is None:
            return
        expected = (batch, self.args.n_groups, self.args.osc_per_group)
        got = tuple(layer_cache.state[0].shape)
        if got != expected:
            raise ValueError(f"cache[{i}] holds state of shape {got} (batch, groups, "
                             f"oscillators), but the inputs and model need {expected}")

    def __call__(self, inputs, cache=None, force_r=None, return_r=False, return_aux=False):
        """inputs (B, T) int -> logits (B, T, V); optionally R per layer (B, T, L) and aux
        (reg loss, u statistics for v3). force_r: see ForceR.of. cache: make_cache()'s list.
        Token ids must lie in [0, vocab_size): not checked here, for speed; the data loaders
        check them."""
        def step(i, x, force):
            return self.layers[i](x, None if cache is None else cache[i], force)
        return self.run(inputs, force_r, step, return_r, return_aux, cache)


__all__ = ["Model", "OscillatorBank", "OscillatorBankBase", "OscillatorCache"]
