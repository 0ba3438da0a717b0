"""The kernel text MLX's mx.fast.cuda_kernel generates, and how the harness runs it.

    generated_source(...)  the text MLX builds from (name, input_names, output_names, source,
                           header, template, inputs, output dtypes), following
                           mlx/backend/cuda/custom_kernel.cpp (`build_kernel`, `cuda_kernel`):
        - MLX's default header: `#include "mlx/backend/cuda/device/utils.cuh"` and
          `#include <cooperative_groups.h>`, then our header
        - `namespace mlx::core::cu {`, `namespace cg = cooperative_groups;`
        - `__global__ void custom_kernel_<name><template hash>(` where the hash is `_<int>`,
          `_t` / `_f` (bool) or `_<type>` per template argument
        - per input: `const T* x,` then `const __grid_constant__ Shape x_shape,`,
          `... Strides x_strides,`, `... int x_ndim,`, each only if the body contains that name
          (and the input is not 0-d)
        - per output: `T* y`, the last one closing the signature with `) {`
        - per template argument a line `constexpr int N = 1;` / `constexpr bool B = true;` /
          `using T = float;`, then an empty line (no C++ template: a cuda_kernel has none)
        - the body, `}` and the end of the namespace
      MLX 0.32.4 checked: every fixed fragment above is a string literal in libmlx.so of the
      mlx-cuda-13 0.32.4 wheel, whose default header has no `#define inf` line (some MLX
      sources have one). tests/test_kernel_harness.py::test_generated_cuda_source_is_mlxs_own
      compares the whole text with the one MLX prints, where a CUDA build of MLX is installed.
    Launch (CustomKernel::eval_gpu): the grid is in threads; CUDA gets ceil(grid / threadgroup)
    blocks of min(threadgroup, grid) threads (cuda_shim.h, kssm_shim::launch).
    The text is compiled unchanged by g++: its includes resolve to cpu_include/ (cuda_shim.h).
"""

from __future__ import annotations

from mlx_kssm.kernels import cuda

import mlx.core as mx

from harness_types import TYPE_STRINGS

MODULE = cuda
SHIMS = ("shim_common.h", "cuda_shim.h", "cpu_include/mlx/backend/cuda/device/utils.cuh",
         "cpu_include/cooperative_groups.h")
INCLUDE_DIRS = ("cpu_include",)
PRELUDE = ""

DEFAULT_HEADER = ('\n#include "mlx/backend/cuda/device/utils.cuh"\n\n'
                  "#include <cooperative_groups.h>\n\n")

CUDA_TYPES = {  # mlx dtype_to_cuda_type, for the dtypes the harness runs
    mx.float32: "float", mx.int32: "int32_t", mx.uint32: "uint32_t", mx.bool_: "bool",
}


def template_hash(template) -> str:
    out = ""
    for _, v in template:
        if isinstance(v, bool):
            out += "_t" if v else "_f"
        elif isinstance(v, int):
            out += f"_{v}"
        else:
            out += "_" + TYPE_STRINGS[v]
    return out


def _constant(name, v) -> str:
    if isinstance(v, bool):  # fmt formats a bool as true / false
        return f"  constexpr bool {name} = {'true' if v else 'false'};\n"
    if isinstance(v, int):
        return f"  constexpr int {name} = {v};\n"
    return f"  using {name} = {CUDA_TYPES[v]};\n"


def generated_source(name, input_names, output_names, source, header, inputs, output_dtypes,
                     template=(), **_):
    """(kernel_name, text, params) as MLX generates them. `inputs`: (dtype, shape) pairs.
    `params`: the signature's parameters in order, as (kind, index, name) for the driver."""
    kernel_name = "custom_kernel_" + name + template_hash(template)
    text = DEFAULT_HEADER + header
    text += "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
    text += f"__global__ void {kernel_name}(\n"
    params = []
    for i, (nm, (dtype, shape)) in enumerate(zip(input_names, inputs)):
        text += f"    const {CUDA_TYPES[dtype]}* {nm},\n"
        params.append(("in", i, nm))
        if len(shape) > 0:
            for suffix, ctype in (("_shape", "Shape"), ("_strides", "Strides"), ("_ndim", "int")):
                if nm + suffix in source:
                    text += f"    const __grid_constant__ {ctype} {nm}{suffix},\n"
                    params.append((suffix[1:], i, nm))
    for i, (nm, dtype) in enumerate(zip(output_names, output_dtypes)):
        text += f"    {CUDA_TYPES[dtype]}* {nm}"
        text += ",\n" if i < len(output_names) - 1 else ") {\n"
        params.append(("out", i, nm))
    if template:
        text += "".join(_constant(k, v) for k, v in template) + "\n"
    text += source + "\n}\n\n} // namespace mlx::core::cu\n"
    return kernel_name, text, params


def to_cpp(text: str) -> str:
    """The generated text compiles unchanged on top of cuda_shim.h."""
    return text


def arg_expr(kind: str, i: int, name: str) -> str:
    return {"in": f"in{i}.data()", "shape": f"kssm_shim::padded<mlx::core::cu::Shape>(in{i}_shape)",
            "strides": f"kssm_shim::padded<mlx::core::cu::Strides>(in{i}_strides)",
            "ndim": f"in{i}_ndim", "out": f"out{i}.data()"}[kind]


def launch(kernel_name: str, template, args: list[str]) -> str:
    return ("  kssm_shim::launch(io.grid, io.tg, [&] {\n"
            f"    mlx::core::cu::{kernel_name}({', '.join(args)});\n  }});")
