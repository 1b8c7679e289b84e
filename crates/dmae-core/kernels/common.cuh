// Shared helpers of dmae-core's CUDA kernels.
//
// Every float kernel loads its inputs as f32, computes and accumulates in f32 and stores in the input
// dtype. Kernels are instantiated once per dtype with `extern "C"` names ending in `_f32`, `_bf16`
// or `_f16`; the Rust launchers in src/cuda/ pick the name from the storage's dtype.
//
// Conventions shared with the launchers (src/cuda/mod.rs):
// - every size, index, offset and stride argument is `unsigned long long` (Rust u64);
// - every scalar float argument is `float` (Rust f32);
// - pointers already point at the first element of the operand (the launcher applies the offset);
// - reductions run over blocks whose size is a multiple of 32 (at most 1024).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef unsigned long long u64;

#define DMAE_NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Value of `v` in lane `src` of the (full) warp.
__device__ __forceinline__ float warp_bcast(float v, int src) {
    return __shfl_sync(0xffffffffu, v, src);
}

/// Sum of `v` over the block; every thread gets the result. `shm` holds at least 32 floats. All
/// threads of the block must call it (it synchronises), blockDim.x a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float *shm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // shm may still be read by a previous call
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    v = lane < warps ? shm[lane] : 0.0f;
    return warp_sum(v);
}

/// Maximum of `v` over the block, like `block_sum`.
__device__ __forceinline__ float block_max(float v, float *shm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    v = lane < warps ? shm[lane] : DMAE_NEG_INF;
    return warp_max(v);
}

/// Grid-stride loop over `n` elements.
#define GRID_STRIDE(i, n)                                                                          \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                              \
         i += (u64)blockDim.x * gridDim.x)

/// Calls `M(suffix, type)` for each float dtype the kernels are instantiated for.
#define DMAE_FOR_FLOATS(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)

