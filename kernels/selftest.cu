// Self-tests of the CUDA emulator (kernels/emu) and of the portable wrappers in common.cuh.
//
// tests/emu_runtime.rs runs them on the CPU; NVRTC compiles them like every kernel, which checks the inline
// PTX of the wrappers with ptxas. Some are wrong on purpose (divergent barriers, out-of-bounds accesses, a
// huge stack frame): the emulator must turn those into errors.
#include "common.cuh"

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- execution model --------------------------------------------------------------------------------------

// partial[block] = sum of this block's grid-stride share of x: shuffles, then shared memory across warps, then
// shuffles in warp 0 while the other warps have exited. blockDim.x is a multiple of 32.
extern "C" __global__ void selftest_block_sum(const float* x, float* partial, long long n) {
    __shared__ float warp_sums[32];
    float s = 0.0f;
    for (long long i = gidx(); i < n; i += gstride()) s += x[i];
    s = warp_sum(s);
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) {
        s = warp_sum(lane < blockDim.x / 32 ? warp_sums[lane] : 0.0f);
        if (lane == 0) partial[blockIdx.x] = s;
    }
}

// y[block, t] = sum of x[block, :], reduced by warp 0 alone while the other warps wait at __syncthreads.
extern "C" __global__ void selftest_first_warp_sum(const float* x, float* y) {
    __shared__ float total;
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    if (t < 32) {
        float s = 0.0f;
        for (unsigned i = t; i < blockDim.x; i += 32) s += x[base + i];
        s = warp_sum(s);
        if (t == 0) total = s;
    }
    __syncthreads();
    y[base + t] = total;
}

// y[block, t] = x[block, blockDim.x - 1 - t] through dynamic shared memory.
extern "C" __global__ void selftest_reverse(const float* x, float* y) {
    INSTAGEN_DYNAMIC_SMEM(float, s);
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[blockDim.x - 1 - t];
}

// out[global linear id] = thread and block indices packed 5+5+4 | 4+4+4 bits; dims = gridDim, blockDim.
extern "C" __global__ void selftest_indices(unsigned* out, unsigned* dims) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[block * blockDim.x * blockDim.y * blockDim.z + thread] =
        threadIdx.x | threadIdx.y << 5 | threadIdx.z << 10 | blockIdx.x << 14 | blockIdx.y << 18 | blockIdx.z << 22;
    if (block == 0 && thread == 0) {
        dims[0] = gridDim.x;
        dims[1] = gridDim.y;
        dims[2] = gridDim.z;
        dims[3] = blockDim.x;
        dims[4] = blockDim.y;
        dims[5] = blockDim.z;
    }
}

// out[t * 8 + k]: shuffles (idx, up, down with width 16, xor), votes and a half-warp mask, for 64 threads.
extern "C" __global__ void selftest_warp_ops(int* out) {
    const int t = (int)threadIdx.x, lane = t % 32;
    int* o = out + t * 8;
    o[0] = __shfl_sync(0xffffffffu, t, 3);
    o[1] = __shfl_up_sync(0xffffffffu, t, 2);
    o[2] = __shfl_down_sync(0xffffffffu, t, 5, 16);
    o[3] = __shfl_xor_sync(0xffffffffu, t, 9);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __any_sync(0xffffffffu, lane == 7 && t < 32);
    o[6] = __all_sync(0xffffffffu, lane < 31 || t < 32);
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    __syncwarp(half);
    o[7] = __shfl_sync(half, t * 10, 1, 16);
}

// ---- deliberate errors ------------------------------------------------------------------------------------

// Half the threads return before a __syncthreads the other half waits at.
extern "C" __global__ void selftest_divergent_sync(float* y) {
    if (threadIdx.x >= blockDim.x / 2) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Odd and even threads wait at two different __syncthreads.
extern "C" __global__ void selftest_split_sync(float* y) {
    if (threadIdx.x % 2) {
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.0f;
    }
}

// Lane 5 exits before a full-warp shuffle.
extern "C" __global__ void selftest_warp_exit(float* y) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 5) return;
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    y[threadIdx.x] = v;
}

