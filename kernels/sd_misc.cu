// Stable Diffusion helpers: GEGLU (Op::Geglu / Op::GegluBwd) and the sinusoidal timestep embedding
// (Op::TimestepEmbedding).
//
// geglu_fwd_<dt>: y[r, c] = x[r, c] * gelu(x[r, C + c]) (exact erf GELU), one output element per thread
//   step (grid stride, 64-bit counts). geglu_bwd_<dt>: one thread computes both dx[r, c] = dy * gelu(gate)
//   and dx[r, C + c] = dy * hidden * gelu'(gate). f32 arithmetic; GELU through erfc (no cancellation for
//   negative gates).
// timestep_embedding_fwd_<dt of t>: out [N, dim] f32 as diffusers get_timestep_embedding: the exponent
//   f32(-ln max_period) * i / (half - shift) is rounded as diffusers' f32 tensor ops round it, exp is taken
//   in double and rounded once, t * f is an f32 product, sin and cos are taken in double and rounded once: the
//   same steps as the CPU reference, so both agree to the last bit but for double-precision ties.
#include "common.cuh"

#define FRAC_1_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * erfcf(-x * FRAC_1_SQRT_2); }

template <typename T>
__device__ __forceinline__ void geglu_fwd(const T* x, T* y, long long rows, long long c) {
    const long long n = rows * c;
    for (long long i = gidx(); i < n; i += gstride()) {
        const long long r = i / c, j = i % c;
        const float h = to_f32(x[2 * c * r + j]), g = to_f32(x[2 * c * r + c + j]);
        y[i] = from_f32<T>(h * (g * normal_cdf(g)));
    }
}

template <typename T>
__device__ __forceinline__ void geglu_bwd(const T* x, const T* dy, T* dx, long long rows, long long c) {
    const long long n = rows * c;
    for (long long i = gidx(); i < n; i += gstride()) {
        const long long r = i / c, j = i % c;
        const float h = to_f32(x[2 * c * r + j]), g = to_f32(x[2 * c * r + c + j]), d = to_f32(dy[i]);
        const float cdf = normal_cdf(g);
        const float dgelu = cdf + g * INV_SQRT_2PI * expf(-0.5f * g * g);
        dx[2 * c * r + j] = from_f32<T>(d * (g * cdf));
        dx[2 * c * r + c + j] = from_f32<T>(d * h * dgelu);
    }
}

template <typename T>
__device__ __forceinline__ void timestep_embedding(const T* t, float* out, long long n, long long dim, int flip,
                                                   float shift, float max_period) {
    const long long half = dim / 2, total = n * dim;
    const float c = (float)(-log((double)max_period));
    const float denom = (float)half - shift;
    for (long long idx = gidx(); idx < total; idx += gstride()) {
        const long long row = idx / dim, col = idx % dim;
        if (col >= 2 * half) {
            out[idx] = 0.0f;  // odd dim: zero pad column
            continue;
        }
        // Output column col holds sin (first half) or cos (second half), swapped when flip.
        const long long i = col < half ? col : col - half;
        const bool first = col < half;
        const bool want_sin = flip ? !first : first;
        const float e = (c * (float)i) / denom;  // two f32 roundings, no contraction possible
        const float f = (float)exp((double)e);
        const double arg = (double)(to_f32(t[row]) * f);
        out[idx] = want_sin ? (float)sin(arg) : (float)cos(arg);
    }
}

INSTAGEN_KERNELS_FLOAT(geglu_fwd, , (const T* x, T* y, long long rows, long long c), geglu_fwd<T>(x, y, rows, c))
INSTAGEN_KERNELS_FLOAT(geglu_bwd, ,
                       (const T* x, const T* dy, T* dx, long long rows, long long c),
                       geglu_bwd<T>(x, dy, dx, rows, c))
INSTAGEN_KERNELS_FLOAT(timestep_embedding_fwd, ,
                       (const T* t, float* out, long long n, long long dim, int flip, float shift, float max_period),
                       timestep_embedding<T>(t, out, n, dim, flip, shift, max_period))
