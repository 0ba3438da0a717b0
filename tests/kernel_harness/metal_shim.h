// C++20 shim that lets a Metal compute kernel, exactly as MLX generates it from the source
// strings in mlx_kssm/kernels/metal.py, compile with g++ and run on the CPU.
//
//   * every thread of a threadgroup is a std::thread; the threads of one threadgroup run
//     concurrently (threadgroups one after another)
//   * threadgroup_barrier is a std::barrier across the threadgroup's threads
//   * simd functions (simd_sum, simd_shuffle, simd_broadcast, ...) exchange values through a
//     per-simdgroup slot array between two barriers of that simdgroup only (32 lanes, the last
//     simdgroup partial when the threadgroup size is not a multiple of 32: its inactive lanes
//     take no part, as on the GPU); a simd function never synchronizes other simdgroups
//   * threadgroup memory: the harness turns a kernel-scope `threadgroup T x[..];` declaration
//     into `static T x[..];`, shared by the threads of the (single) running threadgroup
//   * device/constant/thread/threadgroup address spaces are erased, [[attributes]] stripped
//   * metal:: math maps to <cmath>; float2/3/4 and uint2/3 are small structs
//   * outputs start as NaN (MLX does not initialize outputs), so unwritten elements show
//   * KSSM_HARNESS_JITTER=<seed> makes threads sleep at random before simd ops and barriers
//     (exposes missing barriers, whose races otherwise depend on the OS scheduler)
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

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

constexpr int kSimdWidth = 32;

struct SimdGroup {
  explicit SimdGroup(int active_lanes) : active(active_lanes), bar(active_lanes) {}
  int active;
  std::barrier<> bar;
  alignas(64) unsigned char slots[kSimdWidth][64];
};

struct Ctx {
  int lane = 0;
  SimdGroup* sg = nullptr;
  std::barrier<>* tg_bar = nullptr;
  std::mt19937* rng = nullptr;
};

inline thread_local Ctx ctx;
inline int jitter_seed() {
  static int seed = [] {
    const char* s = std::getenv("KSSM_HARNESS_JITTER");
    return (s && *s) ? std::atoi(s) + 1 : 0;
  }();
  return seed;
}
inline void jitter() {
  if (ctx.rng && ((*ctx.rng)() % 4 == 0)) {
    std::this_thread::sleep_for(std::chrono::microseconds((*ctx.rng)() % 200));
  }
}

// Publish v in this lane's slot; fn reads the slots of the active lanes; then a second
// barrier so the slots may be reused by the next simd op.
template <typename V, typename F>
V simd_exchange(V v, F fn) {
  static_assert(sizeof(V) <= 64, "simd value too large for the shim");
  jitter();
  std::memcpy(ctx.sg->slots[ctx.lane], &v, sizeof(V));
  ctx.sg->bar.arrive_and_wait();
  V out = fn([](int lane) { V x; std::memcpy(&x, ctx.sg->slots[lane], sizeof(V)); return x; },
             ctx.sg->active);
  ctx.sg->bar.arrive_and_wait();
  return out;
}

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
void run_grid(uint3 grid, uint3 tg, F kernel) {
  uint3 gs{std::min(tg.x, grid.x), std::min(tg.y, grid.y), std::min(tg.z, grid.z)};
  if (grid.x % gs.x || grid.y % gs.y || grid.z % gs.z) {
    std::fprintf(stderr, "shim: non-uniform threadgroups are not emulated\n");
    std::exit(3);
  }
  uint3 ntg{grid.x / gs.x, grid.y / gs.y, grid.z / gs.z};
  const int size = gs.x * gs.y * gs.z;
  const int nsimd = (size + kSimdWidth - 1) / kSimdWidth;
  const int seed = jitter_seed();
  for (uint gz = 0; gz < ntg.z; ++gz)
    for (uint gy = 0; gy < ntg.y; ++gy)
      for (uint gx = 0; gx < ntg.x; ++gx) {
        std::barrier<> tg_bar(size);
        std::vector<std::unique_ptr<SimdGroup>> sgs;
        for (int s = 0; s < nsimd; ++s)
          sgs.emplace_back(new SimdGroup(std::min(kSimdWidth, size - s * kSimdWidth)));
        std::vector<std::thread> threads;
        threads.reserve(size);
        for (int lin = 0; lin < size; ++lin) {
          threads.emplace_back([&, lin] {
            uint3 tp{lin % gs.x, (lin / gs.x) % gs.y, lin / (gs.x * gs.y)};
            std::mt19937 rng(seed * 7919 + lin + 131 * (gx + ntg.x * (gy + ntg.y * gz)));
            ctx.lane = lin % kSimdWidth;
            ctx.sg = sgs[lin / kSimdWidth].get();
            ctx.tg_bar = &tg_bar;
            ctx.rng = seed ? &rng : nullptr;
            Attrs a{};
            a.grid_origin = uint3{0, 0, 0};
            a.grid_size = a.threads_per_grid = grid;
            a.threads_per_threadgroup = a.dispatch_threads_per_threadgroup = gs;
            a.threadgroups_per_grid = ntg;
            a.threadgroup_position_in_grid = uint3{gx, gy, gz};
            a.thread_position_in_threadgroup = tp;
            a.thread_position_in_grid =
                uint3{gx * gs.x + tp.x, gy * gs.y + tp.y, gz * gs.z + tp.z};
            a.thread_index_in_threadgroup = lin;
            a.thread_execution_width = a.threads_per_simdgroup = kSimdWidth;
            a.simdgroup_index_in_threadgroup = lin / kSimdWidth;
            a.thread_index_in_simdgroup = lin % kSimdWidth;
            a.simdgroups_per_threadgroup = a.dispatch_simdgroups_per_threadgroup = nsimd;
            a.quadgroup_index_in_threadgroup = lin / 4;
            a.thread_index_in_quadgroup = lin % 4;
            a.quadgroups_per_threadgroup = a.dispatch_quadgroups_per_threadgroup = (size + 3) / 4;
            kernel(a);
            // a finished thread no longer takes part in barriers (no deadlock on early return)
            ctx.sg->bar.arrive_and_drop();
            tg_bar.arrive_and_drop();
          });
        }
        for (auto& t : threads) t.join();
      }
}

