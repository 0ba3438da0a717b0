"""The kernel text MLX's mx.fast.metal_kernel generates, and its C++ translation for the harness.

    generated_source(...)  the text MLX builds from (name, input_names, output_names, source,
                           header, template, inputs, output dtypes), following
                           mlx/backend/metal (write_signature, metal_kernel):
        - the header, then `template <int N, typename T, ...>` when template args are given
        - `[[kernel]] void custom_kernel_<name>[_<template hash>]_<in types>_<out types>(`
        - per input: `const device T* x [[buffer(i)]]` (`constant` when it has fewer than 8
          elements; `const constant T& x` when 0-d), then `const constant int* x_shape`,
          `const constant int64_t* x_strides`, `const constant int& x_ndim`, each only if the
          body contains that name
        - per output: `device T* y [[buffer(i)]]`
        - the Metal thread attributes whose names occur in the body (a substring test, in
          MLX's fixed order), e.g. `uint3 thread_position_in_grid [[thread_position_in_grid]]`
        - the body, and an explicit `template [[host_name(..)]] [[kernel]] decltype(..) ..;`
      tests/test_kernel_harness.py::test_generated_metal_source_is_mlxs_own checks it byte for
      byte against the text MLX itself prints.
    to_cpp(text)           strips [[attributes]]; kernel-scope `threadgroup T x[..];` -> static
    arg_expr / launch      how the harness driver passes each parameter and launches the grid
                           (kssm_shim::run_grid in metal_shim.h)
"""

from __future__ import annotations

import re

import numpy as np

from mlx_kssm.kernels import metal

from harness_types import TYPE_STRINGS

MODULE = metal
SHIMS = ("shim_common.h", "metal_shim.h")
INCLUDE_DIRS = ()
PRELUDE = '#include "metal_shim.h"\n'

MAX_CONSTANT_ARRAY_SIZE = 8  # mlx: inputs with fewer elements go in the constant address space

METAL_ATTRIBUTES = (  # mlx metal_kernel: (name, type), in this order
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)


def template_value(v) -> tuple[str, str]:
    if isinstance(v, bool):  # std::ostream << bool prints 1 / 0
        return "bool", str(int(v))
    if isinstance(v, int):
        return "int", str(v)
    return "typename", TYPE_STRINGS[v]


def generated_source(name, input_names, output_names, source, header, inputs, output_dtypes,
                     template=(), atomic_outputs=False, **_):
    """(kernel_name, text, params) as MLX generates them. `inputs`: (dtype, shape) pairs.
    `params`: the signature's parameters in order, as (kind, index, name) for the driver."""
    kernel_name = "custom_kernel_" + name
    tdef = template_suffix(template)
    if template:
        kernel_name += "_" + re.sub(r"<|>|(, )", "_", tdef)[:-1]
    for dtype, shape in inputs:
        size = int(np.prod(shape)) if shape else 1
        kernel_name += "_" + TYPE_STRINGS[dtype] + (
            "s" if len(shape) == 0 else "c" if size < MAX_CONSTANT_ARRAY_SIZE else "")
    for dtype in output_dtypes:
        kernel_name += "_" + TYPE_STRINGS[dtype]

    attributes = [(a, t) for a, t in METAL_ATTRIBUTES if a in source]
    text = header
    if template:
        text += "template <" + ", ".join(f"{template_value(v)[0]} {k}" for k, v in template)
        text += ">\n"
    text += f"[[kernel]] void {kernel_name}(\n"
    params, index = [], 0
    for i, (nm, (dtype, shape)) in enumerate(zip(input_names, inputs)):
        size = int(np.prod(shape)) if shape else 1
        loc = "constant" if size < MAX_CONSTANT_ARRAY_SIZE else "device"
        ref = "&" if len(shape) == 0 else "*"
        text += f"  const {loc} {TYPE_STRINGS[dtype]}{ref} {nm} [[buffer({index})]],\n"
        params.append(("in_ref" if len(shape) == 0 else "in", i, nm))
        index += 1
        if len(shape) > 0:
            for suffix, ctype in (("_shape", "int*"), ("_strides", "int64_t*"), ("_ndim", "int&")):
                if nm + suffix in source:
                    text += f"  const constant {ctype} {nm}{suffix} [[buffer({index})]],\n"
                    params.append((suffix[1:], i, nm))
                    index += 1
    for i, (nm, dtype) in enumerate(zip(output_names, output_dtypes)):
        tstr = TYPE_STRINGS[dtype]
        if atomic_outputs:
            tstr = f"atomic<{tstr}>"
        text += f"  device {tstr}* {nm} [[buffer({index})]]"
        last = index >= len(inputs) + len(output_names) - 1 and not attributes
        text += ") {\n" if last else ",\n"
        params.append(("out", i, nm))
        index += 1
    for i, (attr, atype) in enumerate(attributes):
        text += f"  {atype} {attr} [[{attr}]]"
        text += ",\n" if i < len(attributes) - 1 else ") {\n"
        params.append(("attr", i, attr))
    text += source + "\n}\n"
    if template:
        full = kernel_name + tdef
        text += (f'\ntemplate [[host_name("{kernel_name}")]] [[kernel]] decltype({full}) '
                 f"{full};\n")
    return kernel_name, text, params


def template_suffix(template) -> str:
    """`<1, float>`: the explicit instantiation the driver calls."""
    return "<" + ", ".join(template_value(v)[1] for _, v in template) + ">" if template else ""


_ATTR = re.compile(r"\[\[\s*[A-Za-z_]\w*\s*(\([^()]*\))?\s*\]\]")
_TG_DECL = re.compile(r"^(\s*)threadgroup\s+(?=[^;()]*;)", re.MULTILINE)


def to_cpp(text: str) -> str:
    """Metal -> C++ on top of the shim: strip [[attributes]]; a statement-level
    `threadgroup T x[..];` (threadgroup memory) becomes `static` (see metal_shim.h)."""
    return _TG_DECL.sub(r"\1static ", _ATTR.sub("", text))


def arg_expr(kind: str, i: int, name: str) -> str:
    return {"in": f"in{i}.data()", "in_ref": f"in{i}[0]", "shape": f"in{i}_shape.data()",
            "strides": f"in{i}_strides.data()", "ndim": f"in{i}_ndim",
            "out": f"out{i}.data()", "attr": f"at.{name}"}[kind]


def launch(kernel_name: str, template, args: list[str]) -> str:
    return ("  kssm_shim::run_grid(io.grid, io.tg, [&](const kssm_shim::Attrs& at) {\n"
            f"    {kernel_name}{template_suffix(template)}({', '.join(args)});\n  }});")
