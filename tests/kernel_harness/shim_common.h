// What the Metal and CUDA shims share (metal_shim.h, cuda_shim.h): run a GPU kernel, exactly as
// MLX generates it from the source strings in mlx_kssm/kernels/, on the CPU.
//
//   * every thread of a block (Metal: threadgroup) is a std::thread; the threads of one block
//     run concurrently, blocks one after another
//   * the block barrier (threadgroup_barrier / __syncthreads) is a std::barrier over the block
//   * lane groups of 32 (Metal simdgroup / CUDA warp) exchange values through a slot array
//     between barriers of that lane group only; the last group is partial when the block size
//     is not a multiple of 32 (its missing lanes take no part); a lane-group operation never
//     synchronizes other lane groups
//   * block-shared memory: a kernel-scope declaration becomes `static`, shared by the threads
//     of the (single) running block
//   * outputs start as NaN (MLX does not initialize outputs), so unwritten elements show
//   * KSSM_HARNESS_JITTER=<seed> makes threads sleep at random before lane-group operations
//     and barriers (exposes missing barriers, whose races otherwise depend on the scheduler)
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdarg>
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

namespace kssm_shim {

constexpr int kLanes = 32;  // Apple simdgroup and NVIDIA warp alike

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};

struct LaneGroup {
  explicit LaneGroup(int active_lanes) : active(active_lanes), bar(active_lanes) {}
  int active;  // lanes that exist (the last group of a block may be partial)
  std::barrier<> bar;
  // two slot sets used in turn: lanes publish in one while others may still read the other
  alignas(64) unsigned char slots[2][kLanes][64];
  int parity[kLanes] = {};
};

struct Ctx {
  int lane = 0;
  LaneGroup* lanes = nullptr;
  std::barrier<>* block_bar = nullptr;
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

// A kernel broke a rule the GPU would not forgive (e.g. a shuffle naming a lane that does not
// exist): report it and stop the whole emulated launch.
[[noreturn]] inline void fail(const char* fmt, ...) {
  std::va_list args;
  va_start(args, fmt);
  std::fprintf(stderr, "shim: ");
  std::vfprintf(stderr, fmt, args);
  std::fprintf(stderr, "\n");
  va_end(args);
  std::fflush(stderr);
  std::_Exit(4);
}

// Publish v in this lane's slot, wait for the lane group, then fn reads the slots of the
// existing lanes. One barrier per exchange: the slot set alternates, and a lane can only
// rewrite a set after every lane has passed the next exchange's barrier, hence read this one.
template <typename V, typename F>
auto exchange(V v, F fn) {
  static_assert(sizeof(V) <= 64, "lane value too large for the shim");
  jitter();
  LaneGroup* g = ctx.lanes;
  const int p = g->parity[ctx.lane];
  g->parity[ctx.lane] ^= 1;
  std::memcpy(g->slots[p][ctx.lane], &v, sizeof(V));
  g->bar.arrive_and_wait();
  return fn([g, p](int lane) { V x; std::memcpy(&x, g->slots[p][lane], sizeof(V)); return x; },
            g->active);
}

inline void block_barrier() {
  jitter();
  ctx.block_bar->arrive_and_wait();
}

inline void lane_barrier() {
  jitter();
  ctx.lanes->bar.arrive_and_wait();
}

// Run `nblocks` blocks of `bdim` threads; body(block index, thread index, linear thread index)
// runs on each thread after its context is set.
template <typename F>
void run_blocks(Dim nblocks, Dim bdim, F body) {
  const int size = bdim.x * bdim.y * bdim.z;
  const int ngroups = (size + kLanes - 1) / kLanes;
  const int seed = jitter_seed();
  for (unsigned bz = 0; bz < nblocks.z; ++bz)
    for (unsigned by = 0; by < nblocks.y; ++by)
      for (unsigned bx = 0; bx < nblocks.x; ++bx) {
        std::barrier<> block_bar(size);
        std::vector<std::unique_ptr<LaneGroup>> groups;
        for (int s = 0; s < ngroups; ++s)
          groups.emplace_back(new LaneGroup(std::min(kLanes, size - s * kLanes)));
        std::vector<std::thread> threads;
        threads.reserve(size);
        for (int lin = 0; lin < size; ++lin) {
          threads.emplace_back([&, lin] {
            Dim tp{lin % bdim.x, (lin / bdim.x) % bdim.y, lin / (bdim.x * bdim.y)};
            std::mt19937 rng(seed * 7919 + lin + 131 * (bx + nblocks.x * (by + nblocks.y * bz)));
            ctx.lane = lin % kLanes;
            ctx.lanes = groups[lin / kLanes].get();
            ctx.block_bar = &block_bar;
            ctx.rng = seed ? &rng : nullptr;
            body(Dim{bx, by, bz}, tp, lin);
            // a finished thread no longer takes part in barriers (no deadlock on early return)
            ctx.lanes->bar.arrive_and_drop();
            block_bar.arrive_and_drop();
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
  Dim grid, tg;
  std::vector<std::vector<int>> shapes;
  std::vector<size_t> out_counts;
  Io(int argc, char** argv, int n_in, int n_out) {
    if (argc != 8 + n_in + n_out) {
      std::fprintf(stderr, "shim: expected %d arguments\n", 7 + n_in + n_out);
      std::exit(2);
    }
    dir = argv[1];
    grid = Dim{unsigned(std::atoi(argv[2])), unsigned(std::atoi(argv[3])),
               unsigned(std::atoi(argv[4]))};
    tg = Dim{unsigned(std::atoi(argv[5])), unsigned(std::atoi(argv[6])),
             unsigned(std::atoi(argv[7]))};
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
    for (int i = 0; i < n_out; ++i)
      out_counts.push_back(std::strtoull(argv[8 + n_in + i], nullptr, 10));
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
    if (size_t(f.gcount()) != count * sizeof(T)) {
      std::fprintf(stderr, "shim: short input %d\n", i);
      std::exit(2);
    }
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
