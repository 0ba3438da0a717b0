"""Compile generated CUDA kernel text with NVRTC through ctypes: compiling needs no GPU.

NVRTC and NVIDIA's headers come from the `cuda-check` extra (pyproject.toml), all installed
under site-packages/nvidia/cu13/: nvidia-cuda-nvrtc (lib/libnvrtc.so.13), nvidia-cuda-runtime
(the CUDA headers: <cooperative_groups.h>, cuda_fp16.h, ...) and nvidia-cuda-cccl (libcu++,
include/cccl/cuda/std/...). NVRTC has no headers of its own, and the text MLX generates includes
these.

The compile follows MLX 0.32.4 (mlx/backend/cuda/jit_module.cpp; the option strings are
literals in libmlx.so of mlx-cuda-13 0.32.4): nvrtcCreateProgram with MLX's device headers
passed in memory under their include names, nvrtcAddNameExpression for
`mlx::core::cu::<kernel>`, options --gpu-architecture=sm_XY, --device-as-default-execution-space
and --include-path for CCCL and the CUDA headers, then the lowered name and the cubin. MLX's
device headers are embedded in libmlx.so, not shipped as files: nvrtc_include/ holds a stand-in
(same includes, Shape / Strides, config macros); KSSM_MLX_CUDA_INCLUDE=<dir> with MLX's own
mlx/backend/cuda/device/*.cuh under it compiles against those instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEVICE_HEADERS = "mlx/backend/cuda/device"
CACHE = Path(tempfile.gettempdir()) / "mlx_kssm_kernel_harness" / "nvrtc_ok"


def cuda13_root() -> Path | None:
    """site-packages/nvidia/cu13 when the cuda-check extra is installed, else None."""
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        root = Path(base) / "cu13"
        if (root / "lib" / "libnvrtc.so.13").exists() and (root / "include" / "cccl").exists():
            return root
    return None


def mlx_device_headers() -> dict[str, str]:
    """Include name -> text of the headers MLX hands NVRTC in memory."""
    folder = Path(os.environ.get("KSSM_MLX_CUDA_INCLUDE") or HERE / "nvrtc_include")
    files = sorted((folder / DEVICE_HEADERS).glob("*.cuh")) + \
        sorted((folder / DEVICE_HEADERS).glob("*.h"))
    return {f"{DEVICE_HEADERS}/{f.name}": f.read_text() for f in files}


class Nvrtc:
    """libnvrtc of the cuda-check extra, called through ctypes."""

    def __init__(self, root: Path):
        self.root = root
        self.lib = ctypes.CDLL(str(root / "lib" / "libnvrtc.so.13"))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = (major.value, minor.value)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"nvrtc {what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def options(self, arch: str) -> list[str]:
        include = self.root / "include"
        return [f"--gpu-architecture={arch}", "--device-as-default-execution-space",
                f"--include-path={include / 'cccl'}", f"--include-path={include}"]

    def compile(self, text: str, kernel_name: str, arch: str) -> tuple[bool, str]:
        """Compile `text` as MLX would for `arch` (e.g. sm_90). Returns (ok, log); ok also
        needs the kernel `mlx::core::cu::<kernel_name>` to exist and a non-empty cubin.
        A clean success is remembered (by hash of everything that goes in) in a temp folder."""
        headers = mlx_device_headers()
        key = hashlib.sha256("\0".join([text, kernel_name, *self.options(arch), str(self.version),
                                        *headers, *headers.values()]).encode()).hexdigest()[:24]
        if (CACHE / key).exists():
            return True, ""
        ok, log = self._compile(text, kernel_name, arch, headers)
        if ok and not log:
            CACHE.mkdir(parents=True, exist_ok=True)
            (CACHE / key).touch()
        return ok, log

    def _compile(self, text, kernel_name, arch, headers) -> tuple[bool, str]:
        prog = ctypes.c_void_p()
        names = [n.encode() for n in headers]
        texts = [t.encode() for t in headers.values()]
        self._check(self.lib.nvrtcCreateProgram(
            ctypes.byref(prog), text.encode(), f"{kernel_name}.cu".encode(), len(names),
            (ctypes.c_char_p * len(texts))(*texts), (ctypes.c_char_p * len(names))(*names)),
            "create")
        try:
            expression = f"mlx::core::cu::{kernel_name}".encode()
            self._check(self.lib.nvrtcAddNameExpression(prog, expression), "name")
            opts = [o.encode() for o in self.options(arch)]
            status = self.lib.nvrtcCompileProgram(prog, len(opts),
                                                  (ctypes.c_char_p * len(opts))(*opts))
            log = self._log(prog)
            if status != 0:
                return False, log
            lowered = ctypes.c_char_p()
            if self.lib.nvrtcGetLoweredName(prog, expression, ctypes.byref(lowered)) != 0:
                return False, log + f"\nno kernel named {expression.decode()}"
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
            return size.value > 0, log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def _log(self, prog) -> str:
        size = ctypes.c_size_t()
        self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        buf = ctypes.create_string_buffer(size.value)
        self._check(self.lib.nvrtcGetProgramLog(prog, buf), "log")
        return buf.value.decode(errors="replace")
