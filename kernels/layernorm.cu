// Layer norm over the last axis (Op::LayerNorm) and its gradient w.r.t. x (Op::LayerNormBwd), as the CPU
// reference: biased variance, eps inside the square root, f32 arithmetic (compensated sum for the mean).
//
//   y  = (x - mean) * rstd [* w + b]                  rstd = 1 / sqrt(var + eps)
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))  g = dy [* w], xhat = (x - mean) * rstd
//
// Weight and bias are optional: null pointers mean no affine transform. Row groups of blockDim.x threads per
// row (one warp per row for short rows, one block per row otherwise; reduce_util.cuh). A row that fits in
// the threads' registers is read once (mean, variance about the mean, output); a longer row is read again
// for every pass. `vec` = 1 loads 16-byte packs (the launcher sets it when the row length is a multiple of
// the pack and every tensor is 16-byte aligned).
#include "reduce_util.cuh"

// Mean and rstd of a cached row (v: K packs of P values per thread, pack j = tx + k * bx valid when < np).
template <int P, int K>
__device__ __forceinline__ void cached_stats(const float* v, int np, long long dim, float eps, float& mean,
                                             float& rstd, KSum* smk, float* smf) {
    const int tx = threadIdx.x, bx = blockDim.x;
    KSum s = ksum_zero();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        if (tx + k * bx < np) {
#pragma unroll
            for (int i = 0; i < P; ++i) s = ksum_add(s, v[k * P + i]);
        }
    }
    mean = ksum_value(group_allreduce(s, KSumF(), smk)) / (float)dim;
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        if (tx + k * bx < np) {
#pragma unroll
            for (int i = 0; i < P; ++i) {
                const float c = v[k * P + i] - mean;
                q = fmaf(c, c, q);
            }
        }
    }
    const float var = group_allreduce(q, SumF(), smf) / (float)dim;
    rstd = 1.0f / sqrtf(var + eps);
}

// The same from global memory (two reads of the row).
template <typename T, int P>
__device__ __forceinline__ void streamed_stats(const T* xr, int np, long long dim, float eps, float& mean,
                                               float& rstd, KSum* smk, float* smf) {
    const int tx = threadIdx.x, bx = blockDim.x;
    KSum s = ksum_zero();
    for (int j = tx; j < np; j += bx) {
        float v[P];
        load_pack<T, P>(xr, j, v);
#pragma unroll
        for (int i = 0; i < P; ++i) s = ksum_add(s, v[i]);
    }
    mean = ksum_value(group_allreduce(s, KSumF(), smk)) / (float)dim;
    float q = 0.0f;
    for (int j = tx; j < np; j += bx) {
        float v[P];
        load_pack<T, P>(xr, j, v);
#pragma unroll
        for (int i = 0; i < P; ++i) {
            const float c = v[i] - mean;
            q = fmaf(c, c, q);
        }
    }
    const float var = group_allreduce(q, SumF(), smf) / (float)dim;
    rstd = 1.0f / sqrtf(var + eps);
}

// y for one pack: v holds x on entry.
template <typename T, int P>
__device__ __forceinline__ void ln_out_pack(float* v, const T* w, const T* b, int j, float mean, float rstd) {
#pragma unroll
    for (int i = 0; i < P; ++i) v[i] = (v[i] - mean) * rstd;
    if (w != nullptr) {
        float wv[P], bv[P];
        load_pack<T, P>(w, j, wv);
        load_pack<T, P>(b, j, bv);
#pragma unroll
        for (int i = 0; i < P; ++i) v[i] = fmaf(v[i], wv[i], bv[i]);
    }
}

template <typename T, int P>
__device__ __forceinline__ void ln_fwd_rows(const T* x, const T* w, const T* b, T* y, long long rows, long long dim,
                                            float eps, KSum* smk, float* smf) {
    constexpr int K = P == 1 ? ROW_CACHE / 2 : ROW_CACHE / P;  // packs cached per thread
    const int np = (int)(dim / P), tx = threadIdx.x, bx = blockDim.x;  // rows are < 2^31 elements
    const bool cached = np <= bx * K;
    for (long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y; row < rows;
         row += (long long)gridDim.x * blockDim.y) {
        const T* xr = x + row * dim;
        T* yr = y + row * dim;
        float mean, rstd;
        if (cached) {
            float v[K * P];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) load_pack<T, P>(xr, tx + k * bx, v + k * P);
            }
            cached_stats<P, K>(v, np, dim, eps, mean, rstd, smk, smf);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
                    ln_out_pack<T, P>(v + k * P, w, b, tx + k * bx, mean, rstd);
                    store_pack<T, P>(yr, tx + k * bx, v + k * P);
                }
            }
        } else {
            streamed_stats<T, P>(xr, np, dim, eps, mean, rstd, smk, smf);
            for (int j = tx; j < np; j += bx) {
                float v[P];
                load_pack<T, P>(xr, j, v);
                ln_out_pack<T, P>(v, w, b, j, mean, rstd);
                store_pack<T, P>(yr, j, v);
            }
        }
    }
}

// g = dy [* w] for one pack: gv holds dy on entry.
template <typename T, int P>
__device__ __forceinline__ void ln_grad_pack(float* gv, const T* w, int j) {
    if (w != nullptr) {
        float wv[P];
        load_pack<T, P>(w, j, wv);
#pragma unroll
        for (int i = 0; i < P; ++i) gv[i] *= wv[i];
    }
}

