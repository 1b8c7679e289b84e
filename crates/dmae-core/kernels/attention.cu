// Scaled dot-product attention `softmax(q k^T * scale + mask) v` and its backward (see
// src/attention.rs for the layout and the maths).
//
// q (N, Lq, H, D), k (N, Lk, H, D), v (N, Lk, H, Dv) are strided views with a unit last stride: element
// [a, b, c, e] of q is at q[a*qs0 + b*qs1 + c*qs2 + e]. The optional additive mask is a (N, H, Lq, Lk)
// view with arbitrary (possibly zero) strides ms0..ms3. Out, dout, dq, dk and dv are contiguous.
//
// Parallelisation: one warp per row, WARPS rows per block, no block-level synchronisation.
// - forward: one warp per query row (n, i, h); lanes take 32 keys at a time (each lane one full dot
//   product), online softmax over the chunks (running max and sum with rescaling), and each lane
//   accumulates up to MAXD/32 output dims;
// - backward `attention_bwd_q`: one warp per query row; pass 1 recomputes the row max m, the sum l
//   and delta = sum_j P_ij dP_ij (dP = dO V^T) online, pass 2 recomputes P and dS and accumulates
//   dq = dS K * scale; it saves (m, 1/l, delta) per query row;
// - backward `attention_bwd_kv`: one warp per key row (n, j, h); lanes take 32 queries at a time,
//   recompute P_ij and dS_ij from the saved row statistics, and accumulate dk = dS^T Q * scale and
//   dv = P^T dO. No atomics: results are deterministic.
// A query row whose keys are all -inf gets zero output and contributes no gradient.
#include "common.cuh"

#define WARPS 4
#define MAXD 256
#define PER_LANE (MAXD / 32)

struct View {
    u64 s0, s1, s2;
};

/// Score of query `i` against key `j`: (q_i . k_j) * scale + mask[b, h, i, j]. `qv` holds q_i as f32
/// (shared memory), `kj` points at key row j.
template <typename T>
__device__ __forceinline__ float dot_shared(const float *a, const T *b, u64 len) {
    float s = 0.0f;
    for (u64 e = 0; e < len; ++e) s += a[e] * to_f32(b[e]);
    return s;
}

template <typename T>
__device__ __forceinline__ void attention_fwd(const T *q, const T *k, const T *v, const T *mask,
                                              T *out, u64 nb, u64 nh, u64 lq, u64 lk, u64 d, u64 dv,
                                              View qs, View ks, View vs, u64 ms0, u64 ms1, u64 ms2,
                                              u64 ms3, u64 has_mask, float scale) {
    __shared__ float qsh[WARPS][MAXD];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const u64 rows = nb * nh * lq;
    for (u64 row = (u64)blockIdx.x * WARPS + wid; row < rows; row += (u64)gridDim.x * WARPS) {
        // row = (b * lq + i) * nh + h, the row of the contiguous (N, Lq, H, Dv) output.
        const u64 h = row % nh, i = (row / nh) % lq, b = row / (nh * lq);
        const T *qi = q + b * qs.s0 + i * qs.s1 + h * qs.s2;
        for (u64 e = lane; e < d; e += 32) qsh[wid][e] = to_f32(qi[e]);
        __syncwarp();
        const T *kb = k + b * ks.s0 + h * ks.s2;
        const T *vb = v + b * vs.s0 + h * vs.s2;
        const T *mrow = has_mask ? mask + b * ms0 + h * ms1 + i * ms2 : nullptr;
        float m = DMAE_NEG_INF, l = 0.0f;
        float acc[PER_LANE];
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) acc[u] = 0.0f;
        for (u64 j0 = 0; j0 < lk; j0 += 32) {
            const u64 j = j0 + lane;
            float s = DMAE_NEG_INF;
            if (j < lk) {
                s = dot_shared(qsh[wid], kb + j * ks.s1, d) * scale;
                if (has_mask) s += to_f32(mrow[j * ms3]);
            }
            const float m_new = fmaxf(m, warp_max(s));
            if (m_new == DMAE_NEG_INF) continue; // every key so far is masked (warp-uniform)
            const float corr = expf(m - m_new);  // 0 while m is still -inf
            const float p = expf(s - m_new);     // 0 for a masked key or a lane past the end
            l = l * corr + warp_sum(p);
#pragma unroll
            for (int u = 0; u < PER_LANE; ++u) acc[u] *= corr;
            const u64 cnt = min((u64)32, lk - j0);
            for (u64 t = 0; t < cnt; ++t) {
                const float pt = warp_bcast(p, (int)t);
                const T *vj = vb + (j0 + t) * vs.s1;
#pragma unroll
                for (int u = 0; u < PER_LANE; ++u) {
                    const u64 e = lane + 32 * u;
                    if (e < dv) acc[u] += pt * to_f32(vj[e]);
                }
            }
            m = m_new;
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        T *o = out + row * dv;
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) {
            const u64 e = lane + 32 * u;
            if (e < dv) o[e] = from_f32<T>(acc[u] * inv);
        }
        __syncwarp(); // qsh is rewritten for the next row
    }
}

