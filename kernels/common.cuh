// Shared helpers for every kernels/*.cu file.
//
// Kept to plain CUDA C++ so the same sources also compile for the CPU through kernels/emu/cuda_emu.h
// (INSTAGEN_EMU, force-included by build/emu.rs): extern "C" __global__ entry points, templates and functors
// only inside. Tensor-core instructions, cp.async and dynamic shared memory go through the wrappers at the
// end of this file, which are inline PTX under NVRTC and exact emulations under INSTAGEN_EMU.
#pragma once

#ifndef INSTAGEN_EMU
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

// ---- entry points -----------------------------------------------------------------------------------------
//
// INSTAGEN_KERNEL(NAME, TYPE, BOUNDS, PARAMS, BODY...) defines the entry point
//     extern "C" __global__ void BOUNDS NAME PARAMS { BODY; }
// in which `T` names TYPE (PARAMS and BODY are written in terms of T). BOUNDS is `__launch_bounds__(...)` or
// empty, PARAMS the parenthesised parameter list, BODY usually one call of the kernel's template. The entry
// point sits in a namespace of its own that holds the typedef; extern "C" keeps its symbol the plain NAME and
// a using-declaration makes NAME visible at file scope. The dtype families:
//     INSTAGEN_KERNELS_FLOAT(STEM, ...)  STEM_f32, STEM_f16, STEM_bf16
//     INSTAGEN_KERNELS_HALF(STEM, ...)   STEM_f16, STEM_bf16 (the tensor-core kernels)
//     INSTAGEN_KERNELS_ALL(STEM, ...)    STEM_f32, STEM_f16, STEM_bf16, STEM_i32, STEM_i64, STEM_u8
// e.g. INSTAGEN_KERNELS_FLOAT(scale_fwd, __launch_bounds__(256), (const T* x, T* y, long long n),
//                             scale_fwd<T>(x, y, n))
// Emulator builds find these entry points after preprocessing (build/emu.rs).
#define INSTAGEN_KERNEL(NAME, TYPE, BOUNDS, PARAMS, ...)                                                       \
    namespace instagen_kernel_##NAME {                                                                         \
    typedef TYPE T;                                                                                            \
    extern "C" __global__ void BOUNDS NAME PARAMS { __VA_ARGS__; }                                             \
    }                                                                                                          \
    using instagen_kernel_##NAME::NAME;