template <typename T, int P>
__device__ __forceinline__ void ln_bwd_rows(const T* x, const T* w, const T* dy, T* dx, long long rows,
                                            long long dim, float eps, KSum* smk, float* smf, F2* sm2) {
    constexpr int K = (P == 1 ? ROW_CACHE / 4 : ROW_CACHE / 2) / P;  // x and g cached: fewer packs than forward
    const int np = (int)(dim / P), tx = threadIdx.x, bx = blockDim.x;
    const bool cached = np <= bx * K;
    const float inv_dim = 1.0f / (float)dim;
    for (long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y; row < rows;
         row += (long long)gridDim.x * blockDim.y) {
        const T* xr = x + row * dim;
        const T* gr = dy + row * dim;
        T* dr = dx + row * dim;
        float mean, rstd;
        F2 acc;
        acc.a = 0.0f;  // sum(g)
        acc.b = 0.0f;  // sum(g * xhat)
        if (cached) {
            float v[K * P], g[K * P];
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
                    load_pack<T, P>(xr, tx + k * bx, v + k * P);
                    load_pack<T, P>(gr, tx + k * bx, g + k * P);
                    ln_grad_pack<T, P>(g + k * P, w, tx + k * bx);
                }
            }
            cached_stats<P, K>(v, np, dim, eps, mean, rstd, smk, smf);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
#pragma unroll
                    for (int i = 0; i < P; ++i) {
                        v[k * P + i] = (v[k * P + i] - mean) * rstd;  // xhat
                        acc.a += g[k * P + i];
                        acc.b = fmaf(g[k * P + i], v[k * P + i], acc.b);
                    }
                }
            }
            acc = group_allreduce(acc, F2SumF(), sm2);
            const float mg = acc.a * inv_dim, mgx = acc.b * inv_dim;
#pragma unroll
            for (int k = 0; k < K; ++k) {
                if (tx + k * bx < np) {
#pragma unroll
                    for (int i = 0; i < P; ++i) {
                        g[k * P + i] = rstd * (g[k * P + i] - mg - v[k * P + i] * mgx);
                    }
                    store_pack<T, P>(dr, tx + k * bx, g + k * P);
                }
            }
        } else {
            streamed_stats<T, P>(xr, np, dim, eps, mean, rstd, smk, smf);
            for (int j = tx; j < np; j += bx) {
                float v[P], g[P];
                load_pack<T, P>(xr, j, v);
                load_pack<T, P>(gr, j, g);
                ln_grad_pack<T, P>(g, w, j);
#pragma unroll
                for (int i = 0; i < P; ++i) {
                    const float xh = (v[i] - mean) * rstd;
                    acc.a += g[i];
                    acc.b = fmaf(g[i], xh, acc.b);
                }
            }
            acc = group_allreduce(acc, F2SumF(), sm2);
            const float mg = acc.a * inv_dim, mgx = acc.b * inv_dim;
            for (int j = tx; j < np; j += bx) {
                float v[P], g[P];
                load_pack<T, P>(xr, j, v);
                load_pack<T, P>(gr, j, g);
                ln_grad_pack<T, P>(g, w, j);
#pragma unroll
                for (int i = 0; i < P; ++i) g[i] = rstd * (g[i] - mg - (v[i] - mean) * rstd * mgx);
                store_pack<T, P>(dr, j, g);
            }
        }
    }
}

// ---- entry points (shared memory declared here: static __shared__ arrays inside kernels only) ---------

template <typename T>
__device__ __forceinline__ void ln_fwd(const T* x, const T* w, const T* b, T* y, long long rows, long long dim,
                                       float eps, int vec, KSum* smk, float* smf) {
    if (vec) {
        ln_fwd_rows<T, 16 / sizeof(T)>(x, w, b, y, rows, dim, eps, smk, smf);
    } else {
        ln_fwd_rows<T, 1>(x, w, b, y, rows, dim, eps, smk, smf);
    }
}

template <typename T>
__device__ __forceinline__ void ln_bwd(const T* x, const T* w, const T* dy, T* dx, long long rows, long long dim,
                                       float eps, int vec, KSum* smk, float* smf, F2* sm2) {
    if (vec) {
        ln_bwd_rows<T, 16 / sizeof(T)>(x, w, dy, dx, rows, dim, eps, smk, smf, sm2);
    } else {
        ln_bwd_rows<T, 1>(x, w, dy, dx, rows, dim, eps, smk, smf, sm2);
    }
}

INSTAGEN_KERNELS_FLOAT(layer_norm_fwd, __launch_bounds__(ROW_MAX_THREADS, 2),
                       (const T* x, const T* w, const T* b, T* y, long long rows, long long dim, float eps, int vec),
                       __shared__ KSum smk[32];
                       __shared__ float smf[32];
                       ln_fwd(x, w, b, y, rows, dim, eps, vec, smk, smf))
INSTAGEN_KERNELS_FLOAT(layer_norm_bwd, __launch_bounds__(ROW_MAX_THREADS, 2),
                       (const T* x, const T* w, const T* dy, T* dx, long long rows, long long dim, float eps, int vec),
                       __shared__ KSum smk[32];
                       __shared__ float smf[32];
                       __shared__ F2 sm2[32];
                       ln_bwd(x, w, dy, dx, rows, dim, eps, vec, smk, smf, sm2))

