// Reduction helpers shared by reduce.cu, softmax.cu and layernorm.cu: a compensated f32 sum, NaN-propagating
// max, warp / row-group / column-group all-reductions (shuffles + shared memory), and vector packs for
// 16-byte loads.
//
// Thread layouts used with these helpers:
//  - row groups: blockDim.x threads cooperate on one row. Either blockDim.x == 32 (one row per warp, any
//    blockDim.y, no block barrier) or blockDim.x is a multiple of 32 and blockDim.y == 1 (one row per block:
//    every thread of the block must call group_allreduce, it uses __syncthreads).
//  - column groups: blockDim = (32, ny); the 32 x-threads are 32 neighbouring columns and the ny y-threads
//    split the reduced axis; col_allreduce combines over y (every thread of the block must call it).
//
// All-reductions return the same value in every thread of a group: the combining functions here are
// commutative bit for bit, so a butterfly gives every lane the same result, and the shared-memory stages
// combine in a fixed order. Results depend on the launch geometry, which the launchers derive from shapes only.
#pragma once

#include "common.cuh"

// ---- scalars ------------------------------------------------------------------------------------

__device__ __forceinline__ float neg_inf_f32() { return __int_as_float(0xff800000); }

// max that propagates NaN (as the CPU reference: a NaN anywhere makes the result NaN).
__device__ __forceinline__ float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

// Compensated sum hi + lo (Knuth's TwoSum on every addition): close to the f64 reference for long sums
// and for sums that cancel.
struct KSum {
    float hi, lo;
};

__device__ __forceinline__ KSum ksum_zero() {
    KSum k;
    k.hi = 0.0f;
    k.lo = 0.0f;
    return k;
}

// s + e == a + b exactly (round-to-nearest, no fast math).
__device__ __forceinline__ void two_sum(float a, float b, float& s, float& e) {
    s = a + b;
    float bp = s - a;
    e = (a - (s - bp)) + (b - bp);
}

__device__ __forceinline__ KSum ksum_add(KSum k, float x) {
    float s, e;
    two_sum(k.hi, x, s, e);
    k.hi = s;
    k.lo += e;
    return k;
}

// Adds the product x * y exactly (its rounding error, from an FMA, goes to lo): dot products that cancel
// stay close to the f64 reference. __fmul_rn keeps the compiler from fusing the product into the sum.
__device__ __forceinline__ KSum ksum_add_prod(KSum k, float x, float y) {
    const float p = __fmul_rn(x, y);
    const float pe = __fmaf_rn(x, y, -p);
    k = ksum_add(k, p);
    k.lo += pe;
    return k;
}

__device__ __forceinline__ KSum ksum_merge(KSum a, KSum b) {
    float s, e;
    two_sum(a.hi, b.hi, s, e);
    KSum r;
    r.hi = s;
    r.lo = (a.lo + b.lo) + e;
    return r;
}

// The sum; an infinite or NaN hi makes lo meaningless (inf - inf), so it is returned alone.
__device__ __forceinline__ float ksum_value(KSum k) {
    float h = k.hi;
    return (h - h == 0.0f) ? h + k.lo : h;
}

// The sum as a rounded value plus the part rounding lost (0 when the sum is not finite), for callers that
// subtract it from something close to it: (a - hi) - lo.
__device__ __forceinline__ void ksum_split(KSum k, float& hi, float& lo) {
    hi = ksum_value(k);
    lo = (hi - hi == 0.0f) ? (k.hi - hi) + k.lo : 0.0f;
}

// Two floats reduced together (layer-norm backward: sum(g), sum(g * xhat)).
struct F2 {
    float a, b;
};

// ---- combining functors -------------------------------------------------------------------------

struct SumF {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxF {
    __device__ float operator()(float a, float b) const { return max_nan(a, b); }
};
struct KSumF {
    __device__ KSum operator()(KSum a, KSum b) const { return ksum_merge(a, b); }
};
struct F2SumF {
    __device__ F2 operator()(F2 x, F2 y) const {
        F2 r;
        r.a = x.a + y.a;
        r.b = x.b + y.b;
        return r;
    }
};

// ---- shuffles -----------------------------------------------------------------------------------

__device__ __forceinline__ float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ KSum shfl_xor(KSum v, int m) {
    v.hi = shfl_xor(v.hi, m);
    v.lo = shfl_xor(v.lo, m);
    return v;
}
__device__ __forceinline__ F2 shfl_xor(F2 v, int m) {
    v.a = shfl_xor(v.a, m);
    v.b = shfl_xor(v.b, m);
    return v;
}

// Butterfly over a full warp: every lane ends with the combination of all 32 lanes.
template <typename V, typename F>
__device__ __forceinline__ V warp_allreduce(V v, F f) {
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) v = f(v, shfl_xor(v, m));
    return v;
}

// All-reduce over the blockDim.x threads of a row group (see the layouts above). smem: 32 slots.
template <typename V, typename F>
__device__ __forceinline__ V group_allreduce(V v, F f, V* smem) {
    v = warp_allreduce(v, f);
    if (blockDim.x == 32) return v;
    const int warp = threadIdx.x >> 5;
    const int nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) smem[warp] = v;
    __syncthreads();
    V r = smem[0];
    for (int w = 1; w < nw; ++w) r = f(r, smem[w]);
    __syncthreads();  // smem may be reused by the next call
    return r;
}

// All-reduce over the blockDim.y threads of each column of a (32, ny) block. smem: 32 * ny slots.
template <typename V, typename F>
__device__ __forceinline__ V col_allreduce(V v, F f, V* smem) {
    smem[threadIdx.y * 32 + threadIdx.x] = v;
    __syncthreads();
    V r = smem[threadIdx.x];
    for (int k = 1; k < (int)blockDim.y; ++k) r = f(r, smem[k * 32 + threadIdx.x]);
    __syncthreads();
    return r;
}

// ---- vector packs -------------------------------------------------------------------------------

// P consecutive elements loaded or stored as one access (16 bytes when P = 16 / sizeof(T)); the launcher
// picks P > 1 only when every row starts 16-byte aligned.
template <typename T, int P>
struct alignas(sizeof(T) * P) Pack {
    T v[P];
};

template <typename T, int P>
__device__ __forceinline__ void load_pack(const T* base, long long pack, float* out) {
    Pack<T, P> p = reinterpret_cast<const Pack<T, P>*>(base)[pack];
#pragma unroll
    for (int i = 0; i < P; ++i) out[i] = to_f32(p.v[i]);
}

template <typename T, int P>
__device__ __forceinline__ void store_pack(T* base, long long pack, const float* in) {
    Pack<T, P> p;
#pragma unroll
    for (int i = 0; i < P; ++i) p.v[i] = from_f32<T>(in[i]);
    reinterpret_cast<Pack<T, P>*>(base)[pack] = p;
}

// Elements cached in registers per thread and tensor by the row kernels (softmax, layer norm).
#define ROW_CACHE 16
// Threads per row at most (the launchers use blocks of up to this many threads).
#define ROW_MAX_THREADS 512
