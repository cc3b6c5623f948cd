// Dropout (Op::Dropout) from a counter-based RNG: element i of x is kept when the 24-bit draw of
// (seed, step, i) is >= threshold, and multiplied by scale (1 / (1 - p)) or by 0. The hash is the one in
// src/ops/dropout/mod.rs (SplitMix64's finaliser over a Weyl sequence), so the mask is the CPU reference's.
// key: i64 [2] = (seed, step) in device memory; threshold and scale come from the host.
#include "common.cuh"

#define DROPOUT_GOLDEN 0x9E3779B97F4A7C15ull

__device__ __forceinline__ unsigned long long dropout_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ void dropout_fwd(const T* x, const long long* key, T* y, long long n, int threshold,
                                            float scale) {
    const unsigned long long seed = (unsigned long long)key[0], step = (unsigned long long)key[1];
    const unsigned long long stream = dropout_mix64(dropout_mix64(seed + DROPOUT_GOLDEN) ^ step);
    for (long long i = gidx(); i < n; i += gstride()) {
        const unsigned long long h = dropout_mix64(stream + ((unsigned long long)i + 1ull) * DROPOUT_GOLDEN);
        const unsigned int draw = (unsigned int)(h >> 40);
        const float m = draw >= (unsigned int)threshold ? scale : 0.0f;
        y[i] = from_f32<T>(__fmul_rn(to_f32(x[i]), m));
    }
}

INSTAGEN_KERNELS_FLOAT(dropout_fwd, , (const T* x, const long long* key, T* y, long long n, int threshold, float scale),
                       dropout_fwd<T>(x, key, y, n, threshold, scale))
