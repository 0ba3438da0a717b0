// C++20 shim that lets a CUDA kernel, exactly as MLX generates it from the source strings in
// mlx_kssm/kernels/cuda.py, compile with g++ and run on the CPU, on top of shim_common.h
// (threads, barriers, lane-group exchange, jitter, I/O). The generated text is compiled
// unchanged: its includes resolve to cpu_include/ (MLX's device utils.cuh -> this file,
// <cooperative_groups.h> -> an empty namespace), and the CUDA keywords are macros:
//
//   * threadIdx / blockIdx / blockDim / gridDim are thread-local per emulated thread
//   * __syncthreads() is the block barrier, __syncwarp(mask) the warp's barrier
//   * __shfl_sync / __shfl_xor_sync / __shfl_up_sync / __shfl_down_sync, __ballot_sync,
//     __any_sync, __all_sync are exchanges within the thread's warp (32 lanes by linear thread
//     index). Their mask must name exactly the lanes that exist in that warp: a mask naming a
//     missing lane (a partial warp under 0xffffffff) is undefined behaviour on the GPU and
//     stops the emulated launch with an error; masks over a subset of a warp are not emulated
//   * __shared__ declarations become `static` (one block runs at a time); __global__,
//     __device__, __host__, __forceinline__, __grid_constant__, __restrict__ vanish
//   * float2/float4 (+ make_float2/4), sqrtf & co. from <cmath>; Shape / Strides as in MLX
//     (arrays of MAX_NDIM = 10 int32 / int64 in namespace mlx::core::cu)
//   * launch() maps MLX's (grid in threads, threadgroup) to CUDA as custom_kernel.cpp does:
//     block = min(threadgroup, grid), ceil(grid / threadgroup) blocks per dimension
#pragma once

#include <array>

#include "shim_common.h"

#define MAX_NDIM 10
#define WARP_SIZE 32

struct uint3 { unsigned x = 0, y = 0, z = 0; };
using dim3 = uint3;

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

inline thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __grid_constant__
#define __restrict__
#define __shared__ static

namespace cuda::std {
using ::std::numeric_limits;  // for MLX's `#define inf cuda::std::numeric_limits<float>::...`
}

namespace mlx::core::cu {
using Shape = std::array<int32_t, MAX_NDIM>;
using Strides = std::array<int64_t, MAX_NDIM>;
}  // namespace mlx::core::cu

namespace kssm_shim {

// Lanes that exist in the calling thread's warp, as a mask.
inline unsigned warp_lanes() {
  const int n = ctx.lanes->active;
  return n >= kLanes ? 0xffffffffu : ((1u << n) - 1u);
}

inline void check_mask(unsigned mask, const char* what) {
  const unsigned lanes = warp_lanes();
  if (mask & ~lanes) {
    fail("%s with mask 0x%08x names lanes missing from this warp (existing: 0x%08x): "
         "undefined behaviour on the GPU", what, mask, lanes);
  }
  if (mask != lanes) {
    fail("%s with mask 0x%08x over part of the warp (0x%08x) is not emulated", what, mask, lanes);
  }
}

// Value of `var` at lane `src` (a lane index within the warp); out-of-segment reads return the
// caller's own value, as CUDA's shuffles do.
template <typename T>
T shuffle_from(unsigned mask, T var, int src, bool own, const char* what) {
  check_mask(mask, what);
  return exchange(var, [src, own, var](auto slot, int) { return own ? var : slot(src); });
}

// A Shape / Strides argument from a shape or stride vector (MLX fills the first ndim entries).
template <typename A, typename V>
A padded(const V& v) {
  A a{};
  for (size_t i = 0; i < v.size() && i < a.size(); ++i) a[i] = v[i];
  return a;
}

// A launch as mx.fast.cuda_kernel makes it (custom_kernel.cpp, CustomKernel::eval_gpu).
template <typename F>
void launch(Dim grid, Dim tg, F kernel) {
  Dim block{std::min(tg.x, grid.x), std::min(tg.y, grid.y), std::min(tg.z, grid.z)};
  Dim blocks{(grid.x + tg.x - 1) / tg.x, (grid.y + tg.y - 1) / tg.y, (grid.z + tg.z - 1) / tg.z};
  run_blocks(blocks, block, [&](Dim blk, Dim tp, int) {
    threadIdx = uint3{tp.x, tp.y, tp.z};
    blockIdx = uint3{blk.x, blk.y, blk.z};
    blockDim = uint3{block.x, block.y, block.z};
    gridDim = uint3{blocks.x, blocks.y, blocks.z};
    kernel();
  });
}

}  // namespace kssm_shim

inline void __syncthreads() { kssm_shim::block_barrier(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  kssm_shim::check_mask(mask, "__syncwarp");
  kssm_shim::lane_barrier();
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  const int lane = kssm_shim::ctx.lane;
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  return kssm_shim::shuffle_from(mask, var, src, false, "__shfl_sync");
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  const int lane = kssm_shim::ctx.lane;
  const int src = lane ^ lane_mask;
  // reading a later segment of `width` lanes returns the caller's own value
  const bool own = src >= (lane & ~(width - 1)) + width;
  return kssm_shim::shuffle_from(mask, var, src, own, "__shfl_xor_sync");
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = kssm_shim::ctx.lane;
  const int src = lane + int(delta);
  const bool own = src >= (lane & ~(width - 1)) + width;
  return kssm_shim::shuffle_from(mask, var, src, own, "__shfl_down_sync");
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  const int lane = kssm_shim::ctx.lane;
  const int src = lane - int(delta);
  const bool own = src < (lane & ~(width - 1));
  return kssm_shim::shuffle_from(mask, var, src, own, "__shfl_up_sync");
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  kssm_shim::check_mask(mask, "__ballot_sync");
  return kssm_shim::exchange(predicate, [](auto slot, int n) {
    unsigned bits = 0;
    for (int l = 0; l < n; ++l) bits |= (slot(l) ? 1u : 0u) << l;
    return bits;
  });
}

inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }

inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == kssm_shim::warp_lanes();
}

using std::sqrt;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
