// Top-k indices along the last axis (Op::TopK) and torch.gather with its backward (Op::Gather, Op::GatherBwd).
//
//  - topk_fwd_<dt>: one block per row, x seen as [rows, n]. Scores become 32-bit keys whose unsigned order is
//    the score order (NaN largest, -0 == +0; detection::boxes::score_key). A radix select finds the k-th largest
//    key T: four passes of 8-bit digits, each a 256-bin shared-memory histogram of the keys that match the
//    digits chosen so far, then one thread walks the bins from the top. A collecting pass then takes every key
//    > T and the first (k - #{> T}) keys == T in index order (a block-wide ballot scan per blockDim chunk), as
//    64-bit (key << 32 | ~index) words into dynamic shared memory (k rounded up to a power of two P, padded with
//    0), and a block-wide bitonic sort orders them descending: key descending, ties to the lower index.
//    Cost: five reads of the row plus O(P log^2 P / blockDim) shared-memory steps; P <= 4096 (32 KiB), so
//    k <= 4096 on the GPU (the launcher refuses larger k).
//  - gather_fwd_<idx dt>_<x dt>: one thread per output element; shapes right-aligned to GATHER_DIMS axes in a
//    by-value struct (loops unrolled, so the struct stays in the parameter bank). An index out of range
//    writes 0 (the CPU reference errors instead).
//  - gather_bwd_<idx dt>_<dt>: one thread per dx element [outer, size, inner], summing (f32, index order) the dy
//    elements of its column whose index equals its position: deterministic, no atomics, O(len) per element.
#include "common.cuh"

// ---- top-k ------------------------------------------------------------------------------------------------

__device__ __forceinline__ unsigned topk_key(float v) {
    if (v != v) return 0xffffffffu;
    const unsigned b = v == 0.0f ? 0u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ void topk_row(const T* x, long long* out, long long rows, int n, int k, int p2) {
    INSTAGEN_DYNAMIC_SMEM(unsigned long long, cand);  // p2 words
    __shared__ unsigned hist[256];
    __shared__ unsigned wsum[32];
    __shared__ unsigned sel[2];  // chosen digit, remaining rank
    __shared__ unsigned n_gt;
    const int tid = threadIdx.x, bd = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = (bd + 31) >> 5;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * (long long)n;
        // Radix select of the k-th largest key.
        unsigned prefix = 0u, mask = 0u, rank = (unsigned)k;  // rank: 1-based rank wanted among matching keys
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += bd) hist[b] = 0u;
            __syncthreads();
            for (int i = tid; i < n; i += bd) {
                const unsigned key = topk_key(to_f32(xr[i]));
                if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                unsigned cum = 0u;
                int d = 255;
                for (; d > 0; --d) {
                    if (cum + hist[d] >= rank) break;
                    cum += hist[d];
                }
                sel[0] = (unsigned)d;
                sel[1] = rank - cum;
            }
            __syncthreads();
            prefix |= sel[0] << shift;
            mask |= 255u << shift;
            rank = sel[1];
            __syncthreads();  // sel and hist are rewritten next pass
        }
        // prefix = T; rank = how many keys == T to take (the lowest indices).
        const unsigned thr = prefix, need_eq = rank, gt_total = (unsigned)k - rank;
        for (int t = tid; t < p2; t += bd) cand[t] = 0ull;
        if (tid == 0) n_gt = 0u;
        __syncthreads();
        unsigned eq_base = 0u;
        for (int base = 0; base < n; base += bd) {
            const int i = base + tid;
            const unsigned key = i < n ? topk_key(to_f32(xr[i])) : 0u;
            const bool eq = i < n && key == thr;
            const unsigned ball = __ballot_sync(0xffffffffu, eq);
            if (lane == 0) wsum[warp] = (unsigned)__popc(ball);
            __syncthreads();
            unsigned before = 0u, total = 0u;
            for (int w = 0; w < nw; ++w) {
                const unsigned c = wsum[w];
                before += w < warp ? c : 0u;
                total += c;
            }
            const unsigned long long cw = ((unsigned long long)key << 32) | (unsigned long long)(~(unsigned)i);
            if (i < n && key > thr) {
                const unsigned at = atomicAdd(&n_gt, 1u);
                cand[at] = cw;
            } else if (eq) {
                const unsigned r = eq_base + before + (unsigned)__popc(ball & ((1u << lane) - 1u));
                if (r < need_eq) cand[gt_total + r] = cw;
            }
            eq_base += total;
            __syncthreads();  // wsum is rewritten next chunk
        }
        // Bitonic sort of p2 words, descending.
        for (int size = 2; size <= p2; size <<= 1) {
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int t = tid; t < (p2 >> 1); t += bd) {
                    const int lo = 2 * t - (t & (stride - 1)), hi = lo + stride;
                    const bool desc = (lo & size) == 0;
                    const unsigned long long a = cand[lo], b = cand[hi];
                    if ((a < b) == desc) {
                        cand[lo] = b;
                        cand[hi] = a;
                    }
                }
                __syncthreads();
            }
        }
        for (int t = tid; t < k; t += bd) out[row * k + t] = (long long)(~(unsigned)(cand[t] & 0xffffffffull));
        __syncthreads();  // cand is rewritten for the next row
    }
}

