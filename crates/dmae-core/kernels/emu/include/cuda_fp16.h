// Host stand-in for CUDA's cuda_fp16.h (emulation only; needs GCC 12+ for _Float16).
#pragma once
#include <cstdint>
#include <cstring>
struct __half { _Float16 v; };
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half_rn(float f) { return __half{(_Float16)f}; }
