"""Phase-coupling scan: pure-MLX reference, fused Metal and CUDA kernels, and the switch."""

from .dispatch import KERNEL_MODES, active_impl, get_kernel, oscillator_scan, oscillator_step, set_kernel

__all__ = ["KERNEL_MODES", "active_impl", "get_kernel", "oscillator_scan", "oscillator_step",
           "set_kernel"]
