// Softmax along one axis (Op::Softmax) and its backward (Op::SoftmaxBwd: dx = y * (dy - sum(dy * y))), with
// the tensor seen as [outer, dim, inner] and f32 arithmetic.
//
//  - softmax_{fwd,bwd}_<dt>: inner == 1 (the last axis), rows = outer. Row groups of blockDim.x threads
//    (one warp per row for short rows, one block per row otherwise; reduce_util.cuh). A row of up to
//    blockDim.x * K packs (K * pack = ROW_CACHE elements per thread, ROW_CACHE / 2 with scalar loads) is read
//    once into registers (max, exp and sum, scale, store); a longer row is read twice (an online max/sum
//    pass, then the output pass). `vec` = 1 loads 16-byte packs (the launcher sets it when dim is a multiple
//    of the pack and the tensors are 16-byte aligned). The backward reduces sum(y * dy) with products and
//    sums compensated (exact to about f64 for cancelling rows) and subtracts it in two parts.
//  - softmax_{fwd,bwd}_col_<dt>: inner > 1. Blocks of (32, ny) threads: 32 neighbouring columns (consecutive
//    inner positions: coalesced), ny threads splitting the softmax axis; an online max/sum pass, then output.
#include "reduce_util.cuh"

// Online softmax statistics: a = running max, b = sum of exp(x - a).
__device__ __forceinline__ void ms_add(F2& p, float x) {
    if (x > p.a) {
        p.b = p.b * expf(p.a - x) + 1.0f;
        p.a = x;
    } else if (x != neg_inf_f32()) {  // exp(-inf - max) = 0, also while the max is still -inf
        p.b += expf(x - p.a);
    }
}

struct MaxSumF {
    __device__ F2 operator()(F2 x, F2 y) const {
        F2 r;
        r.a = max_nan(x.a, y.a);
        r.b = (x.b == 0.0f ? 0.0f : x.b * expf(x.a - r.a)) + (y.b == 0.0f ? 0.0f : y.b * expf(y.a - r.a));
        return r;
    }
};

__device__ __forceinline__ F2 ms_empty() {
    F2 p;
    p.a = neg_inf_f32();
    p.b = 0.0f;
    return p;
}

// ---- last axis ----------------------------------------------------------------------------------

template <typename T, int P>
__device__ __forceinline__ void softmax_fwd_rows(const T* x, T* y, long long rows, long long dim, float* smf,
                                                 F2* smp) {
    constexpr int K = P == 1 ? ROW_CACHE / 2 : ROW_CACHE / P;  // packs cached per thread
    const int np = (int)(dim / P), tx = threadIdx.x, bx = blockDim.x;  // rows are < 2^31 elements
    const bool cached = np <= bx * K;
    for (long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y; row < rows;
         row += (long long)gridDim.x * blockDim.y) {
        const T* xr = x + row * dim;
        T* yr = y + row * dim;
        if (cached) {
            float v[ROW_CACHE];
            float mx = neg_inf_f32();
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
                    load_pack<T, P>(xr, tx + k * bx, v + k * P);
#pragma unroll
                    for (int i = 0; i < P; ++i) mx = max_nan(mx, v[k * P + i]);
                }
            }
            mx = group_allreduce(mx, MaxF(), smf);
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
#pragma unroll
                    for (int i = 0; i < P; ++i) {
                        v[k * P + i] = expf(v[k * P + i] - mx);
                        s += v[k * P + i];
                    }
                }
            }
            const float inv = 1.0f / group_allreduce(s, SumF(), smf);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
#pragma unroll
                    for (int i = 0; i < P; ++i) v[k * P + i] *= inv;
                    store_pack<T, P>(yr, tx + k * bx, v + k * P);
                }
            }
        } else {
            F2 p = ms_empty();
            for (int j = tx; j < np; j += bx) {
                float v[P];
                load_pack<T, P>(xr, j, v);
#pragma unroll
                for (int i = 0; i < P; ++i) ms_add(p, v[i]);
            }
            p = group_allreduce(p, MaxSumF(), smp);
            const float inv = 1.0f / p.b;
            for (int j = tx; j < np; j += bx) {
                float v[P];
                load_pack<T, P>(xr, j, v);
#pragma unroll
                for (int i = 0; i < P; ++i) v[i] = expf(v[i] - p.a) * inv;
                store_pack<T, P>(yr, j, v);
            }
        }
    }
}

template <typename T, int P>
__device__ __forceinline__ void softmax_bwd_rows(const T* y, const T* dy, T* dx, long long rows, long long dim,
                                                 KSum* smk) {
    constexpr int K = P == 1 ? ROW_CACHE / 2 : ROW_CACHE / P;
    const int np = (int)(dim / P), tx = threadIdx.x, bx = blockDim.x;
    const bool cached = np <= bx * K;
    for (long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y; row < rows;
         row += (long long)gridDim.x * blockDim.y) {
        const T* yr = y + row * dim;
        const T* gr = dy + row * dim;
        T* dr = dx + row * dim;
        KSum dot = ksum_zero();
        if (cached) {
            float yv[ROW_CACHE], gv[ROW_CACHE];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
                    load_pack<T, P>(yr, tx + k * bx, yv + k * P);
                    load_pack<T, P>(gr, tx + k * bx, gv + k * P);
#pragma unroll
                    for (int i = 0; i < P; ++i) dot = ksum_add_prod(dot, yv[k * P + i], gv[k * P + i]);
                }
            }
            float d, dl;  // sum(y * dy) = d + dl
            ksum_split(group_allreduce(dot, KSumF(), smk), d, dl);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
#pragma unroll
                    for (int i = 0; i < P; ++i) yv[k * P + i] = yv[k * P + i] * ((gv[k * P + i] - d) - dl);
                    store_pack<T, P>(dr, tx + k * bx, yv + k * P);
                }
            }
        } else {
            for (int j = tx; j < np; j += bx) {
                float yv[P], gv[P];
                load_pack<T, P>(yr, j, yv);
                load_pack<T, P>(gr, j, gv);
#pragma unroll
                for (int i = 0; i < P; ++i) dot = ksum_add_prod(dot, yv[i], gv[i]);
            }
            float d, dl;
            ksum_split(group_allreduce(dot, KSumF(), smk), d, dl);
            for (int j = tx; j < np; j += bx) {
                float yv[P], gv[P];
                load_pack<T, P>(yr, j, yv);
                load_pack<T, P>(gr, j, gv);
#pragma unroll
                for (int i = 0; i < P; ++i) yv[i] = yv[i] * ((gv[i] - d) - dl);
                store_pack<T, P>(dr, j, yv);
            }
        }
    }
}

