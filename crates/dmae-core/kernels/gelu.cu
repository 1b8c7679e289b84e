// GELU, erf (kind 0) and tanh (kind 1) forms, and its derivative; the same formulas, in the same
// order of operations, as src/gelu.rs.
#include "common.cuh"

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f
#define TANH_C 0.044715f

__device__ __forceinline__ float gelu_value(u64 kind, float x) {
    const float half = 0.5f;
    if (kind == 0) return half * x * (1.0f + erff(x * INV_SQRT_2));
    const float u = SQRT_2_OVER_PI * (x + TANH_C * x * x * x);
    return half * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_derivative(u64 kind, float x) {
    const float half = 0.5f;
    if (kind == 0)
        return half * (1.0f + erff(x * INV_SQRT_2)) + x * INV_SQRT_2PI * expf(-half * x * x);
    const float k = SQRT_2_OVER_PI;
    const float t = tanhf(k * (x + TANH_C * x * x * x));
    return half * (1.0f + t) + half * x * (1.0f - t * t) * k * (1.0f + 3.0f * TANH_C * x * x);
}

template <typename T>
__device__ __forceinline__ void gelu_fwd(const T *x, T *y, u64 n, u64 kind) {
    GRID_STRIDE(i, n) { y[i] = from_f32<T>(gelu_value(kind, to_f32(x[i]))); }
}

template <typename T>
__device__ __forceinline__ void gelu_bwd(const T *x, const T *dy, T *dx, u64 n, u64 kind) {
    GRID_STRIDE(i, n) { dx[i] = from_f32<T>(to_f32(dy[i]) * gelu_derivative(kind, to_f32(x[i]))); }
}

#define GELU_KERNELS(S, T)                                                                         \
    extern "C" __global__ void gelu_fwd_##S(const T *x, T *y, u64 n, u64 kind) {                   \
        gelu_fwd<T>(x, y, n, kind);                                                                \
    }                                                                                              \
    extern "C" __global__ void gelu_bwd_##S(const T *x, const T *dy, T *dx, u64 n, u64 kind) {     \
        gelu_bwd<T>(x, dy, dx, n, kind);                                                           \
    }

DMAE_FOR_FLOATS(GELU_KERNELS)
