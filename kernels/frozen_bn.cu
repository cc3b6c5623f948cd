// Frozen batch norm (Op::FrozenBatchNorm, torchvision FrozenBatchNorm2d on channel-last tensors), as
// src/ops/frozen_bn/cpu.rs: y = x * scale + shift with scale = w * (1 / sqrt(var + eps)) and
// shift = b - mean * scale, every step rounded to f32 (the __f*_rn intrinsics keep the compiler from fusing a
// multiply and an add), so f32 results equal torch's; then ReLU (NaN kept) when relu != 0. One thread per element, grid-stride loop.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void frozen_bn_fwd(const T* x, const T* w, const T* b, const T* mean, const T* var, T* y,
                                              long long total, long long c, float eps, int relu) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const long long ch = i % c;
        const float scale = __fmul_rn(to_f32(w[ch]), 1.0f / __fsqrt_rn(__fadd_rn(to_f32(var[ch]), eps)));
        const float shift = __fadd_rn(to_f32(b[ch]), -__fmul_rn(to_f32(mean[ch]), scale));
        const float z = __fadd_rn(__fmul_rn(to_f32(x[i]), scale), shift);
        y[i] = from_f32<T>(relu && z <= 0.0f ? 0.0f : z);
    }
}

INSTAGEN_KERNELS_FLOAT(frozen_batch_norm_fwd, ,
                       (const T* x, const T* w, const T* b, const T* mean, const T* var, T* y, long long total,
                        long long c, float eps, int relu),
                       frozen_bn_fwd<T>(x, w, b, mean, var, y, total, c, eps, relu))
