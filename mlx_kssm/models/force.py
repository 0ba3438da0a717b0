"""Forcing R: which layers have their order parameter clamped, and to what (docs/model.md).

`ForceR` is the one place a forced R is parsed and checked. It is built once -- from a number
(every layer), one value or None per layer, {layer: r}, or the command line's --force-r /
--force-r-layer strings -- for a model of a known number of layers, and refuses a model without
R. Everything below it trusts it: a model's layers, generation, the intervention sweep, the
causality suite and the mlx-lm export take a ForceR as it is (a model's `force_r=` still takes
the plain forms and builds one per call).

This file imports nothing from mlx_kssm and needs no `from __future__` import:
`export --format mlx-lm` copies it into the exported model file.
"""

from dataclasses import dataclass

NO_R = "this model is a transformer: it has no oscillators, so R cannot be forced"
LAYER_ITEM = "LAYER=R (e.g. 1=0.3)"


def check_r(value, what: str = "forced R") -> float:
    """`value` as a float in [0, 1] (R is an order parameter); ValueError otherwise."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= r <= 1.0:  # NaN fails here too
        raise ValueError(f"{what} must lie in [0, 1] (R is an order parameter), got {value}")
    return r


@dataclass(frozen=True)
class ForceR:
    """Forced R per layer: `layers[i]` is layer i's r in [0, 1], or None (layer i runs free).
    Checked when built; immutable after."""

    layers: tuple

    def __post_init__(self):
        checked = tuple(None if v is None else check_r(v) for v in self.layers)
        object.__setattr__(self, "layers", checked)

    @classmethod
    def of(cls, force_r, n_layers: int):
        """A ForceR for `n_layers` layers, or None when `force_r` is None. `force_r`: a ForceR
        (returned as it is), a number (every layer), a sequence with one value or None per
        layer, or {layer: r} (int or str keys; the other layers run free)."""
        if force_r is None:
            return None
        _check_n_layers(n_layers)
        if isinstance(force_r, cls):
            if len(force_r.layers) != n_layers:
                raise ValueError(f"force_r has {len(force_r.layers)} values for {n_layers} "
                                 "layers")
            return force_r
        if isinstance(force_r, dict):
            return cls(_layers_of_dict(force_r, n_layers))
        if isinstance(force_r, (list, tuple)):
            if len(force_r) != n_layers:
                raise ValueError(f"force_r has {len(force_r)} values for {n_layers} layers")
            return cls(tuple(force_r))
        return cls((force_r,) * n_layers)

    @classmethod
    def for_model(cls, force_r, model):
        """`ForceR.of(force_r, layers of model)`, refusing a model without R (the transformer;
        a model says so with `has_r = False`) when anything is forced."""
        if force_r is None:
            return None
        if not getattr(model, "has_r", True):
            raise ValueError(NO_R)
        return cls.of(force_r, len(model.layers))

    @classmethod
    def from_options(cls, force_r, layer_items, n_layers: int):
        """From the command line: --force-r R (every layer) and --force-r-layer L=R
        (repeatable; overrides --force-r in layer L). None when neither is given."""
        base = None if force_r is None else check_r(force_r, "--force-r")
        _check_n_layers(n_layers)
        if not layer_items:
            return None if base is None else cls((base,) * n_layers)
        values = [base] * n_layers
        for item in layer_items:
            layer, value = _layer_item(item, n_layers)
            values[layer] = value
        return cls(tuple(values))

    def to_config(self):
        """What config.json's "force_r" holds: one number when every layer is forced to the
        same value, else one number or null per layer; None (no forcing) for no layers."""
        if not self.layers:
            return None
        first = self.layers[0]
        if first is not None and all(v == first for v in self.layers):
            return first
        return list(self.layers)

    def describe(self) -> str:
        """'0.300 in every layer' or 'layer 0 = 0.250, layer 1 free'."""
        uniform = self.to_config()
        if uniform is None:
            return "no layer forced"
        if not isinstance(uniform, list):
            return f"{uniform:.3f} in every layer"
        return ", ".join(f"layer {i} = {v:.3f}" if v is not None else f"layer {i} free"
                         for i, v in enumerate(self.layers))


def _check_n_layers(n_layers) -> None:
    """A model has at least one layer; a bad count would silently force nothing."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")


def _layer_key(key) -> int:
    """A {layer: r} key: an int, or its decimal text (JSON keys); int() would take 1.7 as 1
    and True as 1, so those are refused."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str):
        try:
            return int(key)
        except ValueError:
            pass
    raise ValueError(f"force_r's layers must be integers, got {key!r}")


def _layers_of_dict(force_r: dict, n_layers: int) -> tuple:
    by_layer = {_layer_key(k): v for k, v in force_r.items()}
    bad = sorted(k for k in by_layer if not 0 <= k < n_layers)
    if bad:
        raise ValueError(f"force_r names layers {bad}; the model has layers 0..{n_layers - 1}")
    return tuple(by_layer.get(i) for i in range(n_layers))


def _layer_item(item: str, n_layers: int):
    """--force-r-layer's 'L=R' -> (L, r), checked against the model's layers."""
    if "=" not in item:
        raise ValueError(f"--force-r-layer takes {LAYER_ITEM}, got {item!r}")
    layer_text, value_text = item.split("=", 1)
    try:
        layer = int(layer_text)
    except ValueError:
        raise ValueError(f"--force-r-layer {item}: the layer must be an integer") from None
    if not 0 <= layer < n_layers:
        raise ValueError(f"unknown layer {layer} in --force-r-layer {item}: the model has "
                         f"layers 0..{n_layers - 1}")
    return layer, check_r(value_text, f"--force-r-layer {item}")
