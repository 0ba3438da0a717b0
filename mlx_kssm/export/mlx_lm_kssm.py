"""K-SSM (Kuramoto state-space model) for mlx-lm, written by `mlx-kssm export --format mlx-lm`.

Self-contained: MLX, NumPy and mlx-lm's cache class; mlx_kssm is not needed to run it.

    from mlx_lm import load, generate
    model, tokenizer = load("FOLDER", trust_remote_code=True)   # runs this file
    print(generate(model, tokenizer, prompt="ROMEO.", max_tokens=50))

Each layer carries a bank of oscillators (G groups of n, complex state z) over the tokens.
From the current layer input x_t only: damping lambda_t in (0, 1), rotation alpha (fixed per
oscillator in design 2; dt * (omega + Delta(x_t)) in design 1), coupling K_t to the group's
mean field and a bounded drive b_t. Per group:

    z_t = lambda_t e^{i alpha} (z_{t-1} + K_t (mean_j z_{t-1,j} - z_{t-1})) + (1 - lambda_t) b_t

The layer adds out_proj(order parameters of z_t / |z_t|) (times the output gate in design 2):
for each group and harmonic h, Re, Im and |Z_h| with Z_h = mean_j (z_j / |z_j|)^h. R of a
layer is the mean over groups of |Z_1|; context reaches the output only through the phases.
Every option is read from config.json (design, rotation, gate, squash, harmonics, n_groups,
osc_per_group, bistable and u_bound for v3, readout); the computation is mlx_kssm's K-SSM
step for step (the free scan in complex64 as mlx_kssm's CPU scan, the decode step and forced
runs on (re, im) pairs as its reference), so greedy decoding gives mlx-kssm's tokens.

Vocabulary: a model trained on a compacted vocabulary (the ids its corpus used) reads and
writes the base tokenizer's ids here. config.json's "vocab_compaction" holds the base ids as a
bitmap; an input id outside them becomes the model's unknown id (as mlx_kssm maps it), and ids
outside them get no probability (logit UNSEEN_LOGIT: a softmax probability of exactly 0).

Forcing R: "force_r" in config.json (a number for every layer, or a list with one number or
null per layer) clamps R as mlx_kssm's force_r does: the mean field that couples the
oscillators and the readout's first harmonic get magnitude r, keeping their phase. Set
`model.args.force_r` to change it after loading; `model(ids, return_r=True)` also gives R.

Cache: one mlx-lm ArraysCache per layer holding the oscillator state (zr, zi), each (B, G, n):
O(1) per token whatever the context length. In batches, padded positions are identity steps
(d = 1, K = 0, no drive), so they leave the state exactly as it was.
"""

# no `from __future__ import annotations`: mlx-lm runs this file without registering it in
# sys.modules, and dataclasses cannot resolve string annotations then

import base64
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.base import BaseModelArgs, create_ssm_mask
from mlx_lm.models.cache import ArraysCache

PHASE_EPS = 1e-6  # |z|^2 floor when normalizing to unit phasors
N_CORE = 10  # v3: the bistable core's projections a..j
U_LO, U_HI, U_SHARPNESS, U_LEAK = 0.1, 10.0, 10.0, 0.01  # v3: u kept in [0.1, 10]
# the logit of a base id the model never saw: softmax gives it exactly 0 (exp underflows), and
# unlike -inf it keeps a masked loss finite (mlx_lm.lora pads batches with id 0 and multiplies
# the padded positions' cross-entropy by 0: inf * 0 would be nan)
UNSEEN_LOGIT = -1e30


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int
    d_model: int
    n_layers: int
    ffn_hidden: int
    n_groups: int
    osc_per_group: int
    harmonics: int
    design: int
    rotation: str  # "fixed" (design 2) or "input" (design 1)
    gate: bool
    squash: str  # "algebraic" (design 2) or "exp" (design 1)
    tie_embeddings: bool = True
    readout: str = "order_params"  # or "bolted": the negative control (R bypassed)
    bistable: bool = False
    u_bound: str = "soft"
    force_r: Optional[object] = None
    vocab_compaction: Optional[dict] = None

    def __post_init__(self):
        choices = {"design": (1, 2), "rotation": ("fixed", "input"),
                   "squash": ("algebraic", "exp"), "readout": ("order_params", "bolted"),
                   "u_bound": ("soft", "hard")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config.json: {name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r} (a newer mlx-kssm wrote this model?)")
        layer_forces(self.force_r, self.n_layers)


def layer_forces(force_r, n_layers: int) -> list:
    """force_r (None, a number, or a list per layer with None = free) as one value per layer."""
    if force_r is None:
        return [None] * n_layers
    values = list(force_r) if isinstance(force_r, (list, tuple)) else [force_r] * n_layers
    if len(values) != n_layers:
        raise ValueError(f"force_r has {len(values)} values for {n_layers} layers")
    for v in values:
        if v is not None and not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"forced R must lie in [0, 1], got {v}")
    return [None if v is None else float(v) for v in values]


