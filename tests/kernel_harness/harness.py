"""Run the package's GPU kernel source on the CPU, Metal and CUDA alike: generate the kernel text
exactly as MLX would, compile it as C++20 against the backend's shim, run every block's threads
concurrently.

    metal_source / cuda_source  what mx.fast.metal_kernel / mx.fast.cuda_kernel generate from
                                a kernel_spec, and how the driver passes arguments and launches
    Emulator(backend)           compiles that text with a generated `main` (cached by hash in a
                                temp dir) and runs it; `run_kernel` has the signature of the
                                backend module's `_run_kernel`, so tests swap it in and the
                                package's own scan/step/VJP code (kernels/fused.py) runs on the
                                emulated kernels
    prebuild(emulator)          compiles every shipped variant at once (in parallel)

The shared launch loop, barriers, lane-group exchange, NaN-poisoned outputs and jitter are in
shim_common.h; metal_shim.h and cuda_shim.h map each language onto it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import mlx_kssm  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import numpy as np

import cuda_source
import metal_source
from harness_types import NP_TYPES, TYPE_STRINGS

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++20", "-O1", "-pthread", "-Wno-attributes"]
CACHE = Path(tempfile.gettempdir()) / "mlx_kssm_kernel_harness"
BACKENDS = {"metal": metal_source, "cuda": cuda_source}


class HarnessError(RuntimeError):
    """The emulated kernel did not compile, crashed, hung or broke a GPU rule."""


def translation_unit(backend, spec: dict, inputs, output_dtypes, template=()) -> str:
    """The C++ file g++ compiles: shim prelude, the generated kernel text, a driver `main`."""
    kname, text, params = backend.generated_source(
        **spec, inputs=inputs, output_dtypes=output_dtypes, template=template)
    return backend.PRELUDE + backend.to_cpp(text) + "\n" + _driver(
        backend, kname, template, params, [TYPE_STRINGS[d] for d, _ in inputs],
        [TYPE_STRINGS[d] for d in output_dtypes])


def _driver(backend, kernel_name, template, params, in_types, out_types) -> str:
    lines = ["int main(int argc, char** argv) {",
             f"  kssm_shim::Io io(argc, argv, {len(in_types)}, {len(out_types)});"]
    for i, t in enumerate(in_types):
        lines.append(f"  auto in{i} = io.input<{t}>({i});")
        lines.append(f"  auto in{i}_shape = io.shape({i});")
        lines.append(f"  auto in{i}_strides = io.strides({i});")
        lines.append(f"  int in{i}_ndim = io.ndim({i});")
    for i, t in enumerate(out_types):
        lines.append(f"  auto out{i} = io.output<{t}>({i});")
    args = [backend.arg_expr(kind, i, nm) for kind, i, nm in params]
    lines.append(backend.launch(kernel_name, template, args))
    for i in range(len(out_types)):
        lines.append(f"  io.save({i}, out{i});")
    lines.append("  return 0;\n}")
    return "\n".join(lines) + "\n"


class Emulator:
    """Compile (once per distinct generated source) and run one backend's kernels on the CPU."""

    def __init__(self, backend: str = "metal", jitter: int | None = None, timeout: float = 300.0,
                 sources=None):
        self.backend = BACKENDS[backend]
        self.module = self.backend.MODULE
        self.jitter = jitter
        self.timeout = timeout
        self.sources = sources  # optional override: name -> kernel_spec dict
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def spec(self, name: str) -> dict:
        if self.sources and name in self.sources:
            return self.sources[name]
        return self.module.kernel_spec(name)

    def build(self, spec: dict, inputs, output_dtypes, template=()) -> Path:
        """Path of the compiled executable for this generated source (cached by hash)."""
        cpp = translation_unit(self.backend, spec, inputs, output_dtypes, template)
        shims = [(HERE / s).read_text() for s in self.backend.SHIMS]
        key = hashlib.sha256("\0".join([cpp, *shims, CXX, *CXXFLAGS]).encode()).hexdigest()[:20]
        out_dir = CACHE / key
        exe = out_dir / "kernel"
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            if not exe.exists():
                self._compile(cpp, out_dir, exe, spec["name"])
        return exe

    def _compile(self, cpp: str, out_dir: Path, exe: Path, name: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "kernel.cpp").write_text(cpp)
        tmp = out_dir / f"kernel.{os.getpid()}.{threading.get_ident()}.tmp"
        includes = [f"-I{HERE}", *(f"-I{HERE / d}" for d in self.backend.INCLUDE_DIRS)]
        r = subprocess.run([CXX, *CXXFLAGS, *includes, "-o", str(tmp), str(out_dir / "kernel.cpp")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise HarnessError(f"g++ failed for {name}:\n{r.stderr[-4000:]}")
        os.replace(tmp, exe)

    def run(self, spec: dict, inputs, *, grid, threadgroup, output_shapes, output_dtypes,
            template=(), **_) -> list[np.ndarray]:
        """Launch like mx.fast.*_kernel; `inputs` are numpy arrays (or mx arrays)."""
        arrs = [np.ascontiguousarray(np.array(x)) for x in inputs]
        exe = self.build(spec, [(_mx_dtype(a), a.shape) for a in arrs], output_dtypes, template)
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
            self._execute(argv, env, spec["name"])
            return [np.fromfile(os.path.join(d, f"out{i}.bin"), NP_TYPES[dt]).reshape(s)
                    for i, (s, dt) in enumerate(zip(output_shapes, output_dtypes))]

    def _execute(self, argv, env, name: str) -> None:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"{name}: emulated kernel hung (> {self.timeout}s)") from e
        if r.returncode != 0:
            raise HarnessError(f"{name}: emulated kernel exited {r.returncode}: "
                               f"{r.stderr[-2000:]}")

    def run_kernel(self, name: str, **call):
        """Drop-in for the backend module's `_run_kernel`."""
        outs = self.run(self.spec(name), **call)
        return [mx.array(o) for o in outs]


def _mx_dtype(a: np.ndarray):
    for mxd, npd in NP_TYPES.items():
        if a.dtype == npd:
            return mxd
    raise HarnessError(f"the harness runs float32/int32/uint32 buffers, got {a.dtype}")


def prebuild(emulator: Emulator) -> None:
    """Compile every shipped kernel variant (the generated text does not depend on n, T, ...)."""
    errors = []

    def one(name, call):
        try:
            emulator.build(emulator.spec(name), [(a.dtype, a.shape) for a in call["inputs"]],
                           call["output_dtypes"], call.get("template", ()))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=c) for c in emulator.module.example_calls()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
