"""Weight quantization in mlx-lm's format: `nn.quantize` on the model, and in config.json

    "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
                     "layers.0.bank.out_proj": {"group_size": 64, "bits": 4}, ...}

(mlx-lm writes the same dict again as "quantization_config"). A layer named there gets its
own parameters; any other layer whose weights carry `.scales` gets the top-level ones; the
rest stay floating point. mlx-lm's loader reads this format, and `mlx-kssm export --quantize`
writes it; `mlx_lm.convert -q` folders load here too.

Group sizes: MLX quantizes in groups of 32, 64 or 128 inputs. Each layer takes the requested
size if it divides the layer's input width, else the largest smaller one that does; where none
does, the oscillator bank's projections (QuantizableLinear) pad their input with zeros up to a
multiple of the requested size, and any other layer stays floating point. Those layers are
named in the config, so a loader does not have to guess their group size.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .models.quantized import QuantizableLinear

GROUP_SIZES = (32, 64, 128)
BITS = (2, 3, 4, 5, 6, 8)
DEFAULT_GROUP_SIZE = 64


def check_settings(bits, group_size, where: str = "quantization") -> None:
    """ValueError unless `bits` and `group_size` are ones MLX's affine quantization takes."""
    if bits not in BITS or isinstance(bits, bool):
        raise ValueError(f"{where}: bits must be one of {', '.join(map(str, BITS))}, got {bits!r}")
    if group_size not in GROUP_SIZES or isinstance(group_size, bool):
        raise ValueError(f"{where}: group_size must be one of "
                         f"{', '.join(map(str, GROUP_SIZES))}, got {group_size!r}")


def is_quantized(model) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               for _, m in model.named_modules())


def layer_settings(module, bits: int, group_size: int) -> dict | None:
    """{"group_size", "bits"} for one layer (see the module's docstring), or None: it stays
    floating point."""
    width = module.weight.shape[-1]
    for size in sorted((g for g in GROUP_SIZES if g <= group_size), reverse=True):
        if width % size == 0:
            return {"group_size": size, "bits": bits}
    if isinstance(module, QuantizableLinear):
        return {"group_size": group_size, "bits": bits}  # padded
    return None


def quantize_model(model, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> dict:
    """Quantize `model` in place; returns its config.json "quantization" entry."""
    check_settings(bits, group_size, "--quantize/--group-size")
    if is_quantized(model):
        raise ValueError("the model is quantized already: quantize its floating-point "
                         "original instead")
    config = {"group_size": group_size, "bits": bits, "mode": "affine"}

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        settings = layer_settings(module, bits, group_size)
        if settings is None:
            return False
        if settings["group_size"] != group_size or module.weight.shape[-1] % group_size:
            config[path] = settings  # another size, or padded: a loader could not infer it
        return dict(settings)
    nn.quantize(model, class_predicate=predicate)
    mx.eval(model.parameters())
    return config


def apply_quantization(model, quantization, weights: dict) -> None:
    """Quantize the freshly built `model` as config.json's `quantization` says, so `weights`
    (a quantized folder's tensors) fit it. ValueError when the config is not one this reads,
    or when its group size or bits do not fit a layer's stored weights."""
    if not isinstance(quantization, dict):
        raise ValueError(f"quantization must be an object, got {quantization!r}")
    mode = quantization.get("mode", "affine")
    if mode != "affine":
        raise ValueError(f"quantization mode {mode!r} is not supported (affine only)")
    top = (quantization.get("bits"), quantization.get("group_size"))
    check_settings(*top)

    def predicate(path, module):
        own = quantization.get(path)
        if own is False or not hasattr(module, "to_quantized") or (
                f"{path}.scales" not in weights and not isinstance(own, dict)):
            return False
        bits, size = (own.get("bits"), own.get("group_size")) if isinstance(own, dict) else top
        check_settings(bits, size, f"quantization of {path}")
        _check_fit(path, module, bits, size, weights)
        return {"group_size": size, "bits": bits}
    nn.quantize(model, class_predicate=predicate)


def _check_fit(path: str, module, bits: int, group_size: int, weights: dict) -> None:
    """The stored scales and packed weight have the shapes these settings give the layer."""
    width = module.weight.shape[-1]
    if width % group_size and not isinstance(module, QuantizableLinear):
        raise ValueError(f"quantization: group size {group_size} does not divide {path}'s "
                         f"input width {width}")
    groups = -(-width // group_size)
    scales, packed = weights.get(f"{path}.scales"), weights.get(f"{path}.weight")
    if scales is None or packed is None:
        return  # apply_weights names the missing tensor
    if scales.shape[-1] != groups or packed.shape[-1] != groups * group_size * bits // 32:
        raise ValueError(
            f"quantization (group size {group_size}, {bits} bits) does not fit {path}'s stored "
            f"weights ({scales.shape[-1]} scales and {packed.shape[-1] * 32} packed bits per "
            f"row, where these settings give {groups} and {groups * group_size * bits}): the "
            "folder was quantized with other settings than its config.json names")