// ---- gather -------------------------------------------------------------------------------------------------

#define GATHER_DIMS 6
// Shapes right-aligned to GATHER_DIMS axes (leading axes of size 1, x stride 0).
struct GatherShape {
    long long ishape[GATHER_DIMS];  // idx (= output) shape
    long long xstride[GATHER_DIMS]; // x strides (elements)
    long long axis;                 // after right-alignment
    long long xsize;                // x's size along the axis
    long long total;                // output elements
};

template <typename I, typename U>
__device__ __forceinline__ void gather_fwd(const U* x, const I* idx, U* out, GatherShape s) {
    for (long long e = gidx(); e < s.total; e += gstride()) {
        long long rem = e, off = 0;
        const long long ix = (long long)idx[e];
        bool ok = ix >= 0 && ix < s.xsize;
#pragma unroll
        for (int q = 0; q < GATHER_DIMS; ++q) {
            const int d = GATHER_DIMS - 1 - q;
            const long long c = rem % s.ishape[d];
            rem /= s.ishape[d];
            off += (d == s.axis ? ix : c) * s.xstride[d];
        }
        out[e] = ok ? x[off] : (U)0;
    }
}

template <typename I, typename T>
__device__ __forceinline__ void gather_bwd(const I* idx, const T* dy, T* dx, long long outer, long long len,
                                           long long size, long long inner) {
    const long long total = outer * size * inner;
    for (long long e = gidx(); e < total; e += gstride()) {
        const long long t = e % inner, r = e / inner;
        const long long s = r % size, o = r / size;
        const long long base = o * len * inner + t;
        float acc = 0.0f;
        for (long long j = 0; j < len; ++j) {
            if ((long long)idx[base + j * inner] == s) acc += to_f32(dy[base + j * inner]);
        }
        dx[e] = from_f32<T>(acc);
    }
}

// ---- entry points -------------------------------------------------------------------------------------------

INSTAGEN_KERNELS_FLOAT(topk_fwd, __launch_bounds__(1024),
                       (const T* x, long long* out, long long rows, int n, int k, int p2),
                       topk_row(x, out, rows, n, k, p2))

// gather_fwd_<index type>_<dtype> moves bits: T is the unsigned integer of the dtype's size.
#define GATHER_FWD(NAME, T_, I)                                                                                \
    INSTAGEN_KERNEL(NAME, T_, , (const T* x, const I* idx, T* out, GatherShape s), gather_fwd(x, idx, out, s))
#define GATHER_FWD_ALL(IDX, I)                                                                                 \
    GATHER_FWD(gather_fwd_##IDX##_f32, unsigned, I)                                                            \
    GATHER_FWD(gather_fwd_##IDX##_f16, unsigned short, I)                                                      \
    GATHER_FWD(gather_fwd_##IDX##_bf16, unsigned short, I)                                                     \
    GATHER_FWD(gather_fwd_##IDX##_i32, unsigned, I)                                                            \
    GATHER_FWD(gather_fwd_##IDX##_i64, unsigned long long, I)
GATHER_FWD_ALL(i32, int)
GATHER_FWD_ALL(i64, long long)
#undef GATHER_FWD_ALL
#undef GATHER_FWD

INSTAGEN_KERNELS_FLOAT(gather_bwd_i32, ,
                       (const int* idx, const T* dy, T* dx, long long outer, long long len, long long size,
                        long long inner),
                       gather_bwd(idx, dy, dx, outer, len, size, inner))

INSTAGEN_KERNELS_FLOAT(gather_bwd_i64, ,
                       (const long long* idx, const T* dy, T* dx, long long outer, long long len, long long size,
                        long long inner),
                       gather_bwd(idx, dy, dx, outer, len, size, inner))

