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
// Large groups with few of them (the launcher decides: SD's batch-1 64x64x320 maps, the VAE's 512x512x128 with
// 32 groups of 1M elements) are split over several blocks through the node's workspace: group_norm_part writes
// each chunk's statistics, group_norm_fwd_split merges them (f64, fixed order) and normalises its chunk; the
// backward adds group_norm_bwd_part (each chunk's two sums) before group_norm_bwd_split.
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

// Walks the elements [e0, e1) of one group owned by this thread: calls f(offset from the group's first
// element, channel within the group). The group's element e is pixel e / cpg, channel e % cpg, at
// pixel * C + channel; one division per thread, then incremental carries.
template <typename F>
__device__ __forceinline__ void gn_walk(long long e0, long long e1, int cpg, long long c, F f) {
    const int step = blockDim.x;
    const int dp = step / cpg, dj = step - dp * cpg;  // pixel and channel advance per step
    long long e = e0 + threadIdx.x;
    long long p = e / cpg;
    int j = (int)(e - p * cpg);
    for (; e < e1; e += step) {
        f(p * c + j, j);
        p += dp;
        j += dj;
        if (j >= cpg) {
            j -= cpg;
            ++p;
        }
    }
}

// Statistics of the elements [e0, e1) of the group starting at xg: their compensated sum, its mean as
// hi + lo, and the sum of squared deviations q about that mean, with x - mean formed as (x - hi) - lo,
// which stays accurate when the spread is small next to the mean.
template <typename T>
__device__ __forceinline__ void gn_range_stats(const T* xg, long long e0, long long e1, int cpg, long long c,
                                               KSum& sum, float& hi, float& lo, float& q, KSum* smk, float* smf) {
    KSum s = ksum_zero();
    gn_walk(e0, e1, cpg, c, [&](long long off, int) { s = ksum_add(s, to_f32(xg[off])); });
    s = group_allreduce(s, KSumF(), smk);
    // The mean: the sum's hi + lo divided by count, split again into a rounded part and a remainder.
    const float n = (float)(e1 - e0), inv = 1.0f / n;
    hi = ksum_value(s) * inv;
    lo = fmaf(-hi, n, s.hi) + s.lo;  // sum - hi * count, nearly exact
    lo *= inv;
    float acc = 0.0f;
    gn_walk(e0, e1, cpg, c, [&](long long off, int) {
        const float d = (to_f32(xg[off]) - hi) - lo;
        acc = fmaf(d, d, acc);
    });
    q = group_allreduce(acc, SumF(), smf);
    sum = s;
}

// The forward output of element `off` (channel j) of the group at x, from its mean hi + lo and rstd.
template <typename T>
__device__ __forceinline__ void gn_apply(const T* x, const T* wg, const T* bg, T* y, long long e0, long long e1,
                                         int cpg, long long c, float hi, float lo, float rstd, int silu) {
    gn_walk(e0, e1, cpg, c, [&](long long off, int j) {
        float z = ((to_f32(x[off]) - hi) - lo) * rstd * to_f32(wg[j]) + to_f32(bg[j]);
        if (silu) z = z * sigmoid_f32(z);
        y[off] = from_f32<T>(z);
    });
}

// gw = dy * [silu'(z)] * w and xhat of the element at off (channel j) of a group.
template <typename T>
__device__ __forceinline__ void gn_terms(const T* x, const T* wg, const T* bg, const T* dy, long long off, int j,
                                         float hi, float lo, float rstd, int silu, float& gw, float& xhat) {
    xhat = ((to_f32(x[off]) - hi) - lo) * rstd;
    const float wv = to_f32(wg[j]);
    float gv = to_f32(dy[off]);
    if (silu) {
        const float z = fmaf(xhat, wv, to_f32(bg[j]));
        const float sg = sigmoid_f32(z);
        gv *= sg * (1.0f + z * (1.0f - sg));
    }
    gw = gv * wv;
}

// sum(gw) and sum(gw * xhat) over the elements [e0, e1) of a group (every thread gets them).
template <typename T>
__device__ __forceinline__ void gn_bwd_sums(const T* x, const T* wg, const T* bg, const T* dy, long long e0,
                                            long long e1, int cpg, long long c, float hi, float lo, float rstd,
                                            int silu, float& s1, float& s2, float* sm2) {
    s1 = 0.0f;
    s2 = 0.0f;
    gn_walk(e0, e1, cpg, c, [&](long long off, int j) {
        float gw, xhat;
        gn_terms(x, wg, bg, dy, off, j, hi, lo, rstd, silu, gw, xhat);
        s1 += gw;
        s2 = fmaf(gw, xhat, s2);
    });
    sum2_block(s1, s2, sm2);
}