// mode 0: lanes 0-15 wait at __syncthreads while lanes 16-31 wait at a full-warp shuffle (a deadlock);
// mode 1: even lanes shuffle while odd lanes vote, both with the full mask.
extern "C" __global__ void selftest_deadlock(int* y, int mode) {
    const int t = (int)threadIdx.x;
    if (mode == 0) {
        if (t < 16) __syncthreads();
        else y[t] = __shfl_sync(0xffffffffu, t, 0);
    } else {
        y[t] = t % 2 ? (int)__ballot_sync(0xffffffffu, 1) : __shfl_sync(0xffffffffu, t, 0);
    }
}

// y[i + write_off] = x[i + read_off] for i < n: an offset of 1 overruns by one element.
extern "C" __global__ void selftest_copy(const float* x, float* y, int n, int read_off, int write_off) {
    for (long long i = gidx(); i < n; i += gstride()) y[i + write_off] = x[i + read_off];
}

// A 80 KiB stack frame (more than a fibre stack under the emulator).
extern "C" __global__ void selftest_stack_overflow(float* y, int n) {
    volatile float big[20480];
    for (int i = 0; i < n && i < 20480; ++i) big[i] = (float)i;
    y[0] = big[n > 0 ? n - 1 : 0];
}

// ---- atomics ----------------------------------------------------------------------------------------------

// hist[b] += 1 per element (global float atomics); hist_smem the same through shared int counters.
extern "C" __global__ void selftest_histogram(const int* idx, float* hist, float* hist_smem, long long n) {
    __shared__ int counts[64];
    for (unsigned b = threadIdx.x; b < 64; b += blockDim.x) counts[b] = 0;
    __syncthreads();
    for (long long i = gidx(); i < n; i += gstride()) {
        const int b = idx[i];
        atomicAdd(&hist[b], 1.0f);
        atomicAdd(&counts[b], 1);
    }
    __syncthreads();
    for (unsigned b = threadIdx.x; b < 64; b += blockDim.x) atomicAdd(&hist_smem[b], (float)counts[b]);
}

// Every thread (global id g) applies one of each atomic; tests/emu_runtime.rs knows the expected totals.
extern "C" __global__ void selftest_atomics(int* i32, unsigned* u32, unsigned long long* u64, double* f64) {
    const unsigned g = (unsigned)gidx();
    atomicMax(&i32[0], (int)g);
    atomicMin(&i32[1], -(int)g);
    atomicSub(&i32[2], 1);
    atomicAdd(&i32[3], 3);
    atomicMax(&u32[0], g);
    atomicMin(&u32[1], g);
    unsigned seen, old = atomicOr(&u32[2], 0u);
    do {   // += 2 by compare-and-swap
        seen = old;
        old = atomicCAS(&u32[2], seen, seen + 2u);
    } while (old != seen);
    atomicExch(&u32[3], g);
    atomicAdd(&u32[4], 1u);
    atomicAdd(&u64[0], 1ull);
    atomicAdd(&f64[0], 0.5);
}

// ---- 16-bit floats ----------------------------------------------------------------------------------------

extern "C" __global__ void selftest_f16_decode(const __half* h, const __nv_bfloat16* b, float* hf, float* bf,
                                               long long n) {
    for (long long i = gidx(); i < n; i += gstride()) {
        hf[i] = __half2float(h[i]);
        bf[i] = __bfloat162float(b[i]);
    }
}

extern "C" __global__ void selftest_f16_encode(const float* f, __half* h, __nv_bfloat16* b, __half* h2,
                                               __nv_bfloat16* b2, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) {
        h[i] = __float2half_rn(f[i]);
        b[i] = __float2bfloat16_rn(f[i]);
        h2[i] = __float2half(f[i]);
        b2[i] = __float2bfloat16(f[i]);
    }
}

// out[6i..6i+6] = a+b, a*b, fma(a, b, c), max(a, b), |a|, a-b (the operator) for f16 or bf16.
template <typename T> __device__ __forceinline__ void ops16(const T* a, const T* b, const T* c, T* out, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) {
        T* o = out + 6 * i;
        o[0] = __hadd(a[i], b[i]);
        o[1] = __hmul(a[i], b[i]);
        o[2] = __hfma(a[i], b[i], c[i]);
        o[3] = __hmax(a[i], b[i]);
        o[4] = __habs(a[i]);
        o[5] = a[i] - b[i];
    }
}
extern "C" __global__ void selftest_f16_ops(const __half* a, const __half* b, const __half* c, __half* out,
                                            long long n) {
    ops16(a, b, c, out, n);
}
extern "C" __global__ void selftest_bf16_ops(const __nv_bfloat16* a, const __nv_bfloat16* b,
                                             const __nv_bfloat16* c, __nv_bfloat16* out, long long n) {
    ops16(a, b, c, out, n);
}

