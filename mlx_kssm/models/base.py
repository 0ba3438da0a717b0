"""Pieces shared by every architecture: the config dataclass, the MLP, the layer stack, R zones."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .._types import check_fields
from .bistable import CORE_BOX
from .force import ForceR

MODEL_TYPES = ("kssm", "transformer", "upstream_v3")
# design number -> the options that define it (docs/model.md, "Designs")
DESIGNS = {
    1: dict(design=1, rotation="input", gate=False, squash="exp"),
    2: dict(design=2, rotation="fixed", gate=True, squash="algebraic"),
}
# Options that earlier versions wrote to config.json and this one no longer has: name -> the
# value every preset used (None: any value; the option was informational). A config holding
# that value loads with the key ignored; another value is refused, since this version cannot
# build what it describes.
RETIRED_OPTIONS = {
    "damping_init": ("linear", "the initial damping's spread"),
    "coupling_bias": (0.0, "the coupling logit's initial bias"),
    "max_seq_len": (None, "informational only"),
}


def _version() -> str:
    from .. import __version__
    return __version__


@dataclass
class ModelArgs:
    """Everything needed to rebuild a model; saved as config.json (unknown keys ignored)."""

    model_type: str = "kssm"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    ffn_hidden: int = 256
    tie_embeddings: bool = True
    # oscillator bank (kssm, upstream_v3)
    n_groups: int = 8
    osc_per_group: int = 8
    harmonics: int = 3
    # "order_params": output sees only the order parameters (the K-SSM contract);
    # "bolted": output reads the raw state, R only rescales it before a norm (negative control)
    readout: str = "order_params"
    # K-SSM design (docs/model.md). Design 2: a fixed rotation per oscillator, an output gate
    # from the current layer input, algebraic squashes (no exp: see `squash`). Design 1 (folders
    # saved by mlx-kssm 0.1): an input-dependent rotation, no gate, sigmoid/tanh.
    design: int = 2
    rotation: str = "fixed"  # "fixed": angle dt * omega; "input": dt * (omega + Delta(x_t))
    gate: bool = True  # y = x + out_proj(features) * act(gate(x_t)), from the current input only
    # "algebraic": lambda = (1 + v / sqrt(1 + v^2)) / 2, drive v / sqrt(1 + v^2), gate
    # v * lambda(v); "exp": sigmoid, tanh, silu. Same shapes; the algebraic forms avoid the
    # transcendental functions that dominate a step on CPUs
    squash: str = "algebraic"
    # v3 bistable core
    bistable: bool = False
    u_bound: str = "soft"  # the bound on u, which passes gradient everywhere (the only one)
    lambda_delta: float = 1e-3  # weight of 1/(|Delta| + eps)
    lambda_logu: float = 1e-2  # weight of -log u
    # K-SSM v3: a..h centred on u = 1 and squashed to +-core_box, which keeps u in
    # [1 - 2 core_box, 1 / (1 - 2 core_box)] and away from the ratio's pole (models/bistable.py);
    # 0: raw projections (upstream-v3, and K-SSM v3 folders saved before the box: their
    # config.json has no core_box)
    core_box: float = CORE_BOX
    # transformer
    n_heads: int = 4
    preset: Optional[str] = None

    @classmethod
    def from_dict(cls, params: dict) -> "ModelArgs":
        """Build from a dict of fields; unknown keys are ignored, missing ones take defaults."""
        names = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in names})

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Build from a saved config.json. A K-SSM config without "design" was written by
        mlx-kssm 0.1, before designs were recorded: it is design 1. A v3 (bistable) one without
        "core_box" predates the boxed core: its projections are raw (core_box 0)."""
        if not isinstance(config, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(config).__name__}")
        config = _without_retired(config)
        if config.get("model_type", "kssm") == "kssm":
            if "design" not in config:
                config = {**DESIGNS[1], **config}
            if config.get("bistable") and "core_box" not in config:
                config = {**config, "core_box": 0.0}
        return cls.from_dict(config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "ModelArgs":
        check_fields(self)  # a config.json is user input
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.readout not in ("order_params", "bolted"):
            raise ValueError(f"readout must be 'order_params' or 'bolted', got {self.readout!r}")
        if self.design not in DESIGNS:
            raise ValueError(f"K-SSM design {self.design} is unknown to mlx-kssm "
                             f"{_version()} (it knows designs {', '.join(map(str, DESIGNS))}): "
                             "upgrade mlx-kssm to load this model")
        for name, allowed in (("rotation", ("fixed", "input")), ("squash", ("algebraic", "exp"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self._check_design()
        if self.u_bound != "soft":
            raise ValueError(f"u_bound {self.u_bound!r} is no longer supported: only 'soft', "
                             "the bound that passes gradient everywhere (a 'hard' clamp stopped "
                             "u's gradient outside the regime)")
        self._check_finite()
        if not 0.0 <= self.core_box < 0.5:  # 1 - 2 core_box is the bound on the denominator
            raise ValueError(f"core_box must lie in [0, 0.5), got {self.core_box}")
        for name in ("vocab_size", "d_model", "n_layers", "n_groups", "osc_per_group",
                     "harmonics", "ffn_hidden", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    def _check_design(self) -> None:
        """`design` labels the parts (rotation, gate, squash); parts that are exactly another
        design's contradict it. A mix of parts keeps the label of the design it varies."""
        parts = design_of(self.rotation, self.gate, self.squash)
        if self.model_type == "kssm" and parts is not None and parts != self.design:
            raise ValueError(f"design {self.design} contradicts rotation={self.rotation!r}, "
                             f"gate={self.gate}, squash={self.squash!r}: those are design "
                             f"{parts}'s parts (docs/model.md, \"Designs\")")

    def _check_finite(self) -> None:
        """A NaN or infinite float field (lambda_delta=nan) would poison every logit."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")

    @property
    def n_oscillators(self) -> int:
        return self.n_groups * self.osc_per_group


def design_of(rotation: str, gate: bool, squash: str) -> Optional[int]:
    """The design whose parts these are, or None for a mix."""
    for number, parts in DESIGNS.items():
        if (parts["rotation"], parts["gate"], parts["squash"]) == (rotation, gate, squash):
            return number
    return None


def _without_retired(config: dict) -> dict:
    """`config` without RETIRED_OPTIONS' keys, each checked: the value every preset used (or
    any, where the option was informational) is ignored, another one refused."""
    for name, (default, what) in RETIRED_OPTIONS.items():
        if name in config and default is not None and config[name] != default:
            raise ValueError(
                f"{name}={config[name]!r} ({what}) is no longer supported: this version of "
                f"mlx-kssm builds only {default!r}. A saved model's weights already hold what "
                f"it set: remove \"{name}\" from its config.json to load it")
    return {k: v for k, v in config.items() if k not in RETIRED_OPTIONS}


class MLP(nn.Module):
    """Pre-norm position-wise feed-forward block (SwiGLU-free: plain GELU keeps it small)."""

    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(dims)
        self.up = nn.Linear(dims, hidden)
        self.down = nn.Linear(hidden, dims)

    def __call__(self, x):
        return x + self.down(nn.gelu(self.up(self.norm(x))))


class LanguageModel(nn.Module):
    """What every architecture shares: token embedding, a stack of `block_cls(args)`, final
    norm, tied or untied head, and the (logits[, r][, aux]) return convention."""

    has_r = True  # the model has oscillators: R to report and to force

    def __init__(self, args: ModelArgs, block_cls):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = [block_cls(args) for _ in range(args.n_layers)]
        self.norm = nn.RMSNorm(args.d_model)
        if not args.tie_embeddings:
            self.lm_head = nn.Linear(args.d_model, args.vocab_size, bias=False)

    def upgrade_saved(self, arrays: dict) -> dict:
        """Saved arrays (weights, or optimizer state named after them) in this version's
        layout: an architecture whose layout changed converts an earlier one here."""
        return arrays

    def head(self, x):
        x = self.norm(x)
        return self.embed.as_linear(x) if self.args.tie_embeddings else self.lm_head(x)

    def run(self, inputs, force_r, step, return_r: bool, return_aux: bool, cache=None):
        """The forward pass every architecture shares: embed `inputs`, pass x through layer i
        as `step(i, x, r_i)` -> (x, R (B, T) or None, aux or None) with r_i layer i's forced R
        (None: free), then the head. `inputs`, `cache` and `force_r` are checked once here
        (shapes and types only: this runs inside mx.compile and once per decoded token).
        Token ids must lie in [0, vocab_size): not checked here, for speed (it would read the
        values); the data loaders check them."""
        check_inputs(inputs)
        self.check_cache(cache, inputs.shape[0])
        force = ForceR.for_model(force_r, self)
        x = self.embed(inputs)
        rs, auxes = [], []
        for i in range(len(self.layers)):
            x, r, aux = step(i, x, None if force is None else force.layers[i])
            rs.append(r)
            auxes.append(aux)
        r = mx.stack(rs, axis=-1) if self.has_r else None
        return self.outputs(self.head(x), r, merge_aux(auxes), return_r, return_aux)

    def check_cache(self, cache, batch: int) -> None:
        """`cache` is None or make_cache()'s list, one entry per layer, each of the kind and,
        where it holds state, the batch size and shape this model and `inputs` give."""
        if cache is None:
            return
        if not isinstance(cache, list) or len(cache) != len(self.layers):
            got = (f"a list of {len(cache)}" if isinstance(cache, list)
                   else type(cache).__name__)
            raise ValueError(f"cache must be a list with one entry per layer "
                             f"({len(self.layers)}, as model.make_cache() gives), got {got}")
        for i, layer_cache in enumerate(cache):
            self.check_layer_cache(i, layer_cache, batch)

    def check_layer_cache(self, i: int, layer_cache, batch: int) -> None:
        """Architecture-specific check of layer i's cache; the subclasses that cache define it."""

    @staticmethod
    def outputs(logits, r, aux, return_r: bool, return_aux: bool):
        out = (logits,)
        if return_r:
            out += (r,)
        if return_aux:
            out += (aux,)
        return out[0] if len(out) == 1 else out


INPUTS_FORM = "inputs must be an integer mx.array of shape (batch, tokens) with tokens >= 1"


def check_inputs(inputs) -> None:
    """Token ids as every model takes them; from shape and dtype alone (never the values)."""
    if not isinstance(inputs, mx.array):
        raise ValueError(f"{INPUTS_FORM}, got {type(inputs).__name__}")
    if inputs.ndim != 2 or inputs.shape[1] < 1 or not mx.issubdtype(inputs.dtype, mx.integer):
        raise ValueError(f"{INPUTS_FORM}, got shape {tuple(inputs.shape)} of {inputs.dtype}")


def check_layer_cache_kind(i: int, layer_cache, kind: type) -> None:
    """Layer i's cache must be a `kind` (another model's cache fails deep inside MLX)."""
    if not isinstance(layer_cache, kind):
        raise ValueError(f"cache[{i}] must be this model's {kind.__name__} (from "
                         f"model.make_cache()), got {type(layer_cache).__name__}")


def merge_aux(auxes: list) -> dict:
    """Per-layer aux dicts -> model aux: regularizers summed, u statistics averaged."""
    auxes = [a for a in auxes if a]
    if not auxes:
        return {"reg": mx.array(0.0), "u": None, "u_at_bound": None}
    return {"reg": sum(a["reg"] for a in auxes),
            "u": mx.mean(mx.stack([a["u"] for a in auxes])),
            "u_at_bound": mx.mean(mx.stack([a["u_at_bound"] for a in auxes]))}


# The R zone tables (docs/training.md, "R zones"): name -> lower bounds and labels, lowest
# first. "v3" is the default; "v2" is the older table, for reading runs judged by it.
ZONE_TABLES = {
    "v3": (
        (0.00, "∅ Unformed"),
        (0.10, "☾ Intimacy"),
        (0.30, "⚖ Balance"),
        (0.50, "🌀 Mystery"),
        (0.70, "✨ Wonder"),
        (0.85, "🔥 Passion"),
        (0.95, "🜂 Ache"),
    ),
    "v2": (
        (0.00, "∅ Unformed"),
        (0.10, "☾ Intimacy"),
        (0.30, "✨ Unbound"),
        (0.50, "🌀 Goldilocks"),
        (0.80, "⚖ Balance"),
        (0.95, "☍ Over-sync"),
    ),
}
DEFAULT_ZONES = "v3"
ZONES = ZONE_TABLES[DEFAULT_ZONES]
GOLDILOCKS_R = 0.30  # "Goldilocks": R at or above this (the stage 5 gate)


ZONE_TOLERANCE = 1e-6  # a value this close below a bound counts as above it


def zone_table(zones: str = DEFAULT_ZONES) -> tuple:
    """The (lower bound, label) rows of zone table `zones` ("v3" or "v2")."""
    if zones not in ZONE_TABLES:
        raise ValueError(f"unknown zone table {zones!r}; choose from: {', '.join(ZONE_TABLES)}")
    return ZONE_TABLES[zones]


def r_zone(r: float, zones: str = DEFAULT_ZONES) -> str:
    """The zone R lies in, in table `zones` (docs/model.md). Within ZONE_TOLERANCE of a bound
    counts as above it, so a forced 0.3 -- 0.29999998 in float32 -- is named by the zone that
    starts at 0.3 wherever it is named."""
    table = zone_table(zones)
    name = table[0][1]
    for lower, label in table:
        if r >= lower - ZONE_TOLERANCE:
            name = label
    return name


def causal_mask(T: int, offset: int = 0):
    """Additive mask for T queries after `offset` cached keys."""
    q = mx.arange(offset, offset + T)[:, None]
    k = mx.arange(offset + T)[None]
    return mx.where(k <= q, 0.0, -1e9).astype(mx.float32)
