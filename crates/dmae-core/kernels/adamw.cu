// Fused AdamW step over one f32 parameter (see src/adamw.rs's `update_cpu`). One thread per element,
// grid-stride. The `__f*_rn` intrinsics forbid contraction into FMAs, so every operation rounds as
// the CPU kernel's does and the two agree bit for bit. The launcher computes `decay = 1 - lr * wd`,
// `step = lr / bc1` and `inv_sqrt_bc2 = 1 / sqrt(bc2)` in f32 exactly as the CPU kernel.
#include "common.cuh"

extern "C" __global__ void adamw_step_f32(float *p, const float *g, float *m, float *v, u64 n,
                                          float decay, float step, float inv_sqrt_bc2, float beta1,
                                          float beta2, float eps) {
    const float one_b1 = __fsub_rn(1.0f, beta1), one_b2 = __fsub_rn(1.0f, beta2);
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_b1, gi));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float den = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), inv_sqrt_bc2), eps);
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fdiv_rn(__fmul_rn(step, mi), den));
    }
}
