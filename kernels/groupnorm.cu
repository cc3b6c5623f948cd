// Group norm over channels-last x [N, S (middle axes), C] (Op::GroupNorm, optional fused SiLU) and its
// gradient w.r.t. x (Op::GroupNormBwd), as the CPU reference:
//
//   z  = (x - mean) * rstd * w + b, y = silu(z) or z      rstd = 1 / sqrt(biased var + eps) per (n, group)
//   dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))  gw = dy * [silu'(z)] * w, xhat = (x - mean) * rstd
//
// One block per (n, group) (grid.x = N * groups), 512 threads. A group is S pixels of cpg = C / groups
// contiguous channels: thread t walks elements e = t, t + 512, ... of the group as (pixel, channel) with
// incremental carries (no division per element). Statistics as layernorm.cu: a compensated sum for the mean
// (kept as hi + lo), then the variance about it, x - mean formed as (x - hi) - lo, so groups whose spread is
// small next to their mean keep f32 accuracy (a one-pass Welford in f32 lost up to 100 ulps of dx on small
// groups in parity). x is read twice for the statistics and once for the output (the backward pass reads x
// and dy once more for its two sums).
// Why one block per group: the SD shapes have 64 groups per batch of 2 (enough blocks for a 64x64x320 map,
// whose group is 80 KB and stays in L2 between passes). A group split over several blocks would need a
// second kernel and scratch memory for the partial statistics, which `Launch` cannot express yet; the VAE's
// 512x512x128 maps (32 groups of 1M elements) would want that split.
#include "reduce_util.cuh"

#define GN_THREADS 512

// Block-wide sum of two floats; every thread gets the result.
__device__ __forceinline__ void sum2_block(float& a, float& b, float* sm) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, off);
        b += __shfl_xor_sync(0xffffffffu, b, off);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sm[2 * warp] = a;
        sm[2 * warp + 1] = b;
    }
    __syncthreads();
    a = 0.0f;
    b = 0.0f;
    for (int i = 0; i < nw; ++i) {
        a += sm[2 * i];
        b += sm[2 * i + 1];
    }
    __syncthreads();
}

// Walks the elements of one group owned by this thread: calls f(offset from the group's first element,
// channel within the group). The group's element e is pixel e / cpg, channel e % cpg, at pixel * C + channel.
template <typename F>
__device__ __forceinline__ void gn_walk(long long count, int cpg, long long c, F f) {
    const int step = blockDim.x;
    const int dp = step / cpg, dj = step - dp * cpg;  // pixel and channel advance per step
    long long p = threadIdx.x / cpg;
    int j = threadIdx.x - (int)p * cpg;
    for (long long e = threadIdx.x; e < count; e += step) {
        f(p * c + j, j);
        p += dp;
        j += dj;
        if (j >= cpg) {
            j -= cpg;
            ++p;
        }
    }
}

// Mean (as hi + lo) and rstd of the group starting at xg: a compensated sum for the mean, then the
// variance about it, with x - mean formed as (x - hi) - lo, which stays accurate when the spread is small
// next to the mean.
template <typename T>
__device__ __forceinline__ void gn_stats(const T* xg, long long count, int cpg, long long c, float eps, float& hi,
                                         float& lo, float& rstd, KSum* smk, float* smf) {
    KSum s = ksum_zero();
    gn_walk(count, cpg, c, [&](long long off, int) { s = ksum_add(s, to_f32(xg[off])); });
    s = group_allreduce(s, KSumF(), smk);
    // The mean: the sum's hi + lo divided by count, split again into a rounded part and a remainder.
    const float inv = 1.0f / (float)count;
    hi = ksum_value(s) * inv;
    lo = fmaf(-hi, (float)count, s.hi) + s.lo;  // sum - hi * count, nearly exact
    lo *= inv;
    float q = 0.0f;
    gn_walk(count, cpg, c, [&](long long off, int) {
        const float d = (to_f32(xg[off]) - hi) - lo;
        q = fmaf(d, d, q);
    });
    q = group_allreduce(q, SumF(), smf);
    rstd = rsqrtf(q * inv + eps);
}

template <typename T>
__device__ __forceinline__ void gn_fwd(const T* x, const T* w, const T* b, T* y, long long s, long long c, int groups,
                                       float eps, int silu) {
    __shared__ KSum smk[GN_THREADS / 32];
    __shared__ float smf[GN_THREADS / 32];
    const int cpg = (int)(c / groups);
    const long long ng = blockIdx.x, n = ng / groups, g = ng - n * groups;
    const long long base = n * s * c + g * cpg, count = s * cpg;
    float hi, lo, rstd;
    gn_stats(x + base, count, cpg, c, eps, hi, lo, rstd, smk, smf);
    const T* wg = w + g * cpg;
    const T* bg = b + g * cpg;
    gn_walk(count, cpg, c, [&](long long off, int j) {
        float z = ((to_f32(x[base + off]) - hi) - lo) * rstd * to_f32(wg[j]) + to_f32(bg[j]);
        if (silu) z = z * sigmoid_f32(z);
        y[base + off] = from_f32<T>(z);
    });
}

template <typename T>
__device__ __forceinline__ void gn_bwd(const T* x, const T* w, const T* b, const T* dy, T* dx, long long s,
                                       long long c, int groups, float eps, int silu) {
    __shared__ KSum smk[GN_THREADS / 32];
    __shared__ float smf[GN_THREADS / 32];
    __shared__ float sm2[2 * (GN_THREADS / 32)];
    const int cpg = (int)(c / groups);
    const long long ng = blockIdx.x, n = ng / groups, g = ng - n * groups;
    const long long base = n * s * c + g * cpg, count = s * cpg;
    float hi, lo, rstd;
    gn_stats(x + base, count, cpg, c, eps, hi, lo, rstd, smk, smf);
    const T* wg = w + g * cpg;
    const T* bg = b + g * cpg;
    // gw and xhat of one element.
    auto terms = [&](long long off, int j, float& gw, float& xhat) {
        xhat = ((to_f32(x[base + off]) - hi) - lo) * rstd;
        const float wv = to_f32(wg[j]);
        float gv = to_f32(dy[base + off]);
        if (silu) {
            const float z = fmaf(xhat, wv, to_f32(bg[j]));
            const float sg = sigmoid_f32(z);
            gv *= sg * (1.0f + z * (1.0f - sg));
        }
        gw = gv * wv;
    };
    float s1 = 0.0f, s2 = 0.0f;
    gn_walk(count, cpg, c, [&](long long off, int j) {
        float gw, xhat;
        terms(off, j, gw, xhat);
        s1 += gw;
        s2 = fmaf(gw, xhat, s2);
    });
    sum2_block(s1, s2, sm2);
    const float mg = s1 / (float)count, mgx = s2 / (float)count;
    gn_walk(count, cpg, c, [&](long long off, int j) {
        float gw, xhat;
        terms(off, j, gw, xhat);
        dx[base + off] = from_f32<T>(rstd * (gw - mg - xhat * mgx));
    });
}

INSTAGEN_KERNELS_FLOAT(group_norm_fwd, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, T* y, long long s, long long c, int groups, float eps,
                        int silu),
                       gn_fwd<T>(x, w, b, y, s, c, groups, eps, silu))
INSTAGEN_KERNELS_FLOAT(group_norm_bwd, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, const T* dy, T* dx, long long s, long long c, int groups,
                        float eps, int silu),
                       gn_bwd<T>(x, w, b, dy, dx, s, c, groups, eps, silu))
