"""A Linear layer that quantizes at any input width (the oscillator bank's projections).

MLX quantizes a weight in groups of 32, 64 or 128 along its input dimension, so a layer whose
input width none of them divides (the order-parameter readout: 3 x harmonics x groups, e.g.
240 or 48 wide) could not be quantized. `QuantizableLinear.to_quantized` then pads the input
with zero columns up to a multiple of the group size: the padded weight columns multiply
zeros, so the layer computes what the unpadded one does. Its weights are a Linear's, so
folders saved before it load unchanged; mlx-lm's loader calls the same `to_quantized` (the
exported model file carries this file's definitions).
"""

import mlx.core as mx
import mlx.nn as nn


class PaddedQuantizedLinear(nn.QuantizedLinear):
    """QuantizedLinear over its input zero-padded from `input_dims` to the next multiple of the
    group size (the stored weight is the padded one)."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = True,
                 group_size: int = 64, bits: int = 4, mode: str = "affine"):
        padded = -(-input_dims // group_size) * group_size
        super().__init__(padded, output_dims, bias, group_size, bits, mode)
        self.input_dims = input_dims

    def __call__(self, x):
        padded = self["scales"].shape[-1] * self.group_size
        widths = [(0, 0)] * (x.ndim - 1) + [(0, padded - x.shape[-1])]
        return super().__call__(mx.pad(x, widths))

    @classmethod
    def from_linear(cls, linear_layer, group_size: int = 64, bits: int = 4,
                    mode: str = "affine"):
        output_dims, input_dims = linear_layer.weight.shape
        layer = cls(input_dims, output_dims, False, group_size, bits, mode)
        padded = -(-input_dims // group_size) * group_size
        weight = mx.pad(linear_layer.weight, [(0, 0), (0, padded - input_dims)])
        layer.weight, layer.scales, *biases = mx.quantize(weight, group_size, bits, mode=mode)
        layer.biases = biases[0] if biases else None
        if "bias" in linear_layer:
            layer.bias = linear_layer.bias
        return layer


class QuantizableLinear(nn.Linear):
    """nn.Linear whose quantized form pads its input where the group size does not divide the
    input width (PaddedQuantizedLinear); otherwise it is nn.Linear's own."""

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine",
                     **kwargs):
        if self.weight.shape[-1] % group_size == 0:
            return super().to_quantized(group_size=group_size, bits=bits, mode=mode, **kwargs)
        return PaddedQuantizedLinear.from_linear(self, group_size, bits, mode)