// Pair intrinsics on (f[2i], f[2i+1]); out[6i..6i+6] = both halves round-tripped through __half2, swapped
// through __low2half/__high2half/__halves2half2, and through __nv_bfloat162.
extern "C" __global__ void selftest_f16_pairs(const float* f, float* out, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) {
        const float2 v = make_float2(f[2 * i], f[2 * i + 1]);
        const float2 r = __half22float2(__float22half2_rn(v));
        const __half2 h = __floats2half2_rn(v.x, v.y);
        const __half2 s = __halves2half2(__high2half(h), __low2half(h));
        const __nv_bfloat162 b = __floats2bfloat162_rn(v.x, v.y);
        float* o = out + 6 * i;
        o[0] = r.x;
        o[1] = r.y;
        o[2] = __half2float(__low2half(s));
        o[3] = __half2float(__high2half(s));
        o[4] = __low2float(b);
        o[5] = __high2float(b);
    }
}

// ---- tensor cores and cp.async ----------------------------------------------------------------------------

// One warp: d (16x8, row-major) = A (16x16) * B (16x8) + c, with A and B staged in shared memory and loaded by
// ldmatrix. mode 0: a_src = A row-major, b_src = B^T row-major (8x16), ldmatrix_x4 + ldmatrix_x2;
// mode 1: a_src = A^T, b_src = B row-major, ldmatrix_x4_trans + ldmatrix_x2_trans; mode 2: as mode 0 with B
// loaded by two ldmatrix_x1.
template <typename T, bool BF16>
__device__ __forceinline__ void mma_tile(const T* a_src, const T* b_src, const float* c, float* d, int mode) {
    __shared__ __align__(16) T sa[16 * 16];
    __shared__ __align__(16) T sb[16 * 8];
    const unsigned lane = threadIdx.x;
    for (unsigned i = lane; i < 16 * 16; i += 32) sa[i] = a_src[i];
    for (unsigned i = lane; i < 16 * 8; i += 32) sb[i] = b_src[i];
    __syncthreads();
    const unsigned m = lane / 8, r = lane % 8;
    unsigned a[4], b[2];
    if (mode == 1) {
        ldmatrix_x4_trans(a, &sa[((m >> 1) * 8 + r) * 16 + (m & 1) * 8]);
        ldmatrix_x2_trans(b, &sb[(lane % 16) * 8]);
    } else {
        ldmatrix_x4(a, &sa[((m & 1) * 8 + r) * 16 + (m >> 1) * 8]);
        if (mode == 0) {
            ldmatrix_x2(b, &sb[r * 16 + (m & 1) * 8]);
        } else {
            ldmatrix_x1(&b[0], &sb[r * 16]);
            ldmatrix_x1(&b[1], &sb[r * 16 + 8]);
        }
    }
    const unsigned g = lane / 4, q = lane % 4;
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = c[(g + (i & 2 ? 8 : 0)) * 8 + q * 2 + (i & 1)];
    if constexpr (BF16) mma_m16n8k16_bf16(acc, a, b, acc);
    else mma_m16n8k16_f16(acc, a, b, acc);
    for (int i = 0; i < 4; ++i) d[(g + (i & 2 ? 8 : 0)) * 8 + q * 2 + (i & 1)] = acc[i];
}
extern "C" __global__ void selftest_mma_f16(const __half* a, const __half* b, const float* c, float* d, int mode) {
    mma_tile<__half, false>(a, b, c, d, mode);
}
extern "C" __global__ void selftest_mma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c,
                                             float* d, int mode) {
    mma_tile<__nv_bfloat16, true>(a, b, c, d, mode);
}

