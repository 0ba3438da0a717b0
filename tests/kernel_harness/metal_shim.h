// C++20 shim that lets a Metal compute kernel, exactly as MLX generates it from the source
// strings in mlx_kssm/kernels/metal.py, compile with g++ and run on the CPU, on top of
// shim_common.h (threads, barriers, lane-group exchange, jitter, I/O):
//
//   * threadgroup_barrier is the block barrier; simd functions (simd_sum, simd_shuffle,
//     simd_broadcast, ...) are lane-group exchanges of the thread's simdgroup
//   * threadgroup memory: the harness turns a kernel-scope `threadgroup T x[..];` declaration
//     into `static T x[..];`
//   * device/constant/thread/threadgroup address spaces are erased, [[attributes]] stripped
//   * metal:: math maps to <cmath>; float2/3/4 and uint2/3 are small structs
//   * run_grid launches like MLX's metal_kernel (dispatchThreads, group = min(threadgroup,
//     grid)) and fills in the Metal thread attributes
#pragma once

#include "shim_common.h"

typedef unsigned int uint;

struct uint2 { uint x = 0, y = 0; };
struct uint3 { uint x = 0, y = 0, z = 0; };

#define KSSM_VEC_OPS(V)                                                                     \
  inline V operator+(V a, const V& b) { a += b; return a; }                               \
  inline V operator-(V a, const V& b) { a -= b; return a; }                               \
  inline V operator*(V a, const V& b) { a *= b; return a; }                               \
  inline V operator*(V a, float s) { a *= V(s); return a; }                               \
  inline V operator*(float s, V a) { a *= V(s); return a; }                               \
  inline V operator/(V a, float s) { a *= V(1.0f / s); return a; }

struct float2 {
  float x = 0, y = 0;
  float2() = default;
  explicit float2(float s) : x(s), y(s) {}
  float2(float a, float b) : x(a), y(b) {}
  float2& operator+=(const float2& o) { x += o.x; y += o.y; return *this; }
  float2& operator-=(const float2& o) { x -= o.x; y -= o.y; return *this; }
  float2& operator*=(const float2& o) { x *= o.x; y *= o.y; return *this; }
};
struct float3 {
  float x = 0, y = 0, z = 0;
  float3() = default;
  explicit float3(float s) : x(s), y(s), z(s) {}
  float3(float a, float b, float c) : x(a), y(b), z(c) {}
  float3& operator+=(const float3& o) { x += o.x; y += o.y; z += o.z; return *this; }
  float3& operator-=(const float3& o) { x -= o.x; y -= o.y; z -= o.z; return *this; }
  float3& operator*=(const float3& o) { x *= o.x; y *= o.y; z *= o.z; return *this; }
};
struct float4 {
  float x = 0, y = 0, z = 0, w = 0;
  float4() = default;
  explicit float4(float s) : x(s), y(s), z(s), w(s) {}
  float4(float a, float b, float c, float d) : x(a), y(b), z(c), w(d) {}
  float4& operator+=(const float4& o) { x += o.x; y += o.y; z += o.z; w += o.w; return *this; }
  float4& operator-=(const float4& o) { x -= o.x; y -= o.y; z -= o.z; w -= o.w; return *this; }
  float4& operator*=(const float4& o) { x *= o.x; y *= o.y; z *= o.z; w *= o.w; return *this; }
};
KSSM_VEC_OPS(float2)
KSSM_VEC_OPS(float3)
KSSM_VEC_OPS(float4)

