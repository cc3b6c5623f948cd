// Data movement for every dtype: one strided copy per element size (copy_strided_b1/b2/b4/b8 move 1, 2, 4
// or 8-byte elements bit for bit), serving Reshape, Permute, BroadcastTo, Slice, Pad and Concat.
//
// The launcher (src/backend/launch/movement.rs) describes each op as a walk over an iteration shape: element
// `i` of the walk (row-major) has coordinates c[d] and reads x[in_off + sum c[d] * in_stride[d]] into
// y[out_off + sum c[d] * out_stride[d]]. Permute and BroadcastTo permute or zero the input strides, Slice
// offsets the input, Concat writes one input into its slab of the output (out strides of the whole output),
// and Pad walks the whole output and writes zeros where the coordinate along `bound_dim` falls outside
// [bound_lo, bound_hi) (the input offset there may be negative: it is never dereferenced). The host merges
// contiguous axes, lists them innermost first, and copies with wider elements where whole runs allow it
// (e.g. an f16 permute whose inner axis holds 40 contiguous elements moves 8-byte units).
#include "strided.cuh"

// Mirrored by `CopyShape` in src/backend/launch/movement.rs.
struct CopyShape {
    long long ndim;       // >= 1
    long long wide;       // 1: the walk may reach 2^31 elements, divide in 64 bits
    long long in_off;     // element offsets (units of the kernel's element size)
    long long out_off;
    long long bound_dim;  // -1, or the axis whose coordinate must lie in [bound_lo, bound_hi) to copy (else 0)
    long long bound_lo;
    long long bound_hi;
    long long pad_;
    long long shape[STRIDED_MAX_DIMS];
    long long in_stride[STRIDED_MAX_DIMS];
    long long out_stride[STRIDED_MAX_DIMS];
    unsigned magic[STRIDED_MAX_DIMS];
    unsigned shift[STRIDED_MAX_DIMS];
};

template <typename T, bool Wide>
__device__ __forceinline__ void copy_walk(const T* x, T* y, const CopyShape& s, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) {
        long long io = s.in_off, oo = s.out_off;
        bool inside = true;
        for_each_coord<Wide>(s, i, [&](int d, long long c) {
            io += c * s.in_stride[d];
            oo += c * s.out_stride[d];
            if (d == s.bound_dim) inside = c >= s.bound_lo && c < s.bound_hi;
        });
        if (inside) {
            y[oo] = x[io];
        } else {
            y[oo] = T(0);
        }
    }
}

template <typename T>
__device__ __forceinline__ void copy_strided(const T* x, T* y, const CopyShape& s, long long n) {
    if (s.wide) copy_walk<T, true>(x, y, s, n);
    else copy_walk<T, false>(x, y, s, n);
}

// x and y never overlap (the planner gives a movement op its own buffer; an in-place reshape launches nothing).
extern "C" __global__ void copy_strided_b1(const unsigned char* x, unsigned char* y, CopyShape s, long long n) {
    copy_strided(x, y, s, n);
}
extern "C" __global__ void copy_strided_b2(const unsigned short* x, unsigned short* y, CopyShape s, long long n) {
    copy_strided(x, y, s, n);
}
extern "C" __global__ void copy_strided_b4(const unsigned int* x, unsigned int* y, CopyShape s, long long n) {
    copy_strided(x, y, s, n);
}
extern "C" __global__ void copy_strided_b8(const unsigned long long* x, unsigned long long* y, CopyShape s,
                                           long long n) {
    copy_strided(x, y, s, n);
}
