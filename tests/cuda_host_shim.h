/* Runs exprc's generated CUDA kernels on the CPU, for the GPU-less tests (tests/cuda_emulator.py):
 * every CUDA thread of a block is a std::thread, __syncthreads is a block barrier, __shfl_down_sync
 * goes through a per-warp slot array with a per-warp barrier, blocks run one after another (so
 * __shared__ arrays can be static).  Slow, but it executes the exact kernel source, reductions and
 * their second pass included.  Compiled with g++ -std=c++20 -include this-file -x c++ module.cu. */
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

using std::isfinite;
using std::isinf;
using std::isnan;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __restrict__ __restrict
#define __shared__ static

struct exprc_dim3 { unsigned x, y, z; };
static thread_local exprc_dim3 threadIdx, blockIdx;
static exprc_dim3 blockDim, gridDim;

static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

struct exprc_warp { std::unique_ptr<std::barrier<>> bar; uint64_t slot[32]; };
static std::unique_ptr<std::barrier<>> exprc_block_barrier;
static std::vector<exprc_warp> exprc_warps;

static inline void __syncthreads() { exprc_block_barrier->arrive_and_wait(); }

template <typename T>
static inline T __shfl_down_sync(unsigned, T v, int offset)
{
    exprc_warp &w = exprc_warps[threadIdx.x / 32];
    const unsigned lane = threadIdx.x % 32;
    std::memcpy(&w.slot[lane], &v, sizeof(T));
    w.bar->arrive_and_wait();
    T r = v;
    if (lane + offset < 32) std::memcpy(&r, &w.slot[lane + offset], sizeof(T));
    w.bar->arrive_and_wait();
    return r;
}

static void exprc_emulate(unsigned grid, unsigned block, const std::function<void()> &kernel)
{
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; b++) {
        exprc_block_barrier = std::make_unique<std::barrier<>>(block);
        exprc_warps = std::vector<exprc_warp>(block / 32);
        for (auto &w : exprc_warps) w.bar = std::make_unique<std::barrier<>>(32);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; t++)
            threads.emplace_back([&, b, t] { blockIdx = {b, 0, 0}; threadIdx = {t, 0, 0}; kernel(); });
        for (auto &th : threads) th.join();
    }
}