namespace kssm_shim {

// The Metal attributes MLX can add to a generated kernel signature.
struct Attrs {
  uint dispatch_quadgroups_per_threadgroup, dispatch_simdgroups_per_threadgroup;
  uint3 dispatch_threads_per_threadgroup, grid_origin, grid_size;
  uint quadgroup_index_in_threadgroup, quadgroups_per_threadgroup;
  uint simdgroup_index_in_threadgroup, simdgroups_per_threadgroup, thread_execution_width;
  uint thread_index_in_quadgroup, thread_index_in_simdgroup, thread_index_in_threadgroup;
  uint3 thread_position_in_grid, thread_position_in_threadgroup, threadgroup_position_in_grid;
  uint3 threadgroups_per_grid, threads_per_grid;
  uint threads_per_simdgroup;
  uint3 threads_per_threadgroup;
};

// dispatchThreads(grid, group) with MLX's group = min(threadgroup, grid) per dimension.
template <typename F>
void run_grid(Dim grid, Dim tg, F kernel) {
  uint3 gs{std::min(tg.x, grid.x), std::min(tg.y, grid.y), std::min(tg.z, grid.z)};
  if (grid.x % gs.x || grid.y % gs.y || grid.z % gs.z) {
    std::fprintf(stderr, "shim: non-uniform threadgroups are not emulated\n");
    std::exit(3);
  }
  uint3 ntg{grid.x / gs.x, grid.y / gs.y, grid.z / gs.z};
  const uint size = gs.x * gs.y * gs.z;
  const uint nsimd = (size + kLanes - 1) / kLanes;
  run_blocks(Dim{ntg.x, ntg.y, ntg.z}, Dim{gs.x, gs.y, gs.z}, [&](Dim blk, Dim tp, int lin) {
    Attrs a{};
    a.grid_origin = uint3{0, 0, 0};
    a.grid_size = a.threads_per_grid = uint3{grid.x, grid.y, grid.z};
    a.threads_per_threadgroup = a.dispatch_threads_per_threadgroup = gs;
    a.threadgroups_per_grid = ntg;
    a.threadgroup_position_in_grid = uint3{blk.x, blk.y, blk.z};
    a.thread_position_in_threadgroup = uint3{tp.x, tp.y, tp.z};
    a.thread_position_in_grid =
        uint3{blk.x * gs.x + tp.x, blk.y * gs.y + tp.y, blk.z * gs.z + tp.z};
    a.thread_index_in_threadgroup = lin;
    a.thread_execution_width = a.threads_per_simdgroup = kLanes;
    a.simdgroup_index_in_threadgroup = lin / kLanes;
    a.thread_index_in_simdgroup = lin % kLanes;
    a.simdgroups_per_threadgroup = a.dispatch_simdgroups_per_threadgroup = nsimd;
    a.quadgroup_index_in_threadgroup = lin / 4;
    a.thread_index_in_quadgroup = lin % 4;
    a.quadgroups_per_threadgroup = a.dispatch_quadgroups_per_threadgroup = (size + 3) / 4;
    kernel(a);
  });
}

}  // namespace kssm_shim

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags) { kssm_shim::block_barrier(); }
inline void simdgroup_barrier(mem_flags) { kssm_shim::lane_barrier(); }

template <typename V> V simd_sum(V v) {
  return kssm_shim::exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s += slot(l);
    return s;
  });
}
template <typename V> V simd_max(V v) {
  return kssm_shim::exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s = std::max(s, slot(l));
    return s;
  });
}
template <typename V> V simd_min(V v) {
  return kssm_shim::exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s = std::min(s, slot(l));
    return s;
  });
}
// Reading an inactive lane is undefined on the GPU; the shim returns the caller's own value.
template <typename V> V simd_shuffle(V v, uint lane) {
  return kssm_shim::exchange(v, [lane, v](auto slot, int n) {
    return int(lane) < n ? slot(int(lane)) : v;
  });
}
template <typename V> V simd_broadcast(V v, uint lane) { return simd_shuffle(v, lane); }
template <typename V> V simd_broadcast_first(V v) { return simd_shuffle(v, 0u); }
template <typename V> V simd_shuffle_xor(V v, uint mask) {
  return simd_shuffle(v, uint(kssm_shim::ctx.lane) ^ mask);
}
template <typename V> V simd_shuffle_down(V v, uint delta) {
  int src = kssm_shim::ctx.lane + int(delta);
  return kssm_shim::exchange(v, [src, v](auto slot, int n) { return src < n ? slot(src) : v; });
}
template <typename V> V simd_shuffle_up(V v, uint delta) {
  int src = kssm_shim::ctx.lane - int(delta);
  return kssm_shim::exchange(v, [src, v](auto slot, int) { return src >= 0 ? slot(src) : v; });
}

using std::abs; using std::ceil; using std::cos; using std::exp; using std::exp2;
using std::fabs; using std::floor; using std::fma; using std::log; using std::log2;
using std::pow; using std::round; using std::sin; using std::sqrt; using std::tanh;
using std::isfinite; using std::isnan; using std::isinf;
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float fmax(float a, float b) { return std::fmax(a, b); }
inline float fmin(float a, float b) { return std::fmin(a, b); }
template <typename T> T max(T a, T b) { return std::max(a, b); }
template <typename T> T min(T a, T b) { return std::min(a, b); }
template <typename T> T clamp(T x, T lo, T hi) { return std::min(std::max(x, lo), hi); }
template <typename T> T select(T a, T b, bool c) { return c ? b : a; }
namespace precise { using metal::sqrt; using metal::rsqrt; using metal::exp; using metal::log; }
namespace fast { using metal::sqrt; using metal::rsqrt; using metal::exp; using metal::log; }

}  // namespace metal

// From here on the source is Metal: erase the address spaces. (Only after every standard
// header: `thread` and `device` are ordinary identifiers in C++.)
#define device
#define constant
#define thread
#define threadgroup