template <typename T>
__device__ __forceinline__ void gn_bwd_apply(const T* x, const T* wg, const T* bg, const T* dy, T* dx, long long e0,
                                             long long e1, int cpg, long long c, float hi, float lo, float rstd,
                                             int silu, float mg, float mgx) {
    gn_walk(e0, e1, cpg, c, [&](long long off, int j) {
        float gw, xhat;
        gn_terms(x, wg, bg, dy, off, j, hi, lo, rstd, silu, gw, xhat);
        dx[off] = from_f32<T>(rstd * (gw - mg - xhat * mgx));
    });
}

// ---- one block per (n, group) -------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void gn_fwd(const T* x, const T* w, const T* b, T* y, long long s, long long c, int groups,
                                       float eps, int silu) {
    __shared__ KSum smk[GN_THREADS / 32];
    __shared__ float smf[GN_THREADS / 32];
    const int cpg = (int)(c / groups);
    const long long ng = blockIdx.x, n = ng / groups, g = ng - n * groups;
    const long long base = n * s * c + g * cpg, count = s * cpg;
    KSum sum;
    float hi, lo, q;
    gn_range_stats(x + base, 0, count, cpg, c, sum, hi, lo, q, smk, smf);
    const float rstd = rsqrtf(q * (1.0f / (float)count) + eps);
    gn_apply(x + base, w + g * cpg, b + g * cpg, y + base, 0, count, cpg, c, hi, lo, rstd, silu);
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
    KSum sum;
    float hi, lo, q, s1, s2;
    gn_range_stats(x + base, 0, count, cpg, c, sum, hi, lo, q, smk, smf);
    const float rstd = rsqrtf(q * (1.0f / (float)count) + eps);
    const T *wg = w + g * cpg, *bg = b + g * cpg;
    gn_bwd_sums(x + base, wg, bg, dy + base, 0, count, cpg, c, hi, lo, rstd, silu, s1, s2, sm2);
    gn_bwd_apply(x + base, wg, bg, dy + base, dx + base, 0, count, cpg, c, hi, lo, rstd, silu, s1 / (float)count,
                 s2 / (float)count);
}

// ---- a group split over `splits` blocks ---------------------------------------------------------
// Block i works on chunk k = i % splits of group ng = i / splits: the group's elements
// [k * chunk, min((k + 1) * chunk, count)), none empty (the launcher sees to it). The workspace holds, per
// (group, chunk), two doubles: the chunk's sum and its squared deviations about its own mean (the statistics
// pass), and after them (backward) the chunk's sum(gw) and sum(gw * xhat). Every block that needs a group's
// totals merges that group's chunks itself, on one thread in f64 and chunk order (Chan's update for the
// variance: sum of m2_k + n_k (mean_k - mean)^2), so the result does not depend on block scheduling.

struct GnSplit {
    long long ng, base, count, e0, e1;
    int cpg, g;
};

__device__ __forceinline__ GnSplit gn_split(long long s, long long c, int groups, long long chunk, int splits) {
    GnSplit p;
    p.cpg = (int)(c / groups);
    p.ng = blockIdx.x / splits;
    const long long k = blockIdx.x - p.ng * splits, n = p.ng / groups;
    p.g = (int)(p.ng - n * groups);
    p.base = n * s * c + (long long)p.g * p.cpg;
    p.count = s * p.cpg;
    p.e0 = k * chunk;
    p.e1 = min(p.count, p.e0 + chunk);
    return p;
}

// The group's mean (hi + lo) and rstd from its chunks' partials (pairs at part).
__device__ __forceinline__ void gn_merge_stats(const double* part, long long count, long long chunk, int splits,
                                               float eps, float& hi, float& lo, float& rstd) {
    __shared__ float sh[3];
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int k = 0; k < splits; ++k) sum += part[2 * k];
        const double mean = sum / (double)count;
        double m2 = 0.0;
        for (int k = 0; k < splits; ++k) {
            const double nk = (double)min(chunk, count - k * chunk);
            const double d = part[2 * k] / nk - mean;
            m2 += part[2 * k + 1] + nk * d * d;
        }
        const float h = (float)mean;
        sh[0] = h;
        sh[1] = (float)(mean - (double)h);
        sh[2] = (float)(1.0 / sqrt(m2 / (double)count + (double)eps));
    }
    __syncthreads();
    hi = sh[0];
    lo = sh[1];
    rstd = sh[2];
}

template <typename T>
__device__ __forceinline__ void gn_part(const T* x, double* ws, long long s, long long c, int groups, long long chunk,
                                        int splits) {
    __shared__ KSum smk[GN_THREADS / 32];
    __shared__ float smf[GN_THREADS / 32];
    const GnSplit p = gn_split(s, c, groups, chunk, splits);
    KSum sum;
    float hi, lo, q;
    gn_range_stats(x + p.base, p.e0, p.e1, p.cpg, c, sum, hi, lo, q, smk, smf);
    if (threadIdx.x == 0) {
        ws[2 * blockIdx.x] = (double)sum.hi + (double)sum.lo;
        ws[2 * blockIdx.x + 1] = (double)q;
    }
}