// ---- any other axis -----------------------------------------------------------------------------

// Column c (0 <= c < outer * inner) starts at (c / inner) * dim * inner + c % inner, elements inner apart.
__device__ __forceinline__ long long col_base(long long c, long long dim, long long inner) {
    const long long o = c / inner;
    return o * dim * inner + (c - o * inner);
}

template <typename T>
__device__ __forceinline__ void softmax_fwd_cols(const T* x, T* y, long long outer, long long dim, long long inner,
                                                 F2* smp) {
    const long long ncols = outer * inner, tiles = (ncols + 31) / 32;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long c = tile * 32 + threadIdx.x;
        const bool ok = c < ncols;
        const long long base = ok ? col_base(c, dim, inner) : 0;
        F2 p = ms_empty();
        if (ok) {
            for (long long d = threadIdx.y; d < dim; d += blockDim.y) ms_add(p, to_f32(x[base + d * inner]));
        }
        p = col_allreduce(p, MaxSumF(), smp);
        if (ok) {
            const float inv = 1.0f / p.b;
            for (long long d = threadIdx.y; d < dim; d += blockDim.y) {
                const long long at = base + d * inner;
                y[at] = from_f32<T>(expf(to_f32(x[at]) - p.a) * inv);
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void softmax_bwd_cols(const T* y, const T* dy, T* dx, long long outer, long long dim,
                                                 long long inner, KSum* smk) {
    const long long ncols = outer * inner, tiles = (ncols + 31) / 32;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long c = tile * 32 + threadIdx.x;
        const bool ok = c < ncols;
        const long long base = ok ? col_base(c, dim, inner) : 0;
        KSum dot = ksum_zero();
        if (ok) {
            for (long long d = threadIdx.y; d < dim; d += blockDim.y) {
                const long long at = base + d * inner;
                dot = ksum_add_prod(dot, to_f32(y[at]), to_f32(dy[at]));
            }
        }
        float s, sl;
        ksum_split(col_allreduce(dot, KSumF(), smk), s, sl);
        if (ok) {
            for (long long d = threadIdx.y; d < dim; d += blockDim.y) {
                const long long at = base + d * inner;
                dx[at] = from_f32<T>(to_f32(y[at]) * ((to_f32(dy[at]) - s) - sl));
            }
        }
    }
}

// ---- entry points -------------------------------------------------------------------------------

// Shared memory is declared in the entry points (static __shared__ arrays inside kernels only).
template <typename T>
__device__ __forceinline__ void softmax_fwd(const T* x, T* y, long long rows, long long dim, int vec, float* smf,
                                            F2* smp) {
    if (vec) {
        softmax_fwd_rows<T, 16 / sizeof(T)>(x, y, rows, dim, smf, smp);
    } else {
        softmax_fwd_rows<T, 1>(x, y, rows, dim, smf, smp);
    }
}

template <typename T>
__device__ __forceinline__ void softmax_bwd(const T* y, const T* dy, T* dx, long long rows, long long dim, int vec,
                                            KSum* smk) {
    if (vec) {
        softmax_bwd_rows<T, 16 / sizeof(T)>(y, dy, dx, rows, dim, smk);
    } else {
        softmax_bwd_rows<T, 1>(y, dy, dx, rows, dim, smk);
    }
}

INSTAGEN_KERNELS_FLOAT(softmax_fwd, __launch_bounds__(ROW_MAX_THREADS, 2),
                       (const T* x, T* y, long long rows, long long dim, int vec),
                       __shared__ float smf[32];
                       __shared__ F2 smp[32];
                       softmax_fwd(x, y, rows, dim, vec, smf, smp))
INSTAGEN_KERNELS_FLOAT(softmax_bwd, __launch_bounds__(ROW_MAX_THREADS, 2),
                       (const T* y, const T* dy, T* dx, long long rows, long long dim, int vec),
                       __shared__ KSum smk[32];
                       softmax_bwd(y, dy, dx, rows, dim, vec, smk))
INSTAGEN_KERNELS_FLOAT(softmax_fwd_col, ,
                       (const T* x, T* y, long long outer, long long dim, long long inner),
                       __shared__ F2 smp[32 * 32];
                       softmax_fwd_cols(x, y, outer, dim, inner, smp))
INSTAGEN_KERNELS_FLOAT(softmax_bwd_col, ,
                       (const T* y, const T* dy, T* dx, long long outer, long long dim, long long inner),
                       __shared__ KSum smk[32 * 32];
                       softmax_bwd_cols(y, dy, dx, outer, dim, inner, smk))