/// dq of each query row, and `stats[3 row ..]` = (row max m, 1/l, delta) for `attention_bwd_kv`.
template <typename T>
__device__ __forceinline__ void attention_bwd_q(const T *q, const T *k, const T *v, const T *mask,
                                                const T *dout, T *dq, float *stats, u64 nb, u64 nh,
                                                u64 lq, u64 lk, u64 d, u64 dv, View qs, View ks,
                                                View vs, u64 ms0, u64 ms1, u64 ms2, u64 ms3,
                                                u64 has_mask, float scale) {
    __shared__ float qsh[WARPS][MAXD];
    __shared__ float gsh[WARPS][MAXD];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const u64 rows = nb * nh * lq;
    for (u64 row = (u64)blockIdx.x * WARPS + wid; row < rows; row += (u64)gridDim.x * WARPS) {
        const u64 h = row % nh, i = (row / nh) % lq, b = row / (nh * lq);
        const T *qi = q + b * qs.s0 + i * qs.s1 + h * qs.s2;
        const T *gi = dout + row * dv;
        for (u64 e = lane; e < d; e += 32) qsh[wid][e] = to_f32(qi[e]);
        for (u64 e = lane; e < dv; e += 32) gsh[wid][e] = to_f32(gi[e]);
        __syncwarp();
        const T *kb = k + b * ks.s0 + h * ks.s2;
        const T *vb = v + b * vs.s0 + h * vs.s2;
        const T *mrow = has_mask ? mask + b * ms0 + h * ms1 + i * ms2 : nullptr;

        // Pass 1: m, l and t = sum_j exp(s_j - m) dP_j, online.
        float m = DMAE_NEG_INF, l = 0.0f, t = 0.0f;
        for (u64 j0 = 0; j0 < lk; j0 += 32) {
            const u64 j = j0 + lane;
            float s = DMAE_NEG_INF, dp = 0.0f;
            if (j < lk) {
                s = dot_shared(qsh[wid], kb + j * ks.s1, d) * scale;
                if (has_mask) s += to_f32(mrow[j * ms3]);
                dp = dot_shared(gsh[wid], vb + j * vs.s1, dv);
            }
            const float m_new = fmaxf(m, warp_max(s));
            if (m_new == DMAE_NEG_INF) continue;
            const float corr = expf(m - m_new);
            const float p = expf(s - m_new);
            l = l * corr + warp_sum(p);
            t = t * corr + warp_sum(p * dp);
            m = m_new;
        }
        const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
        const float delta = t * inv_l;

        // Pass 2: dS_j = P_j (dP_j - delta) * scale, dq += dS_j k_j.
        float acc[PER_LANE];
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) acc[u] = 0.0f;
        if (m != DMAE_NEG_INF) {
            for (u64 j0 = 0; j0 < lk; j0 += 32) {
                const u64 j = j0 + lane;
                float ds = 0.0f;
                if (j < lk) {
                    float s = dot_shared(qsh[wid], kb + j * ks.s1, d) * scale;
                    if (has_mask) s += to_f32(mrow[j * ms3]);
                    if (s != DMAE_NEG_INF) {
                        const float p = expf(s - m) * inv_l;
                        const float dp = dot_shared(gsh[wid], vb + j * vs.s1, dv);
                        ds = p * (dp - delta) * scale;
                    }
                }
                const u64 cnt = min((u64)32, lk - j0);
                for (u64 tt = 0; tt < cnt; ++tt) {
                    const float dst = warp_bcast(ds, (int)tt);
                    const T *kj = kb + (j0 + tt) * ks.s1;
#pragma unroll
                    for (int u = 0; u < PER_LANE; ++u) {
                        const u64 e = lane + 32 * u;
                        if (e < d) acc[u] += dst * to_f32(kj[e]);
                    }
                }
            }
        }
        T *o = dq + row * d;
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) {
            const u64 e = lane + 32 * u;
            if (e < d) o[e] = from_f32<T>(acc[u]);
        }
        if (lane == 0) {
            stats[3 * row] = m;
            stats[3 * row + 1] = inv_l;
            stats[3 * row + 2] = delta;
        }
        __syncwarp();
    }
}

