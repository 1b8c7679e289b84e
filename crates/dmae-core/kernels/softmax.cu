// Softmax over the last dimension and its backward, one block per row (see src/softmax.rs).
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void softmax_fwd(const T *x, T *y, u64 rows, u64 cols) {
    __shared__ float shm[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * cols;
        T *yr = y + r * cols;
        float mx = DMAE_NEG_INF;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) mx = fmaxf(mx, to_f32(xr[c]));
        mx = block_max(mx, shm);
        if (mx == DMAE_NEG_INF) {
            // A row that is entirely -inf gives zeros (as the CPU kernel).
            for (u64 c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = from_f32<T>(0.0f);
            continue;
        }
        float s = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += expf(to_f32(xr[c]) - mx);
        const float inv = 1.0f / block_sum(s, shm);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
            yr[c] = from_f32<T>(expf(to_f32(xr[c]) - mx) * inv);
    }
}

/// `dx = y * (dy - sum(dy * y))`.
template <typename T>
__device__ __forceinline__ void softmax_bwd(const T *y, const T *dy, T *dx, u64 rows, u64 cols) {
    __shared__ float shm[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *yr = y + r * cols;
        const T *gr = dy + r * cols;
        T *dxr = dx + r * cols;
        float s = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(yr[c]) * to_f32(gr[c]);
        s = block_sum(s, shm);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
            dxr[c] = from_f32<T>(to_f32(yr[c]) * (to_f32(gr[c]) - s));
    }
}

#define SOFTMAX_KERNELS(S, T)                                                                      \
    extern "C" __global__ void softmax_fwd_##S(const T *x, T *y, u64 rows, u64 cols) {             \
        softmax_fwd<T>(x, y, rows, cols);                                                          \
    }                                                                                              \
    extern "C" __global__ void softmax_bwd_##S(const T *y, const T *dy, T *dx, u64 rows,           \
                                               u64 cols) {                                         \
        softmax_bwd<T>(y, dy, dx, rows, cols);                                                     \
    }

DMAE_FOR_FLOATS(SOFTMAX_KERNELS)
