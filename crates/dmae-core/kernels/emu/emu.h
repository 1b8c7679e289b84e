// Host emulation of the few CUDA features the kernels use: one block at a time, one std::thread per
// CUDA thread, barriers for __syncthreads/__syncwarp and warp shuffles through a per-warp buffer.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)
struct dim3u { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3u threadIdx, blockIdx;
inline dim3u blockDim, gridDim;
struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<float> buf;
};
inline EmuBlock *g_block;
inline void __syncthreads() { g_block->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_block->warp[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_sync(unsigned, float v, int src) {
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    g_block->buf[w * 32 + lane] = v;
    __syncwarp();
    float r = g_block->buf[w * 32 + (src & 31)];
    __syncwarp();
    return r;
}
inline float __shfl_xor_sync(unsigned m, float v, int o) { return __shfl_sync(m, v, (int)((threadIdx.x % 32) ^ o)); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float atomicAdd(float *p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
using std::min;
template <class F> void emu_launch(dim3u grid, dim3u block, F f) {
    blockDim = block;
    gridDim = grid;
    if (block.x % 32 != 0) abort();
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                EmuBlock blk;
                blk.bar = std::make_unique<std::barrier<>>(block.x);
                for (unsigned w = 0; w < block.x / 32; ++w) blk.warp.push_back(std::make_unique<std::barrier<>>(32));
                blk.buf.assign(block.x, 0.0f);
                g_block = &blk;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < block.x; ++t)
                    ts.emplace_back([=] {
                        threadIdx = dim3u{t, 0, 0};
                        blockIdx = dim3u{bx, by, bz};
                        f();
                    });
                for (auto &t : ts) t.join();
            }
}
