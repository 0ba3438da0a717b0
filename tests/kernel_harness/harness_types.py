"""dtype tables shared by the harness's Metal and CUDA generators."""

import mlx_kssm  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import numpy as np

TYPE_STRINGS = {  # mlx get_type_string
    mx.bool_: "bool", mx.uint8: "uint8_t", mx.uint16: "uint16_t", mx.uint32: "uint32_t",
    mx.uint64: "uint64_t", mx.int8: "int8_t", mx.int16: "int16_t", mx.int32: "int32_t",
    mx.int64: "int64_t", mx.float16: "float16_t", mx.bfloat16: "bfloat16_t",
    mx.float32: "float", mx.complex64: "complex64_t",
}
NP_TYPES = {mx.float32: np.float32, mx.int32: np.int32, mx.uint32: np.uint32}
