"""Run the package's Metal kernel source on the CPU: generate the kernel exactly as MLX would,
compile it as C++20 against metal_shim.h, run every threadgroup's threads concurrently.

    generated_source(...)  the text MLX's mx.fast.metal_kernel builds from (name, input_names,
                           output_names, source, header, template, inputs, output dtypes),
                           following mlx/backend/metal (write_signature, metal_kernel):
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
    Emulator               compiles that text (cached by hash in a temp dir) and runs it;
                           `run_kernel` has the signature of mlx_kssm.kernels.metal._run_kernel,
                           so tests swap it in and the package's own scan/step/VJP code runs
                           on the emulated kernels.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import mlx_kssm  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import numpy as np

from mlx_kssm.kernels import metal, reference

HERE = Path(__file__).resolve().parent
SHIM = HERE / "metal_shim.h"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++20", "-O1", "-pthread", "-Wno-attributes"]
CACHE = Path(tempfile.gettempdir()) / "mlx_kssm_metal_harness"

MAX_CONSTANT_ARRAY_SIZE = 8  # mlx: inputs with fewer elements go in the constant address space

TYPE_STRINGS = {  # mlx get_type_string
    mx.bool_: "bool", mx.uint8: "uint8_t", mx.uint16: "uint16_t", mx.uint32: "uint32_t",
    mx.uint64: "uint64_t", mx.int8: "int8_t", mx.int16: "int16_t", mx.int32: "int32_t",
    mx.int64: "int64_t", mx.float16: "float16_t", mx.bfloat16: "bfloat16_t",
    mx.float32: "float", mx.complex64: "complex64_t",
}
NP_TYPES = {mx.float32: np.float32, mx.int32: np.int32, mx.uint32: np.uint32}

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


class HarnessError(RuntimeError):
    """The emulated kernel did not compile, crashed or hung."""


def _template_value(v) -> tuple[str, str]:
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
    tdef = ""
    if template:
        tdef = "<" + ", ".join(_template_value(v)[1] for _, v in template) + ">"
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
        text += "template <" + ", ".join(f"{_template_value(v)[0]} {k}" for k, v in template)
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


_ATTR = re.compile(r"\[\[\s*[A-Za-z_]\w*\s*(\([^()]*\))?\s*\]\]")
_TG_DECL = re.compile(r"^(\s*)threadgroup\s+(?=[^;()]*;)", re.MULTILINE)


def to_cpp(text: str) -> str:
    """Metal -> C++ on top of the shim: strip [[attributes]]; a statement-level
    `threadgroup T x[..];` (threadgroup memory) becomes `static` (see metal_shim.h)."""
    return _TG_DECL.sub(r"\1static ", _ATTR.sub("", text))


def _driver(kernel_name, tdef, params, n_in, n_out, in_types, out_types) -> str:
    lines = ["int main(int argc, char** argv) {",
             f"  kssm_shim::Io io(argc, argv, {n_in}, {n_out});"]
    for i, t in enumerate(in_types):
        lines.append(f"  auto in{i} = io.input<{t}>({i});")
        lines.append(f"  auto in{i}_shape = io.shape({i});")
        lines.append(f"  auto in{i}_strides = io.strides({i});")
        lines.append(f"  int in{i}_ndim = io.ndim({i});")
    for i, t in enumerate(out_types):
        lines.append(f"  auto out{i} = io.output<{t}>({i});")
    args = []
    for kind, i, nm in params:
        args.append({"in": f"in{i}.data()", "in_ref": f"in{i}[0]", "shape": f"in{i}_shape.data()",
                     "strides": f"in{i}_strides.data()", "ndim": f"in{i}_ndim",
                     "out": f"out{i}.data()", "attr": f"at.{nm}"}[kind])
    lines.append("  kssm_shim::run_grid(io.grid, io.tg, [&](const kssm_shim::Attrs& at) {")
    lines.append(f"    {kernel_name}{tdef}(" + ", ".join(args) + ");")
    lines.append("  });")
    for i in range(n_out):
        lines.append(f"  io.save({i}, out{i});")
    lines.append("  return 0;\n}")
    return "\n".join(lines) + "\n"


class Emulator:
    """Compile (once per distinct generated source) and run kernels on the CPU."""

    def __init__(self, jitter: int | None = None, timeout: float = 300.0, sources=None):
        self.jitter = jitter
        self.timeout = timeout
        self.sources = sources  # optional override: name -> kernel_spec dict
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def spec(self, name: str) -> dict:
        if self.sources and name in self.sources:
            return self.sources[name]
        return metal.kernel_spec(name)

    def build(self, spec: dict, inputs, output_dtypes, template=()) -> tuple[Path, str]:
        """Path of the compiled executable for this generated source (cached by hash)."""
        kname, text, params = generated_source(
            **spec, inputs=inputs, output_dtypes=output_dtypes, template=template)
        tdef = ""
        if template:
            tdef = "<" + ", ".join(_template_value(v)[1] for _, v in template) + ">"
        cpp = ('#include "metal_shim.h"\n' + to_cpp(text) + "\n" + _driver(
            kname, tdef, params, len(inputs), len(output_dtypes),
            [TYPE_STRINGS[d] for d, _ in inputs], [TYPE_STRINGS[d] for d in output_dtypes]))
        key = hashlib.sha256("\0".join(
            [cpp, SHIM.read_text(), CXX, *CXXFLAGS]).encode()).hexdigest()[:20]
        out_dir = CACHE / key
        exe = out_dir / "kernel"
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            if not exe.exists():
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "kernel.cpp").write_text(cpp)
                tmp = out_dir / f"kernel.{os.getpid()}.{threading.get_ident()}.tmp"
                r = subprocess.run([CXX, *CXXFLAGS, "-I", str(HERE), "-o", str(tmp),
                                    str(out_dir / "kernel.cpp")], capture_output=True, text=True)
                if r.returncode != 0:
                    raise HarnessError(f"g++ failed for {spec['name']}:\n{r.stderr[-4000:]}")
                os.replace(tmp, exe)
        return exe, kname

    def run(self, spec: dict, inputs, *, grid, threadgroup, output_shapes, output_dtypes,
            template=(), **_) -> list[np.ndarray]:
        """Launch like mx.fast.metal_kernel; `inputs` are numpy arrays (or mx arrays)."""
        arrs = [np.ascontiguousarray(np.array(x)) for x in inputs]
        dtypes = [_mx_dtype(a) for a in arrs]
        exe, _ = self.build(spec, list(zip(dtypes, [a.shape for a in arrs])), output_dtypes,
                            template)
        env = dict(os.environ)
        env.pop("KSSM_HARNESS_JITTER", None)
        if self.jitter is not None:
            env["KSSM_HARNESS_JITTER"] = str(self.jitter)
        with tempfile.TemporaryDirectory(prefix="kssm_run_") as d:
            for i, a in enumerate(arrs):
                a.tofile(os.path.join(d, f"in{i}.bin"))
            argv = [str(exe), d, *map(str, grid), *map(str, threadgroup)]
            argv += [",".join(map(str, a.shape)) if a.ndim else "-" for a in arrs]
            argv += [str(int(np.prod(s))) for s in output_shapes]
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                   env=env)
            except subprocess.TimeoutExpired as e:
                raise HarnessError(f"{spec['name']}: emulated kernel hung (> {self.timeout}s)") \
                    from e
            if r.returncode != 0:
                raise HarnessError(f"{spec['name']}: emulated kernel exited {r.returncode}: "
                                   f"{r.stderr[-2000:]}")
            return [np.fromfile(os.path.join(d, f"out{i}.bin"), NP_TYPES[dt]).reshape(s)
                    for i, (s, dt) in enumerate(zip(output_shapes, output_dtypes))]

    def run_kernel(self, name: str, **call):
        """Drop-in for mlx_kssm.kernels.metal._run_kernel."""
        outs = self.run(self.spec(name), **call)
        return [mx.array(o) for o in outs]


def _mx_dtype(a: np.ndarray):
    for mxd, npd in NP_TYPES.items():
        if a.dtype == npd:
            return mxd
    raise HarnessError(f"the harness runs float32/int32/uint32 buffers, got {a.dtype}")


def prebuild(emulator: Emulator, n: int = 5) -> None:
    """Compile every shipped kernel variant (the generated text does not depend on n, T, ...)."""
    x = reference.random_inputs(2, 3, 4, n)
    dr, di, k, cr, ci, z0r, z0i = x
    calls = [("kssm_scan", metal.scan_call(*x)), ("kssm_scan", metal.scan_call(*x, force_r=0.5)),
             ("kssm_step", metal.step_call(z0r, z0i, dr[:, 0], di[:, 0], k[:, 0], cr[:, 0],
                                           ci[:, 0])),
             ("kssm_step", metal.step_call(z0r, z0i, dr[:, 0], di[:, 0], k[:, 0], cr[:, 0],
                                           ci[:, 0], force_r=0.5)),
             ("kssm_scan_vjp", metal.scan_vjp_call(dr, di, k, z0r, z0i, dr, di, dr, di))]
    errors = []

    def one(name, call):
        try:
            emulator.build(emulator.spec(name), [(a.dtype, a.shape) for a in call["inputs"]],
                           call["output_dtypes"], call.get("template", ()))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