template <typename T>
__device__ __forceinline__ void gn_fwd_split(const T* x, const T* w, const T* b, const double* ws, T* y, long long s,
                                             long long c, int groups, float eps, int silu, long long chunk,
                                             int splits) {
    const GnSplit p = gn_split(s, c, groups, chunk, splits);
    float hi, lo, rstd;
    gn_merge_stats(ws + 2 * p.ng * splits, p.count, chunk, splits, eps, hi, lo, rstd);
    gn_apply(x + p.base, w + p.g * p.cpg, b + p.g * p.cpg, y + p.base, p.e0, p.e1, p.cpg, c, hi, lo, rstd, silu);
}

// Backward, second pass: the chunk's sum(gw) and sum(gw * xhat), after the statistics, at ws + 2 * blocks.
template <typename T>
__device__ __forceinline__ void gn_bwd_part(const T* x, const T* w, const T* b, const T* dy, double* ws, long long s,
                                            long long c, int groups, float eps, int silu, long long chunk,
                                            int splits) {
    __shared__ float sm2[2 * (GN_THREADS / 32)];
    const GnSplit p = gn_split(s, c, groups, chunk, splits);
    float hi, lo, rstd, s1, s2;
    gn_merge_stats(ws + 2 * p.ng * splits, p.count, chunk, splits, eps, hi, lo, rstd);
    gn_bwd_sums(x + p.base, w + p.g * p.cpg, b + p.g * p.cpg, dy + p.base, p.e0, p.e1, p.cpg, c, hi, lo, rstd, silu,
                s1, s2, sm2);
    double* out = ws + 2 * (long long)gridDim.x;
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = (double)s1;
        out[2 * blockIdx.x + 1] = (double)s2;
    }
}

template <typename T>
__device__ __forceinline__ void gn_bwd_split(const T* x, const T* w, const T* b, const T* dy, const double* ws, T* dx,
                                             long long s, long long c, int groups, float eps, int silu,
                                             long long chunk, int splits) {
    __shared__ float sh[2];
    const GnSplit p = gn_split(s, c, groups, chunk, splits);
    float hi, lo, rstd;
    gn_merge_stats(ws + 2 * p.ng * splits, p.count, chunk, splits, eps, hi, lo, rstd);
    if (threadIdx.x == 0) {
        const double* part = ws + 2 * (long long)gridDim.x + 2 * p.ng * splits;
        double s1 = 0.0, s2 = 0.0;
        for (int k = 0; k < splits; ++k) {
            s1 += part[2 * k];
            s2 += part[2 * k + 1];
        }
        sh[0] = (float)(s1 / (double)p.count);
        sh[1] = (float)(s2 / (double)p.count);
    }
    __syncthreads();
    gn_bwd_apply(x + p.base, w + p.g * p.cpg, b + p.g * p.cpg, dy + p.base, dx + p.base, p.e0, p.e1, p.cpg, c, hi, lo,
                 rstd, silu, sh[0], sh[1]);
}

INSTAGEN_KERNELS_FLOAT(group_norm_fwd, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, T* y, long long s, long long c, int groups, float eps,
                        int silu),
                       gn_fwd<T>(x, w, b, y, s, c, groups, eps, silu))
INSTAGEN_KERNELS_FLOAT(group_norm_bwd, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, const T* dy, T* dx, long long s, long long c, int groups,
                        float eps, int silu),
                       gn_bwd<T>(x, w, b, dy, dx, s, c, groups, eps, silu))
INSTAGEN_KERNELS_FLOAT(group_norm_part, __launch_bounds__(GN_THREADS),
                       (const T* x, double* ws, long long s, long long c, int groups, long long chunk, int splits),
                       gn_part<T>(x, ws, s, c, groups, chunk, splits))
INSTAGEN_KERNELS_FLOAT(group_norm_fwd_split, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, const double* ws, T* y, long long s, long long c,
                        int groups, float eps, int silu, long long chunk, int splits),
                       gn_fwd_split<T>(x, w, b, ws, y, s, c, groups, eps, silu, chunk, splits))
INSTAGEN_KERNELS_FLOAT(group_norm_bwd_part, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, const T* dy, double* ws, long long s, long long c,
                        int groups, float eps, int silu, long long chunk, int splits),
                       gn_bwd_part<T>(x, w, b, dy, ws, s, c, groups, eps, silu, chunk, splits))
INSTAGEN_KERNELS_FLOAT(group_norm_bwd_split, __launch_bounds__(GN_THREADS),
                       (const T* x, const T* w, const T* b, const T* dy, const double* ws, T* dx, long long s,
                        long long c, int groups, float eps, int silu, long long chunk, int splits),
                       gn_bwd_split<T>(x, w, b, dy, ws, dx, s, c, groups, eps, silu, chunk, splits))
