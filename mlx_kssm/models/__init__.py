"""Model zoo: one file per architecture, presets, and `build_model`."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .._resources import check_fits
from .._types import check_seed
from . import kssm, transformer, upstream_v3
from .base import DEFAULT_ZONES, GOLDILOCKS_R, ZONE_TABLES, ZONES, ModelArgs, r_zone, zone_table
from .force import ForceR
from .presets import PRESETS, check_options, preset_args, preset_names, preset_train_defaults

_ARCHITECTURES = {"kssm": kssm.Model, "transformer": transformer.Model,
                  "upstream_v3": upstream_v3.Model}


def build_model(preset_or_args, vocab_size: int | None = None, seed: int | None = None, **overrides):
    """A model from a preset name, a ModelArgs, or a saved config dict (config.json: one
    without a "design" is mlx-kssm 0.1's design 1, a v3 one without "core_box" has raw core
    projections: ModelArgs.from_config). `seed` fixes the init. `overrides` are ModelArgs
    fields, refused when unknown whatever the first argument."""
    args = _model_args(preset_or_args, overrides)
    if vocab_size is not None:
        args.vocab_size = vocab_size  # validate() refuses a non-integer (2.7, "300", True)
    args.validate()
    check_fits(args)  # an absurd config.json size: one message, not a crash inside MLX
    if seed is not None:
        check_seed(seed)
        mx.random.seed(seed)
    model = _ARCHITECTURES[args.model_type](args)
    mx.eval(model.parameters())
    return model


def _model_args(preset_or_args, overrides: dict) -> ModelArgs:
    """The unvalidated ModelArgs that build_model's first argument and overrides describe."""
    if isinstance(preset_or_args, str):
        return preset_args(preset_or_args, **overrides)
    check_options(overrides)
    if isinstance(preset_or_args, dict):
        return ModelArgs.from_config({**preset_or_args, **overrides})
    if isinstance(preset_or_args, ModelArgs):
        return ModelArgs.from_dict({**preset_or_args.to_dict(), **overrides})
    raise ValueError("build_model takes a preset name, a ModelArgs or a config dict, got "
                     f"{type(preset_or_args).__name__}")


def count_parameters(model) -> int:
    """Parameters as the floating-point model has them: a quantized layer's weight counts its
    unpacked values (uint32 words x 32 / bits; a padded one its own width), not its words,
    scales or biases."""
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    for _, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            rows, words = module["weight"].shape
            width = getattr(module, "input_dims", words * 32 // module.bits)
            total += rows * width - rows * words - module["scales"].size
            total -= module["biases"].size if module.get("biases") is not None else 0
    return total


def preset_table(vocab_size: int | None = None) -> list:
    """(name, parameters, description) of every preset, at `vocab_size` (a prepared data
    folder's) or else its default vocabulary size. The models are built but never evaluated:
    counting needs the shapes only, so a 100k vocabulary costs no memory."""
    rows = []
    for name, (description, _, _) in PRESETS.items():
        args = preset_args(name, **({} if vocab_size is None else {"vocab_size": vocab_size}))
        rows.append((name, count_parameters(_ARCHITECTURES[args.model_type](args)), description))
    return rows


__all__ = ["ForceR", "ModelArgs", "build_model", "count_parameters", "PRESETS", "preset_args",
           "preset_names", "preset_table", "preset_train_defaults", "r_zone", "zone_table",
           "DEFAULT_ZONES", "GOLDILOCKS_R", "ZONE_TABLES", "ZONES"]