/// dk and dv of each key row, from the statistics `attention_bwd_q` saved.
template <typename T>
__device__ __forceinline__ void attention_bwd_kv(const T *q, const T *k, const T *v, const T *mask,
                                                 const T *dout, const float *stats, T *dk, T *dvo,
                                                 u64 nb, u64 nh, u64 lq, u64 lk, u64 d, u64 dv,
                                                 View qs, View ks, View vs, u64 ms0, u64 ms1,
                                                 u64 ms2, u64 ms3, u64 has_mask, float scale) {
    __shared__ float ksh[WARPS][MAXD];
    __shared__ float vsh[WARPS][MAXD];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const u64 rows = nb * nh * lk;
    for (u64 row = (u64)blockIdx.x * WARPS + wid; row < rows; row += (u64)gridDim.x * WARPS) {
        // row = (b * lk + j) * nh + h, the row of the contiguous (N, Lk, H, D|Dv) outputs.
        const u64 h = row % nh, j = (row / nh) % lk, b = row / (nh * lk);
        const T *kj = k + b * ks.s0 + j * ks.s1 + h * ks.s2;
        const T *vj = v + b * vs.s0 + j * vs.s1 + h * vs.s2;
        for (u64 e = lane; e < d; e += 32) ksh[wid][e] = to_f32(kj[e]);
        for (u64 e = lane; e < dv; e += 32) vsh[wid][e] = to_f32(vj[e]);
        __syncwarp();
        const T *qb = q + b * qs.s0 + h * qs.s2;
        const T *mcol = has_mask ? mask + b * ms0 + h * ms1 + j * ms3 : nullptr;
        float adk[PER_LANE], adv[PER_LANE];
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) adk[u] = adv[u] = 0.0f;
        for (u64 i0 = 0; i0 < lq; i0 += 32) {
            const u64 i = i0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (i < lq) {
                const u64 qrow = (b * lq + i) * nh + h;
                const float m = stats[3 * qrow];
                if (m != DMAE_NEG_INF) {
                    // Same operand order as attention_bwd_q, so s is the same float.
                    float s = 0.0f;
                    const T *qi = qb + i * qs.s1;
                    for (u64 e = 0; e < d; ++e) s += to_f32(qi[e]) * ksh[wid][e];
                    s *= scale;
                    if (has_mask) s += to_f32(mcol[i * ms2]);
                    if (s != DMAE_NEG_INF) {
                        p = expf(s - m) * stats[3 * qrow + 1];
                        const T *gi = dout + qrow * dv;
                        float dp = 0.0f;
                        for (u64 e = 0; e < dv; ++e) dp += to_f32(gi[e]) * vsh[wid][e];
                        ds = p * (dp - stats[3 * qrow + 2]) * scale;
                    }
                }
            }
            const u64 cnt = min((u64)32, lq - i0);
            for (u64 tt = 0; tt < cnt; ++tt) {
                const float pt = warp_bcast(p, (int)tt);
                const float dst = warp_bcast(ds, (int)tt);
                const T *qi = qb + (i0 + tt) * qs.s1;
                const T *gi = dout + ((b * lq + i0 + tt) * nh + h) * dv;
#pragma unroll
                for (int u = 0; u < PER_LANE; ++u) {
                    const u64 e = lane + 32 * u;
                    if (e < d) adk[u] += dst * to_f32(qi[e]);
                    if (e < dv) adv[u] += pt * to_f32(gi[e]);
                }
            }
        }
        T *okd = dk + row * d;
        T *ovd = dvo + row * dv;
#pragma unroll
        for (int u = 0; u < PER_LANE; ++u) {
            const u64 e = lane + 32 * u;
            if (e < d) okd[e] = from_f32<T>(adk[u]);
            if (e < dv) ovd[e] = from_f32<T>(adv[u]);
        }
        __syncwarp();
    }
}

// Arguments, in order, of all three kernels after their pointers:
// nb, nh, lq, lk, d, dv, qs0, qs1, qs2, ks0, ks1, ks2, vs0, vs1, vs2, ms0, ms1, ms2, ms3, has_mask, scale
#define ATTN_DIMS                                                                                  \
    u64 nb, u64 nh, u64 lq, u64 lk, u64 d, u64 dv, u64 qs0, u64 qs1, u64 qs2, u64 ks0, u64 ks1,    \
        u64 ks2, u64 vs0, u64 vs1, u64 vs2, u64 ms0, u64 ms1, u64 ms2, u64 ms3, u64 has_mask,      \
        float scale
#define ATTN_ARGS                                                                                  \
    nb, nh, lq, lk, d, dv, View{qs0, qs1, qs2}, View{ks0, ks1, ks2}, View{vs0, vs1, vs2}, ms0,     \
        ms1, ms2, ms3, has_mask, scale

#define ATTN_KERNELS(S, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
        attention_fwd_##S(const T *q, const T *k, const T *v, const T *mask, T *out, ATTN_DIMS) {  \
        attention_fwd<T>(q, k, v, mask, out, ATTN_ARGS);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
        attention_bwd_q_##S(const T *q, const T *k, const T *v, const T *mask, const T *dout,      \
                            T *dq, float *stats, ATTN_DIMS) {                                      \
        attention_bwd_q<T>(q, k, v, mask, dout, dq, stats, ATTN_ARGS);                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
        attention_bwd_kv_##S(const T *q, const T *k, const T *v, const T *mask, const T *dout,     \
                             const float *stats, T *dk, T *dv_out, ATTN_DIMS) {                    \
        attention_bwd_kv<T>(q, k, v, mask, dout, stats, dk, dv_out, ATTN_ARGS);                    \
    }

DMAE_FOR_FLOATS(ATTN_KERNELS)