// Each block moves 8 * blockDim.x floats through dynamic shared memory (2 * 16 * blockDim.x bytes) in two
// cp.async groups; the second uses the zero-fill form (odd threads copy 8 of 16 bytes). Each half is read
// back in reverse thread order after its wait; skip_wait leaves out the first wait (wrong on purpose).
extern "C" __global__ void selftest_cp_async(const float* src, float* dst, int skip_wait) {
    INSTAGEN_DYNAMIC_SMEM(float, s);
    const unsigned t = threadIdx.x, nt = blockDim.x, rev = nt - 1 - t;
    const float* g = src + (long long)blockIdx.x * nt * 8;
    float* o = dst + (long long)blockIdx.x * nt * 8;
    cp_async_16(&s[t * 4], &g[t * 4]);
    cp_async_commit();
    cp_async_16_zfill(&s[(nt + t) * 4], &g[(nt + t) * 4], t % 2 ? 8 : 16);
    cp_async_commit();
    if (!skip_wait) cp_async_wait_group<1>();
    __syncthreads();
    for (int k = 0; k < 4; ++k) o[t * 4 + k] = s[rev * 4 + k];
    cp_async_wait_all();
    __syncthreads();
    for (int k = 0; k < 4; ++k) o[(nt + t) * 4 + k] = s[(nt + rev) * 4 + k];
}

// ---- the shared-memory race check and shuffle operands (tests/emu_races.rs) -------------------------------

// One block of 64 threads (2 warps); out[t] for every thread. Thread t writes slot t, then reads slot 63 - t
// (the other warp's) in `mode`:
//   0: with no barrier between (a race: read after write or write after read, by schedule)
//   1: with __syncthreads between (no race)
//   2: warp-synchronous: reads slot (t & ~31) + 31 - lane of its own warp after __syncwarp (no race)
//   3: every thread atomically increments a shared counter, no barrier between them (no race), then reads it
//      after a barrier: out[t] = 64
//   4: writes after a barrier, reads slot 63 - t, then writes its own slot again with no barrier (the other
//      warp reads it: a race)
//   5: mode 0 in dynamic shared memory (256 bytes)
// The lines tests look for are marked RACE-WRITE, RACE-READ.
extern "C" __global__ void selftest_race(float* out, int mode) {
    __shared__ float slots[64];
    __shared__ int counter;
    INSTAGEN_DYNAMIC_SMEM(float, dyn);
    float* s = mode == 5 ? dyn : slots;
    const int t = threadIdx.x, lane = t & 31;
    if (mode == 3) {
        if (t == 0) counter = 0;
        __syncthreads();
        atomicAdd(&counter, 1);
        __syncthreads();
        out[t] = (float)counter;
        return;
    }
    s[t] = (float)t;  // RACE-WRITE
    if (mode == 1 || mode == 4) __syncthreads();
    if (mode == 2) {
        __syncwarp();
        out[t] = s[(t & ~31) + 31 - lane];
        return;
    }
    out[t] = s[63 - t];  // RACE-READ
    if (mode == 4) s[t] = -1.0f;  // RACE-WRITE-AGAIN
}

// Every lane shuffles its lane id with each operand offsets[i] (lane or offset), at widths 32, 8 and 2, in
// the modes idx, up, down, xor: out[((i * 3 + w) * 4 + mode) * 32 + lane].
extern "C" __global__ void selftest_shfl_operands(const int* offsets, int n, int* out) {
    const int lane = threadIdx.x;
    for (int i = 0; i < n; ++i) {
        int w = 0;
        for (int width = 32; width >= 2; width /= 4, ++w) {
            int* o = out + (i * 3 + w) * 4 * 32 + lane;
            o[0] = __shfl_sync(0xffffffffu, lane, offsets[i], width);
            o[32] = __shfl_up_sync(0xffffffffu, lane, (unsigned)offsets[i], width);
            o[64] = __shfl_down_sync(0xffffffffu, lane, (unsigned)offsets[i], width);
            o[96] = __shfl_xor_sync(0xffffffffu, lane, offsets[i], width);
        }
    }
}

// out[block * 64 + t] = what thread t finds in a static __shared__ array before anyone writes it (then it
// writes there): the emulator poisons static shared memory in every block, so all-one bits in each block.
extern "C" __global__ void selftest_static_poison(unsigned* out) {
    __shared__ unsigned s[64];
    const unsigned t = threadIdx.x;
    out[blockIdx.x * 64 + t] = s[t];
    __syncthreads();
    s[t] = t;
}