#define INSTAGEN_KERNELS_HALF(STEM, BOUNDS, PARAMS, ...)                                                       \
    INSTAGEN_KERNEL(STEM##_f16, __half, BOUNDS, PARAMS, __VA_ARGS__)                                           \
    INSTAGEN_KERNEL(STEM##_bf16, __nv_bfloat16, BOUNDS, PARAMS, __VA_ARGS__)
#define INSTAGEN_KERNELS_FLOAT(STEM, BOUNDS, PARAMS, ...)                                                      \
    INSTAGEN_KERNEL(STEM##_f32, float, BOUNDS, PARAMS, __VA_ARGS__)                                            \
    INSTAGEN_KERNELS_HALF(STEM, BOUNDS, PARAMS, __VA_ARGS__)
#define INSTAGEN_KERNELS_ALL(STEM, BOUNDS, PARAMS, ...)                                                        \
    INSTAGEN_KERNELS_FLOAT(STEM, BOUNDS, PARAMS, __VA_ARGS__)                                                  \
    INSTAGEN_KERNEL(STEM##_i32, int, BOUNDS, PARAMS, __VA_ARGS__)                                              \
    INSTAGEN_KERNEL(STEM##_i64, long long, BOUNDS, PARAMS, __VA_ARGS__)                                        \
    INSTAGEN_KERNEL(STEM##_u8, unsigned char, BOUNDS, PARAMS, __VA_ARGS__)

// 64-bit global thread index and grid stride: tensors can exceed 2^31 elements.
__device__ __forceinline__ long long gidx() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}
__device__ __forceinline__ long long gstride() {
    return (long long)gridDim.x * (long long)blockDim.x;
}

// Storage <-> f32 compute conversions. Arithmetic always happens in f32.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// Logistic sigmoid in f32, accurate (no fast math) and finite for every finite x.
__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

// INSTAGEN_DROPPABLE(n) stmt; marks a barrier or cp.async wait whose removal the emulator must catch: the race
// variants of tests/emu_races.rs (build/emu.rs `VARIANTS`) compile the file with -DINSTAGEN_DROP=n, which leaves
// the statement out. Everywhere else it is the statement.
#ifndef INSTAGEN_DROP
#define INSTAGEN_DROP 0
#endif
#define INSTAGEN_DROPPABLE(n) if ((n) != INSTAGEN_DROP)

// ---- portable wrappers: inline PTX under NVRTC, emulations under INSTAGEN_EMU ----------------------------
//
// Under INSTAGEN_EMU the wrappers take two extra defaulted parameters (the caller's file and line, for error
// messages); callers never pass them.

#ifdef INSTAGEN_EMU
#define INSTAGEN_CALLER , INSTAGEN_EMU_AT
#else
#define INSTAGEN_CALLER
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// Dynamic shared memory (the launch's smem bytes, 16-byte aligned) as `T* name`.
#ifdef INSTAGEN_EMU
#define INSTAGEN_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(instagen_emu_blk->dyn_smem)
#else
#define INSTAGEN_DYNAMIC_SMEM(T, name)                                                                         \
    extern __shared__ __align__(16) unsigned char instagen_dynamic_smem_[];                                    \
    T* name = reinterpret_cast<T*>(instagen_dynamic_smem_)
#endif

// d = A*B + c, warp-wide: mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32. A is 16x16 (four
// b32 registers per lane), B 16x8 (two), c and d 16x8 f32 (four); per-lane fragment layouts as in the PTX ISA
// (spelled out in kernels/emu/cuda_emu.h). d may alias c. Every lane of the warp must call it.
#ifdef INSTAGEN_EMU
#define INSTAGEN_MMA16816(TYPE, DECODE)                                                                        \
    ::instagen_emu::mma16816<::instagen_emu::DECODE>(__func__, d, a, b, c, at_file, at_line)
#else
#define INSTAGEN_MMA16816(TYPE, DECODE)                                                                        \
    asm("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "      \
        "{%8, %9}, {%10, %11, %12, %13};"                                                                      \
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                                       \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),   \
          "f"(c[3]))
#endif
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                                 const float c[4] INSTAGEN_CALLER) {
    INSTAGEN_MMA16816("f16", f16_to_f32);
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                  const float c[4] INSTAGEN_CALLER) {
    INSTAGEN_MMA16816("bf16", bf16_to_f32);
}
#undef INSTAGEN_MMA16816

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16, warp-wide: lanes 8i..8i+7 pass the (16-byte
// aligned) shared-memory addresses of the 8 rows of matrix i; register i of lane l receives row l/4, columns
// 2*(l%4) and 2*(l%4)+1 of matrix i (with .trans: rows 2*(l%4) and 2*(l%4)+1 of column l/4), the first in
// the low 16 bits.
#ifdef INSTAGEN_EMU
#define INSTAGEN_LDMATRIX(N, TRANS) ::instagen_emu::ldmatrix<N, TRANS>(__func__, r, row, at_file, at_line)
#else
#define INSTAGEN_LDSM_X1(TR)                                                                                   \
    asm volatile("ldmatrix.sync.aligned.m8n8.x1" TR ".shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(a) : "memory")
#define INSTAGEN_LDSM_X2(TR)                                                                                   \
    asm volatile("ldmatrix.sync.aligned.m8n8.x2" TR ".shared.b16 {%0, %1}, [%2];"                             \
                 : "=r"(r[0]), "=r"(r[1])                                                                      \
                 : "r"(a)                                                                                      \
                 : "memory")
#define INSTAGEN_LDSM_X4(TR)                                                                                   \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" TR ".shared.b16 {%0, %1, %2, %3}, [%4];"                     \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                                              \
                 : "r"(a)                                                                                      \
                 : "memory")
template <int N, bool Trans> __device__ __forceinline__ void instagen_ldmatrix(unsigned* r, const void* row) {
    const unsigned a = smem_u32(row);
    if constexpr (N == 1 && Trans) INSTAGEN_LDSM_X1(".trans");
    else if constexpr (N == 1) INSTAGEN_LDSM_X1("");
    else if constexpr (N == 2 && Trans) INSTAGEN_LDSM_X2(".trans");
    else if constexpr (N == 2) INSTAGEN_LDSM_X2("");
    else if constexpr (Trans) INSTAGEN_LDSM_X4(".trans");
    else INSTAGEN_LDSM_X4("");
}
#undef INSTAGEN_LDSM_X1
#undef INSTAGEN_LDSM_X2
#undef INSTAGEN_LDSM_X4
#define INSTAGEN_LDMATRIX(N, TRANS) instagen_ldmatrix<N, TRANS>(r, row)
#endif
__device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(1, false);
}
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(2, false);
}
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(4, false);
}
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(1, true);
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(2, true);
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* row INSTAGEN_CALLER) {
    INSTAGEN_LDMATRIX(4, true);
}
#undef INSTAGEN_LDMATRIX

// cp.async.cg.shared.global: 16 bytes from global to shared memory (both 16-byte aligned), asynchronously:
// the data is there only after a cp_async_wait_* that covers its group (and, for other threads, a
// __syncthreads). The _zfill form reads src_bytes (0..16) and zero-fills the rest; with 0 nothing is read.
// Under the emulator a copy lands at a random moment between issue and the covering wait, so a missing wait
// (or barrier) reads stale shared memory.
#ifdef INSTAGEN_EMU
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem INSTAGEN_CALLER) {
    instagen_emu_cp_async(smem, gmem, 16, at_file, at_line);
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes INSTAGEN_CALLER) {
    instagen_emu_cp_async(smem, gmem, (unsigned)src_bytes, at_file, at_line);
}
__device__ __forceinline__ void cp_async_commit() { instagen_emu_cp_async_commit(); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait_group() { instagen_emu_cp_async_wait(N); }
// Commits the pending copies and waits for all of them.
__device__ __forceinline__ void cp_async_wait_all() {
    instagen_emu_cp_async_commit();
    instagen_emu_cp_async_wait(0);
}
#else
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(smem)),
                 "l"(__cvta_generic_to_global(gmem))
                 : "memory");
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)),
                 "l"(__cvta_generic_to_global(gmem)), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// Commits the pending copies and waits for all of them.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
#endif
