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
osc_per_group, bistable and u_bound for v3, readout). The computation is mlx_kssm's own code,
copied into this file by the export (the sections marked "from mlx_kssm/..."): the free scan
in complex64 as mlx_kssm's CPU scan, the decode step and forced runs on (re, im) pairs as its
reference, so greedy decoding gives mlx-kssm's tokens.

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

# The K-SSM computation is mlx_kssm's: the export writes the definitions these imports name in
# their place (export/model_file.py), so the exported file runs without mlx_kssm.
from ..kernels.reference import PHASE_EPS, coupling_field, scan_sequential, scan_step
from ..kernels.cpu import _complex, _forward, _steps
from ..models.order_params import order_parameters, unit_phasors
from ..models.bistable import (CORE_CENTER, DELTA_EPS, FORCED_U_FLOOR, N_PROJECTIONS, U_HI,
                               U_LEAK, U_LO, U_SHARPNESS, bistable_core, bound_u,
                               core_projections, raw_u)
from ..models.kssm import OscillatorBankBase, algebraic_unit, projection_sizes
from ..models.base import MLP
from ..models.quantized import PaddedQuantizedLinear, QuantizableLinear

# ----------------------------------------------------------------------- for mlx-lm

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
    lambda_delta: float = 1e-3  # v3's regularizer weights: training only
    lambda_logu: float = 1e-2
    core_box: float = 0.0  # v3's boxed projections; absent from folders saved before the box
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

    @property
    def n_oscillators(self) -> int:
        return self.n_groups * self.osc_per_group


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


def scan(dr, di, k, cr, ci, z0r, z0i, force_r=None):
    """States (zr, zi), each (B, T, G, n), as mlx_kssm's reference scan computes them."""
    if force_r is not None:  # forcing makes the step nonlinear: one step at a time
        return scan_sequential(dr, di, k, cr, ci, z0r, z0i, force_r)
    z = _forward(_complex(dr, di), k, _complex(cr, ci), _complex(z0r, z0i))
    return mx.real(z), mx.imag(z)


def identity_where_masked(scan_in, mask):
    """Scan inputs (dr, di, k, cr, ci) with masked-out positions (batch padding) made identity
    steps: d = 1, K = 0, no drive."""
    dr, di, k, cr, ci = scan_in
    keep = mask[:, :, None, None]
    dr, di, k = mx.where(keep, dr, 1.0), mx.where(keep, di, 0.0), mx.where(keep, k, 0.0)
    return dr, di, k, mx.where(keep, cr, 0.0), mx.where(keep, ci, 0.0)


class OscillatorBank(OscillatorBankBase):
    def __init__(self, args: ModelArgs):
        super().__init__()
        G, n, D = args.n_groups, args.osc_per_group, args.d_model
        N = G * n
        self.args, self.G, self.n = args, G, n
        self.norm = nn.RMSNorm(D)
        self.in_proj = QuantizableLinear(D, sum(projection_sizes(args)))
        self.omega = mx.zeros((G, n))
        self.lambda_bias = mx.zeros((G, n))
        self.dt_raw = mx.array(0.0)
        self.z0 = mx.zeros((2, G, n))
        if args.readout == "bolted":
            self.out_proj = QuantizableLinear(2 * N, D)
            self.state_norm = nn.RMSNorm(2 * N)
        else:
            self.out_proj = QuantizableLinear(3 * args.harmonics * G, D)

    def __call__(self, x, mask=None, cache=None, force_r=None):
        T = x.shape[1]
        scan_in, gate, _ = self._inputs(x)  # (v3's training aux is not needed here)
        if mask is not None:
            scan_in = identity_where_masked(scan_in, mask)
        if cache is not None and cache[0] is not None:
            z0r, z0i = cache[0], cache[1]
        else:
            z0r, z0i = self._initial_state(x.shape[0])
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
        features, r = order_parameters(*unit_phasors(zr, zi), self.args.harmonics, force_r)
        return self._output(x, features, r, zr, zi, gate), r


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
