"""Phase-coupling scan: pure-MLX reference, fused Metal and CUDA kernels, and the switch."""

from .dispatch import (KERNEL_MODES, check_kernel, kernel_of, oscillator_scan, oscillator_step,
                       resolve_kernel, use_kernel)

__all__ = ["KERNEL_MODES", "check_kernel", "kernel_of", "oscillator_scan", "oscillator_step",
           "resolve_kernel", "use_kernel"]