// I/O of the generated driver: argv = dir gx gy gz tx ty tz, then for each input its shape
// "d0,d1,..." ("-" for 0-d), then for each output its element count. Buffers are raw files
// in0.bin.. / out0.bin.. in dir.
struct Io {
  std::string dir;
  uint3 grid, tg;
  std::vector<std::vector<int>> shapes;
  std::vector<size_t> out_counts;
  Io(int argc, char** argv, int n_in, int n_out) {
    if (argc != 8 + n_in + n_out) {
      std::fprintf(stderr, "shim: expected %d arguments\n", 7 + n_in + n_out);
      std::exit(2);
    }
    dir = argv[1];
    grid = uint3{uint(std::atoi(argv[2])), uint(std::atoi(argv[3])), uint(std::atoi(argv[4]))};
    tg = uint3{uint(std::atoi(argv[5])), uint(std::atoi(argv[6])), uint(std::atoi(argv[7]))};
    for (int i = 0; i < n_in; ++i) {
      std::vector<int> s;
      std::string a = argv[8 + i];
      if (a != "-") {
        size_t p = 0;
        while (p <= a.size()) {
          size_t q = a.find(',', p);
          if (q == std::string::npos) q = a.size();
          s.push_back(std::atoi(a.substr(p, q - p).c_str()));
          p = q + 1;
        }
      }
      shapes.push_back(s);
    }
    for (int i = 0; i < n_out; ++i) out_counts.push_back(std::strtoull(argv[8 + n_in + i], nullptr, 10));
  }
  std::vector<int> shape(int i) const { return shapes[i]; }
  std::vector<int64_t> strides(int i) const {  // row contiguous (ensure_row_contiguous)
    std::vector<int64_t> st(shapes[i].size());
    int64_t acc = 1;
    for (int d = int(st.size()) - 1; d >= 0; --d) { st[d] = acc; acc *= shapes[i][d]; }
    return st;
  }
  int ndim(int i) const { return int(shapes[i].size()); }
  template <typename T>
  std::vector<T> input(int i) const {
    size_t count = 1;
    for (int d : shapes[i]) count *= d;
    std::vector<T> v(count);
    std::ifstream f(dir + "/in" + std::to_string(i) + ".bin", std::ios::binary);
    f.read(reinterpret_cast<char*>(v.data()), count * sizeof(T));
    if (size_t(f.gcount()) != count * sizeof(T)) { std::fprintf(stderr, "shim: short input %d\n", i); std::exit(2); }
    return v;
  }
  template <typename T>
  std::vector<T> output(int i) const {
    T fill = std::numeric_limits<T>::has_quiet_NaN ? std::numeric_limits<T>::quiet_NaN()
                                                   : std::numeric_limits<T>::max();
    return std::vector<T>(out_counts[i], fill);
  }
  template <typename T>
  void save(int i, const std::vector<T>& v) const {
    std::ofstream f(dir + "/out" + std::to_string(i) + ".bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
};

}  // namespace kssm_shim

namespace metal {

enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }

inline void threadgroup_barrier(mem_flags) {
  kssm_shim::jitter();
  kssm_shim::ctx.tg_bar->arrive_and_wait();
}
inline void simdgroup_barrier(mem_flags) {
  kssm_shim::jitter();
  kssm_shim::ctx.sg->bar.arrive_and_wait();
}

template <typename V> V simd_sum(V v) {
  return kssm_shim::simd_exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s += slot(l);
    return s;
  });
}
template <typename V> V simd_max(V v) {
  return kssm_shim::simd_exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s = std::max(s, slot(l));
    return s;
  });
}
template <typename V> V simd_min(V v) {
  return kssm_shim::simd_exchange(v, [](auto slot, int n) {
    V s = slot(0);
    for (int l = 1; l < n; ++l) s = std::min(s, slot(l));
    return s;
  });
}
// Reading an inactive lane is undefined on the GPU; the shim returns the caller's own value.
template <typename V> V simd_shuffle(V v, uint lane) {
  return kssm_shim::simd_exchange(v, [lane, v](auto slot, int n) {
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
  return kssm_shim::simd_exchange(v, [src, v](auto slot, int n) { return src < n ? slot(src) : v; });
}
template <typename V> V simd_shuffle_up(V v, uint delta) {
  int src = kssm_shim::ctx.lane - int(delta);
  return kssm_shim::simd_exchange(v, [src, v](auto slot, int) { return src >= 0 ? slot(src) : v; });
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
