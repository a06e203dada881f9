// Runs the CUDA kernels of csrc/ on the CPU, for tests on machines without a GPU.
//
// Force-included (g++ -include) when csrc/*.cu are compiled as plain C++ with
// FASTNCSN_HOST_EMULATION defined (tests/test_csrc_emulated.py).  A launch runs
// every thread of a block as a std::thread; __syncthreads is a std::barrier over
// the block's threads; __shared__ arrays become function statics, shared by the
// block's threads (blocks run one after another, so one copy suffices).  What this
// checks: the kernels' indexing, reductions and formulas, and that every thread
// of a block reaches the same barriers (a divergent __syncthreads deadlocks here
// too).  What it does not: timing, memory coalescing, warp-level behaviour.
#pragma once

#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

namespace fastncsn_emu {

inline thread_local uint3 thread_index{0, 0, 0};
inline thread_local uint3 block_index{0, 0, 0};
inline dim3 grid_dim{1, 1, 1};
inline dim3 block_dim{1, 1, 1};
inline std::barrier<>* block_barrier = nullptr;

// Run body() once per (block, thread) of a grid x block launch.
template <typename Body>
void launch(dim3 grid, dim3 block, Body body) {
  const unsigned threads = block.x * block.y * block.z;
  std::barrier<> barrier(static_cast<std::ptrdiff_t>(threads));
  block_barrier = &barrier;
  grid_dim = grid;
  block_dim = block;
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      thread_index = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            block_index = uint3{x, y, z};
            body();
            barrier.arrive_and_wait();  // the next block reuses the shared arrays
          }
    });
  }
  for (auto& th : pool) th.join();
  block_barrier = nullptr;
}

}  // namespace fastncsn_emu

#define threadIdx (::fastncsn_emu::thread_index)
#define blockIdx (::fastncsn_emu::block_index)
#define blockDim (::fastncsn_emu::block_dim)
#define gridDim (::fastncsn_emu::grid_dim)
#define __syncthreads() (::fastncsn_emu::block_barrier->arrive_and_wait())
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
