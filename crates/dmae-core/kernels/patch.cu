// Patchify / unpatchify (see src/patch.rs's `permute_sample`): a pure permutation, one thread per
// element in patch order, grid-stride. Raw bits, so one kernel per element size.
#include "common.cuh"

/// `inverse == 0`: dst (N, L, t*p*p*C) from src (N, C, T, H, W); otherwise the other way round.
template <typename T>
__device__ __forceinline__ void permute(const T *src, T *dst, u64 total, u64 c, u64 t, u64 h, u64 w,
                                        u64 tt, u64 p, u64 inverse) {
    const u64 per = c * t * h * w;
    const u64 gh = h / p, gw = w / p;
    GRID_STRIDE(g, total) {
        const u64 b = g / per, e = g % per; // e: position in patch order within the sample
        u64 r = e;
        const u64 ch = r % c;
        r /= c;
        const u64 qi = r % p;
        r /= p;
        const u64 pi = r % p;
        r /= p;
        const u64 a = r % tt;
        r /= tt; // r: token index (ti, hi, wi), wi fastest
        const u64 wi = r % gw;
        r /= gw;
        const u64 hi = r % gh;
        const u64 ti = r / gh;
        const u64 frame = ti * tt + a, y = hi * p + pi, x = wi * p + qi;
        const u64 pix = ((ch * t + frame) * h + y) * w + x;
        if (inverse)
            dst[b * per + pix] = src[b * per + e];
        else
            dst[b * per + e] = src[b * per + pix];
    }
}

#define PATCH_KERNEL(S, T)                                                                         \
    extern "C" __global__ void patchify_##S(const T *src, T *dst, u64 total, u64 c, u64 t, u64 h,  \
                                            u64 w, u64 tt, u64 p, u64 inverse) {                   \
        permute<T>(src, dst, total, c, t, h, w, tt, p, inverse);                                   \
    }

PATCH_KERNEL(u8, uint8_t)
PATCH_KERNEL(u16, uint16_t)
PATCH_KERNEL(u32, uint32_t)
PATCH_KERNEL(u64, unsigned long long)
