// Layer norm over the last dimension (see src/layer_norm.rs for the maths), one block per row.
//
// Backward: `layer_norm_bwd_dx` computes dx per row (one block per row) and saves the row's mean and
// 1/std; `layer_norm_bwd_partial` sums dy * xhat and dy over fixed chunks of rows per column into f32
// partials; `layer_norm_bwd_final` adds the partials of each column in chunk order. No float atomics,
// so dw and db are reproducible bit for bit.
#include "common.cuh"

/// Mean and 1/sqrt(var + eps) of one row (two passes, biased variance), on every thread of the block.
template <typename T>
__device__ __forceinline__ void row_stats(const T *xr, u64 cols, float eps, float *shm, float &mean,
                                          float &rstd) {
    const float n = (float)cols;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += to_f32(xr[c]);
    mean = block_sum(s, shm) / n;
    float q = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = to_f32(xr[c]) - mean;
        q += d * d;
    }
    const float var = block_sum(q, shm) / n;
    rstd = 1.0f / sqrtf(var + eps);
}

template <typename T>
__device__ __forceinline__ void layer_norm_fwd(const T *x, const T *w, const T *b, T *y, u64 rows,
                                               u64 cols, float eps) {
    __shared__ float shm[32];
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * cols;
        T *yr = y + r * cols;
        float mean, rstd;
        row_stats(xr, cols, eps, shm, mean, rstd);
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x)
            yr[c] = from_f32<T>((to_f32(xr[c]) - mean) * rstd * to_f32(w[c]) + to_f32(b[c]));
    }
}

/// dx of each row; `stats[2 r]` = mean, `stats[2 r + 1]` = 1/std of row r, for the partial kernel.
template <typename T>
__device__ __forceinline__ void layer_norm_bwd_dx(const T *x, const T *w, const T *dy, T *dx,
                                                  float *stats, u64 rows, u64 cols, float eps) {
    __shared__ float shm[32];
    const float n = (float)cols;
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * cols;
        const T *gr = dy + r * cols;
        T *dxr = dx + r * cols;
        float mean, rstd;
        row_stats(xr, cols, eps, shm, mean, rstd);
        float sg = 0.0f, sgx = 0.0f;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xh = (to_f32(xr[c]) - mean) * rstd;
            const float g = to_f32(gr[c]) * to_f32(w[c]);
            sg += g;
            sgx += g * xh;
        }
        const float mg = block_sum(sg, shm) / n;
        const float mgx = block_sum(sgx, shm) / n;
        for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
            const float xh = (to_f32(xr[c]) - mean) * rstd;
            dxr[c] = from_f32<T>(rstd * (to_f32(gr[c]) * to_f32(w[c]) - mg - xh * mgx));
        }
        if (threadIdx.x == 0) {
            stats[2 * r] = mean;
            stats[2 * r + 1] = rstd;
        }
    }
}

/// Grid (ceil(cols / blockDim), chunks): column `c` of chunk `blockIdx.y` (rows
/// [chunk * rows_per_chunk, ..+rows_per_chunk)) into `pw/pb[chunk * cols + c]`.
template <typename T>
__device__ __forceinline__ void layer_norm_bwd_partial(const T *x, const T *dy, const float *stats,
                                                       float *pw, float *pb, u64 rows, u64 cols,
                                                       u64 rows_per_chunk) {
    const u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u64 chunk = blockIdx.y;
    if (c >= cols) return;
    const u64 r0 = chunk * rows_per_chunk;
    const u64 r1 = min(rows, r0 + rows_per_chunk);
    float aw = 0.0f, ab = 0.0f;
    for (u64 r = r0; r < r1; ++r) {
        const float xh = (to_f32(x[r * cols + c]) - stats[2 * r]) * stats[2 * r + 1];
        const float g = to_f32(dy[r * cols + c]);
        aw += g * xh;
        ab += g;
    }
    pw[chunk * cols + c] = aw;
    pb[chunk * cols + c] = ab;
}

template <typename T>
__device__ __forceinline__ void layer_norm_bwd_final(const float *pw, const float *pb, T *dw, T *db,
                                                     u64 chunks, u64 cols) {
    GRID_STRIDE(c, cols) {
        float aw = 0.0f, ab = 0.0f;
        for (u64 k = 0; k < chunks; ++k) {
            aw += pw[k * cols + c];
            ab += pb[k * cols + c];
        }
        dw[c] = from_f32<T>(aw);
        db[c] = from_f32<T>(ab);
    }
}

#define LN_KERNELS(S, T)                                                                           \
    extern "C" __global__ void layer_norm_fwd_##S(const T *x, const T *w, const T *b, T *y,        \
                                                  u64 rows, u64 cols, float eps) {                 \
        layer_norm_fwd<T>(x, w, b, y, rows, cols, eps);                                            \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_dx_##S(const T *x, const T *w, const T *dy, T *dx,   \
                                                     float *stats, u64 rows, u64 cols, float eps) { \
        layer_norm_bwd_dx<T>(x, w, dy, dx, stats, rows, cols, eps);                                \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_partial_##S(const T *x, const T *dy,                 \
                                                          const float *stats, float *pw, float *pb, \
                                                          u64 rows, u64 cols, u64 rows_per_chunk) { \
        layer_norm_bwd_partial<T>(x, dy, stats, pw, pb, rows, cols, rows_per_chunk);               \
    }                                                                                              \
    extern "C" __global__ void layer_norm_bwd_final_##S(const float *pw, const float *pb, T *dw,   \
                                                        T *db, u64 chunks, u64 cols) {             \
        layer_norm_bwd_final<T>(pw, pb, dw, db, chunks, cols);                                     \
    }

DMAE_FOR_FLOATS(LN_KERNELS)
