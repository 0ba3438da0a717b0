// Stand-in for MLX's device utils.cuh in the NVRTC compile check (tests/kernel_harness/nvrtc.py).
// MLX embeds its device headers in libmlx.so (mlx-cuda-12/13) and hands them to NVRTC in
// memory; they are not shipped as files. This stand-in has the same includes (NVIDIA's real
// headers, from the nvidia-cuda-runtime and nvidia-cuda-cccl wheels), the macros of MLX's
// config.h, and the Shape / Strides types the generated kernel signature uses. Set
// KSSM_MLX_CUDA_INCLUDE to a folder holding MLX's own mlx/backend/cuda/device/*.cuh to compile
// against those instead.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda/std/array>
#include <cuda/std/complex>
#include <cuda/std/cstdint>
#include <cuda/std/limits>
#include <cuda/std/tuple>

#define MAX_NDIM 10
#define WARP_SIZE 32

namespace mlx::core::cu {

using Shape = cuda::std::array<int32_t, MAX_NDIM>;
using Strides = cuda::std::array<int64_t, MAX_NDIM>;

}  // namespace mlx::core::cu