# ----------------------------------------------------------------------- the recurrence

def coupling_field(zr, zi, force_r=None):
    """Mean field (per group) the coupling pulls toward; magnitude r * mean|z| if forced."""
    if force_r is None:
        return mx.mean(zr, axis=-1, keepdims=True), mx.mean(zi, axis=-1, keepdims=True)
    amp = mx.sqrt(zr * zr + zi * zi + PHASE_EPS)
    pr = mx.mean(zr / amp, axis=-1, keepdims=True)
    pi = mx.mean(zi / amp, axis=-1, keepdims=True)
    pabs = mx.sqrt(pr * pr + pi * pi + 1e-12)
    scale = force_r * mx.mean(amp, axis=-1, keepdims=True) / pabs
    return pr * scale, pi * scale


def scan_step(dr, di, k, cr, ci, zr, zi, force_r=None):
    """One token: state (B, G, n) at t-1 -> state at t."""
    mr, mi = coupling_field(zr, zi, force_r)
    wr = zr + k * (mr - zr)
    wi = zi + k * (mi - zi)
    return dr * wr - di * wi + cr, dr * wi + di * wr + ci


def scan(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """States (zr, zi), each (B, T, G, n), for inputs (B, T, G, n) (k: (B, T, G, 1))."""
    if force_r is not None:  # forcing makes the step nonlinear: one step at a time
        zr, zi, out_r, out_i = z0r, z0i, [], []
        for t in range(dr.shape[1]):
            zr, zi = scan_step(dr[:, t], di[:, t], k[:, t], cr[:, t], ci[:, t], zr, zi, force_r)
            out_r.append(zr)
            out_i.append(zi)
        return mx.stack(out_r, axis=1), mx.stack(out_i, axis=1)
    # free run: the same steps in complex64 (one elementwise kernel per step)
    d, c = dr + 1j * di, cr + 1j * ci
    steps = lambda x: mx.split(x, x.shape[1], axis=1)  # noqa: E731
    ds, ks, cs = steps(d), steps(k), steps(c)
    z, states = (z0r + 1j * z0i)[:, None], []
    for t in range(len(ds)):
        m = mx.mean(z, axis=-1, keepdims=True)
        z = ds[t] * (z + ks[t] * (m - z)) + cs[t]
        states.append(z)
    z = mx.concatenate(states, axis=1)
    return mx.real(z), mx.imag(z)


def order_parameters(zr, zi, harmonics: int, force_r=None):
    """(features (..., G, 3H), R (...)) of the unit phasors z / |z|."""
    inv = mx.rsqrt(zr * zr + zi * zi + PHASE_EPS)
    pr, pi = zr * inv, zi * inv
    hr, hi, feats, r_groups = pr, pi, [], None
    for h in range(1, harmonics + 1):
        if h > 1:
            hr, hi = hr * pr - hi * pi, hr * pi + hi * pr
        re, im = mx.mean(hr, axis=-1), mx.mean(hi, axis=-1)
        mag = mx.sqrt(re * re + im * im + 1e-12)
        if h == 1:
            if force_r is not None:
                scale = force_r / mag
                re, im = re * scale, im * scale
                mag = mx.full(mag.shape, force_r, dtype=mag.dtype)
            r_groups = mag
        feats += [re, im, mag]
    return mx.stack(feats, axis=-1), mx.mean(r_groups, axis=-1)


def bistable_u(p, mode: str):
    """v3: u = (d g - c h) / (a g - c e) from the projections p (..., 10), kept in [0.1, 10]."""
    a, c, d, e, g, h = (p[..., i] for i in (0, 2, 3, 4, 6, 7))
    num, den = d * g - c * h, a * g - c * e
    den = mx.where(mx.abs(den) < 1e-3, mx.where(den < 0, -1e-3, 1e-3), den)
    u_raw = num / den
    if mode == "hard":
        return mx.clip(u_raw, U_LO, U_HI)
    u = U_LO + nn.softplus(U_SHARPNESS * (u_raw - U_LO)) / U_SHARPNESS
    u = U_HI - nn.softplus(U_SHARPNESS * (U_HI - u)) / U_SHARPNESS
    return u + U_LEAK * (u_raw - mx.stop_gradient(u_raw))


# ----------------------------------------------------------------------- the layers

def algebraic_unit(v):
    return v * mx.rsqrt(1 + v * v)


def projection_sizes(args: ModelArgs) -> tuple:
    """Widths of in_proj's outputs, in order: [Delta (design 1)], damping, drive re, drive im,
    coupling (G logits, or v3's 10 projections), [gate (design 2)]."""
    N = args.n_groups * args.osc_per_group
    return ((N,) if args.rotation == "input" else ()) + (
        N, N, N, N_CORE if args.bistable else args.n_groups) + (
        (args.d_model,) if args.gate else ())


class OscillatorBank(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        G, n, D = args.n_groups, args.osc_per_group, args.d_model
        N = G * n
        self.args = args
        self.norm = nn.RMSNorm(D)
        self.in_proj = nn.Linear(D, sum(projection_sizes(args)))
        self.omega = mx.zeros((G, n))
        self.lambda_bias = mx.zeros((G, n))
        self.dt_raw = mx.array(0.0)
        self.z0 = mx.zeros((2, G, n))
        if args.readout == "bolted":
            self.out_proj = nn.Linear(2 * N, D)
            self.state_norm = nn.RMSNorm(2 * N)
        else:
            self.out_proj = nn.Linear(3 * args.harmonics * G, D)

    def _unit(self, v):
        return algebraic_unit(v) if self.args.squash == "algebraic" else mx.tanh(v)

    def _prob(self, v):
        return 0.5 + 0.5 * algebraic_unit(v) if self.args.squash == "algebraic" else mx.sigmoid(v)

    def _inputs(self, x, mask):
        """Scan inputs (dr, di, k, cr, ci) and the output gate (or None); masked-out
        positions (batch padding) become identity steps."""
        B, T, _ = x.shape
        shape = (B, T, self.args.n_groups, self.args.osc_per_group)
        sizes = projection_sizes(self.args)
        cuts = [sum(sizes[:i + 1]) for i in range(len(sizes) - 1)]
        parts = mx.split(self.in_proj(self.norm(x)), cuts, axis=-1)
        if self.args.rotation == "input":
            delta, parts = parts[0].reshape(shape), parts[1:]
            alpha = nn.softplus(self.dt_raw) * (self.omega + delta)
        else:
            alpha = nn.softplus(self.dt_raw) * self.omega
        lam = self._prob(parts[0].reshape(shape) + self.lambda_bias)
        br, bi = self._unit(parts[1]).reshape(shape), self._unit(parts[2]).reshape(shape)
        if self.args.bistable:
            u = bistable_u(parts[3], self.args.u_bound)
            k = mx.broadcast_to((2 * mx.sigmoid(u))[..., None, None], shape[:3] + (1,))
        else:
            k = mx.sigmoid(parts[3])[..., None]
        gate = parts[4] * self._prob(parts[4]) if self.args.gate else None
        drive = 1 - lam
        dr, di, cr, ci = lam * mx.cos(alpha), lam * mx.sin(alpha), drive * br, drive * bi
        if mask is not None:
            keep = mask[:, :, None, None]
            dr, di, k = mx.where(keep, dr, 1.0), mx.where(keep, di, 0.0), mx.where(keep, k, 0.0)
            cr, ci = mx.where(keep, cr, 0.0), mx.where(keep, ci, 0.0)
        return (dr, di, k, cr, ci), gate

    def __call__(self, x, mask=None, cache=None, force_r=None):
        B, T, _ = x.shape
        scan_in, gate = self._inputs(x, mask)
        if cache is not None and cache[0] is not None:
            z0r, z0i = cache[0], cache[1]
        else:
            z0 = mx.broadcast_to(self.z0[:, None], (2, B) + self.z0.shape[1:])
            z0r, z0i = z0[0], z0[1]
        dyn_force = None if self.args.readout == "bolted" else force_r  # bolted: R feeds nothing
        if cache is not None and T == 1:
            zr, zi = scan_step(*(a[:, 0] for a in scan_in), z0r, z0i, force_r=dyn_force)
            zr, zi = zr[:, None], zi[:, None]
        else:
            zr, zi = scan(*scan_in, z0r, z0i, force_r=dyn_force)
        if cache is not None:
            cache[0], cache[1] = zr[:, -1], zi[:, -1]
            if hasattr(cache, "advance"):
                cache.advance(T)
        features, r = order_parameters(zr, zi, self.args.harmonics, force_r)
        if self.args.readout == "bolted":  # the control: R scales the state before a norm
            state = mx.concatenate([zr, zi], axis=-1).reshape(B, T, -1)
            out = self.out_proj(self.state_norm(state * r[..., None]))
        else:
            out = self.out_proj(features.reshape(B, T, -1))
        if gate is not None:
            out = out * gate
        return x + out, r


class MLP(nn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(dims)
        self.up = nn.Linear(dims, hidden)
        self.down = nn.Linear(hidden, dims)

    def __call__(self, x):
        return x + self.down(nn.gelu(self.up(self.norm(x))))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.bank = OscillatorBank(args)
        self.mlp = MLP(args.d_model, args.ffn_hidden)

    def __call__(self, x, mask=None, cache=None, force_r=None):
        x, r = self.bank(x, mask, cache, force_r)
        return self.mlp(x), r


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.embed = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = [Block(args) for _ in range(args.n_layers)]
        self.norm = nn.RMSNorm(args.d_model)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        # leading underscores: lookup tables, not weights
        self._to_model, self._from_model = vocabulary_maps(args.vocab_compaction, args.vocab_size)

    def __call__(self, inputs, cache=None, return_r: bool = False):
        """Token ids (B, T) of the base tokenizer -> logits (B, T, base vocabulary); with
        return_r also R per layer (B, T, n_layers)."""
        forces = layer_forces(self.args.force_r, len(self.layers))
        if self._to_model is not None:  # base ids -> the model's (unknown id if not used)
            n_base, unknown = self._to_model.size, self.args.vocab_size - 1
            known = mx.take(self._to_model, mx.clip(inputs, 0, n_base - 1))
            inputs = mx.where((inputs >= 0) & (inputs < n_base), known, unknown)
        mask = create_ssm_mask(inputs, cache[0]) if cache else None  # batch padding
        x, rs = self.embed(inputs), []
        for i, layer in enumerate(self.layers):
            x, r = layer(x, mask, None if cache is None else cache[i], forces[i])
            rs.append(r)
        x = self.norm(x)
        logits = self.embed.as_linear(x) if self.args.tie_embeddings else self.lm_head(x)
        if self._from_model is not None:  # base ids the model never saw: no probability
            floor = max(UNSEEN_LOGIT, float(mx.finfo(logits.dtype).min))  # float16: -65504
            unseen = mx.full(logits.shape[:-1] + (1,), floor, dtype=logits.dtype)
            logits = mx.take(mx.concatenate([logits, unseen], axis=-1), self._from_model, axis=-1)
        return (logits, mx.stack(rs, axis=-1)) if return_r else logits

    def make_cache(self):
        return [ArraysCache(size=2) for _ in self.layers]


def vocabulary_maps(compaction: Optional[dict], vocab_size: int):
    """(base id -> model id, base id -> model logit column) as int32 arrays, or (None, None)
    without compaction. The model's ids 0..K-1 stand for the base ids whose bits are set, in
    increasing order, K is its unknown id; column K+1 (appended, UNSEEN_LOGIT) serves the rest."""
    if not compaction:
        return None, None
    bits = np.frombuffer(base64.b64decode(compaction["base_ids_bitmap"]), dtype=np.uint8)
    used = np.unpackbits(bits, bitorder="little")[:compaction["base_vocab_size"]].astype(bool)
    unknown = int(compaction["unknown_id"])
    if used.sum() != unknown or vocab_size != unknown + 1:
        raise ValueError(f"config.json: vocab_compaction names {used.sum()} ids, unknown_id "
                         f"{unknown} and vocab_size {vocab_size} disagree")
    to_model = np.full(used.size, unknown, dtype=np.int32)
    to_model[used] = np.arange(unknown, dtype=np.int32)
    from_model = np.where(used, to_model, unknown + 1).astype(np.int32)
    return mx.array(to_model), mx.array(from_model)


__all__ = ["Model", "ModelArgs"]
