// Helpers shared by elementwise.cu and movement.cu: vector packs for 16-byte loads and stores, and the
// division by a run-time divisor that turns a flat element index into per-axis coordinates.
//
// Strided kernels take a struct (by value) whose axes the host has already merged (adjacent axes that are
// contiguous for every operand become one) and listed INNERMOST FIRST: axis 0 is the fastest-varying one.
// Every loop over axes is unrolled to MAX_DIMS with a `break`, so the struct's arrays are indexed by constants
// and stay in the parameter bank (no local-memory copy of the struct).
#pragma once

#include "common.cuh"

#define STRIDED_MAX_DIMS 8

// `V` elements of `T` moved as one aligned access (ld/st.global.v4 for 16 bytes).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
    T v[V];
};

__device__ __forceinline__ bool is_aligned(const void* p, unsigned long long bytes) {
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}

// floor(n / d) for n < 2^31 and 1 <= d < 2^31 with the host's (magic, shift) for d (Granlund-Montgomery, as in
// src/backend/launch/movement.rs `magic_div`): a multiply-high, an add and a shift instead of a ~20-instruction
// integer division. The add is done in 64 bits, so it cannot overflow.
__device__ __forceinline__ unsigned div_magic(unsigned n, unsigned magic, unsigned shift) {
    unsigned long long hi = ((unsigned long long)n * (unsigned long long)magic) >> 32;
    return (unsigned)((hi + (unsigned long long)n) >> shift);
}

// Coordinate walk: calls `visit(axis, coordinate)` for each axis of flat index `i` (row-major over the axes,
// axis 0 innermost) and returns nothing; the caller accumulates offsets. `Wide` selects 64-bit division
// (any size) instead of the 32-bit magic division (every index < 2^31).
template <bool Wide, typename S, typename F>
__device__ __forceinline__ void for_each_coord(const S& s, long long i, F visit) {
    if (Wide) {
        long long rem = i;
#pragma unroll
        for (int d = 0; d < STRIDED_MAX_DIMS; ++d) {
            if (d + 1 >= s.ndim) {
                visit(d, rem);
                break;
            }
            long long q = rem / s.shape[d];
            visit(d, rem - q * s.shape[d]);
            rem = q;
        }
    } else {
        unsigned rem = (unsigned)i;
#pragma unroll
        for (int d = 0; d < STRIDED_MAX_DIMS; ++d) {
            if (d + 1 >= s.ndim) {
                visit(d, (long long)rem);
                break;
            }
            unsigned q = div_magic(rem, s.magic[d], s.shift[d]);
            visit(d, (long long)(rem - q * (unsigned)s.shape[d]));
            rem = q;
        }
    }
}
