// Per-sample token gather / scatter (see src/tokens.rs). x (N, L, D), idx (N, K) u32, rows of D.
// One thread per element of the (N, K, D) side, grid-stride. Copies move raw bits, so the copy
// kernels exist per element size (u16 for bf16/f16, u32 for f32); out-of-range indices gather zeros
// and are ignored by the scatters.
#include "common.cuh"

/// out[b, r, c] = x[b, idx[b, r], c], or 0 when the index is out of range.
template <typename T>
__device__ __forceinline__ void gather(const T *x, const uint32_t *idx, T *out, u64 n, u64 l, u64 k,
                                       u64 d) {
    GRID_STRIDE(e, n * k * d) {
        const u64 r = e / d, c = e % d, b = r / k;
        const u64 i = idx[r];
        out[e] = i < l ? x[(b * l + i) * d + c] : (T)0;
    }
}

/// out[b, idx[b, r], c] = src[b, r, c] (out already holds a copy of the base).
template <typename T>
__device__ __forceinline__ void scatter(const T *src, const uint32_t *idx, T *out, u64 n, u64 l,
                                        u64 k, u64 d) {
    GRID_STRIDE(e, n * k * d) {
        const u64 r = e / d, c = e % d, b = r / k;
        const u64 i = idx[r];
        if (i < l) out[(b * l + i) * d + c] = src[e];
    }
}

/// out[b, idx[b, r], :] = 0 (out already holds a copy of the gradient).
template <typename T>
__device__ __forceinline__ void zero_rows(const uint32_t *idx, T *out, u64 n, u64 l, u64 k, u64 d) {
    GRID_STRIDE(e, n * k * d) {
        const u64 r = e / d, c = e % d, b = r / k;
        const u64 i = idx[r];
        if (i < l) out[(b * l + i) * d + c] = (T)0;
    }
}

#define COPY_KERNELS(S, T)                                                                         \
    extern "C" __global__ void gather_tokens_##S(const T *x, const uint32_t *idx, T *out, u64 n,   \
                                                 u64 l, u64 k, u64 d) {                            \
        gather<T>(x, idx, out, n, l, k, d);                                                        \
    }                                                                                              \
    extern "C" __global__ void scatter_tokens_##S(const T *src, const uint32_t *idx, T *out,       \
                                                  u64 n, u64 l, u64 k, u64 d) {                    \
        scatter<T>(src, idx, out, n, l, k, d);                                                     \
    }                                                                                              \
    extern "C" __global__ void zero_rows_##S(const uint32_t *idx, T *out, u64 n, u64 l, u64 k,     \
                                             u64 d) {                                              \
        zero_rows<T>(idx, out, n, l, k, d);                                                        \
    }

COPY_KERNELS(u16, uint16_t)
COPY_KERNELS(u32, uint32_t)

/// acc[b, idx[b, r], c] += g[b, r, c] in f32 (atomics: repeated indices accumulate).
template <typename T>
__device__ __forceinline__ void scatter_add(const T *g, const uint32_t *idx, float *acc, u64 n,
                                            u64 l, u64 k, u64 d) {
    GRID_STRIDE(e, n * k * d) {
        const u64 r = e / d, c = e % d, b = r / k;
        const u64 i = idx[r];
        if (i < l) atomicAdd(acc + (b * l + i) * d + c, to_f32(g[e]));
    }
}

template <typename T> __device__ __forceinline__ void f32_to(const float *src, T *dst, u64 n) {
    GRID_STRIDE(i, n) { dst[i] = from_f32<T>(src[i]); }
}

#define ADD_KERNELS(S, T)                                                                          \
    extern "C" __global__ void scatter_add_tokens_##S(const T *g, const uint32_t *idx, float *acc, \
                                                      u64 n, u64 l, u64 k, u64 d) {                \
        scatter_add<T>(g, idx, acc, n, l, k, d);                                                   \
    }                                                                                              \
    extern "C" __global__ void f32_to_##S(const float *src, T *dst, u64 n) { f32_to<T>(src, dst, n); }

DMAE_FOR_FLOATS(ADD_KERNELS)
