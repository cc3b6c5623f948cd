// CPU emulation of the CUDA subset that kernels/*.cu use.
//
// build/emu.rs compiles every kernels/*.cu for the CPU with `-DINSTAGEN_EMU -std=c++17 -O2` and this header
// force-included (`-include`); kernels/emu/runtime.cpp is the scheduler behind it. The execution model:
//
// * A launch runs its blocks one at a time per OS worker (a small pool; blocks are handed out in order).
// * Every CUDA thread of a block is a fibre on that worker, so `__shared__` is `static thread_local` (one copy
//   per worker = per running block) and dynamic shared memory is the worker's buffer (poisoned with 0xFF bytes
//   at the start of every block).
// * Every CUDA thread of a block is a fibre on that worker. build/emu.rs turns every static `__shared__`
//   array into a reference to the worker's copy (INSTAGEN_EMU_STATIC_SMEM), a guarded buffer poisoned (0xFF
//   bytes) the first time each block reaches the declaration.
// * Fibres switch only at synchronisation points: `__syncthreads` (a block barrier), warp collectives
//   (`__syncwarp`, shuffles, votes, ldmatrix, mma), which wait for exactly the lanes of their mask, and exit.
//   A barrier that can never complete (a thread exited or waits elsewhere) ends the launch with an error.
//   Which fibre runs next is an adversarial, seeded choice (runtime.cpp); cp.async copies land at a random
//   moment between issue and the covering wait.
// * Atomics are real atomics (blocks may run on different OS threads).
// * Race check: the same kernels are compiled a second time with -fsanitize=thread and
//   -DINSTAGEN_EMU_RACECHECK (launchers instagen_emu_launch_checked_<kernel>); runtime.cpp's __tsan_* hooks
//   then see every shared-memory access.
//
// Kernels see the usual CUDA names; nothing here is meant to be called by kernels directly except through
// kernels/common.cuh, whose wrappers (mma, ldmatrix, cp.async, dynamic shared memory) pick the emulation below
// under INSTAGEN_EMU and inline PTX under NVRTC.
#pragma once

#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <type_traits>
#include <utility>

// ---- built-in vector types -------------------------------------------------------------------------------

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define INSTAGEN_EMU_VEC2(N, T, A)                                                                             \
    struct alignas(A) N {                                                                                      \
        T x, y;                                                                                                \
    };                                                                                                         \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define INSTAGEN_EMU_VEC4(N, T, A)                                                                             \
    struct alignas(A) N {                                                                                      \
        T x, y, z, w;                                                                                          \
    };                                                                                                         \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
INSTAGEN_EMU_VEC2(float2, float, 8)
INSTAGEN_EMU_VEC4(float4, float, 16)
INSTAGEN_EMU_VEC2(int2, int, 8)
INSTAGEN_EMU_VEC4(int4, int, 16)
INSTAGEN_EMU_VEC2(uint2, unsigned, 8)
INSTAGEN_EMU_VEC4(uint4, unsigned, 16)
INSTAGEN_EMU_VEC2(double2, double, 16)
#undef INSTAGEN_EMU_VEC2
#undef INSTAGEN_EMU_VEC4

// ---- the C ABI shared with runtime.cpp and the generated launchers ---------------------------------------

extern "C" {
// One launch, as cuLaunchKernel takes it; `nargs` is the number of entries in the `void** args` array.
typedef struct instagen_emu_dims {
    unsigned grid[3];
    unsigned block[3];
    unsigned smem_bytes;
    unsigned nargs;
} instagen_emu_dims;

// The part of a CUDA thread (fibre) that kernels and warp collectives see.
typedef struct instagen_emu_thread {
    uint3 thread_idx;
    unsigned linear;              // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    unsigned lane;                // linear % 32; a warp is 32 consecutive linear ids
    unsigned long long in, out;   // warp-collective operand and result
    int arg, width;               // shuffle source / delta / lane mask, and width
    void* ptr[4];                 // operands of ldmatrix / mma (this lane's fragments)
} instagen_emu_thread;

typedef struct instagen_emu_block {
    dim3 grid_dim, block_dim;
    uint3 block_idx;
    unsigned char* dyn_smem;
    unsigned dyn_smem_bytes;
} instagen_emu_block;

typedef void (*instagen_emu_entry)(void** args);
// Completes a warp collective once every lane of `mask` has arrived; lanes[i] is null for absent lanes.
typedef void (*instagen_emu_complete)(instagen_emu_thread* const* lanes, unsigned mask);

// Runs a grid; 0 on success, else an error retrievable with instagen_emu_last_error() on the same thread.
// flags: INSTAGEN_EMU_RACECHECK_FLAG for the instrumented copy of a kernel (the shared-memory race check).
#define INSTAGEN_EMU_RACECHECK_FLAG 1
int instagen_emu_run(const instagen_emu_dims* dims, const char* kernel, instagen_emu_entry entry, void** args,
                     unsigned nparams, int flags);
const char* instagen_emu_last_error(void);
int instagen_emu_set_workers(unsigned n);
unsigned instagen_emu_workers(void);
// The schedule's seed (INSTAGEN_EMU_SEED, else 1), mixed with the kernel name and block index.
void instagen_emu_set_seed(unsigned long long seed);
unsigned long long instagen_emu_seed(void);
void* instagen_emu_alloc_guarded(size_t bytes, size_t align);
void instagen_emu_free_guarded(void* p);

// Called by kernels (through the macros and wrappers below).
void instagen_emu_syncthreads(const char* file, int line);
void instagen_emu_warp_op(int kind, unsigned mask, const char* what, const char* file, int line,
                          instagen_emu_complete complete);
[[noreturn]] void instagen_emu_trap(const char* file, int line, const char* msg);
void instagen_emu_cp_async(void* dst, const void* src, unsigned src_bytes, const char* file, int line);
void instagen_emu_cp_async_commit(void);
void instagen_emu_cp_async_wait(unsigned allowed_pending_groups);
// The running block's copy of the static __shared__ array declared with `key` (build/emu.rs rewrites each
// declaration to call it): per worker, 128-byte aligned, poisoned when a block first asks for it.
void* instagen_emu_static_smem(const void* key, size_t bytes);
// A shared-memory read made by the emulator on a kernel's behalf (ldmatrix), for the race check.
void instagen_emu_shared_read(const void* p, size_t bytes);

// Between runtime.cpp and guard.cpp.
void instagen_emu_install_fault_handler(void);
size_t instagen_emu_describe_guarded(const void* addr, char* buf, size_t cap);   // chars written, 0: not ours
void instagen_emu_kernel_fault(int sig, const void* addr, int general_protection);
}

// The running fibre and its block (set by the runtime before every switch into a fibre).
extern __thread instagen_emu_thread* instagen_emu_self;
extern __thread const instagen_emu_block* instagen_emu_blk;

// Warp-collective kinds (lanes meet only at the same kind, mask and completion callback).
enum {
    INSTAGEN_EMU_SYNCWARP = 1,
    INSTAGEN_EMU_SHFL_IDX,
    INSTAGEN_EMU_SHFL_UP,
    INSTAGEN_EMU_SHFL_DOWN,
    INSTAGEN_EMU_SHFL_XOR,
    INSTAGEN_EMU_BALLOT,
    INSTAGEN_EMU_ANY,
    INSTAGEN_EMU_ALL,
    INSTAGEN_EMU_CUSTOM,
};

// ---- keywords and built-in variables ---------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// build/emu.rs rewrites static __shared__ declarations into INSTAGEN_EMU_STATIC_SMEM references, so the
// keyword is left only where a declaration was not rewritten: one copy per OS worker thread = per running block.
#define __shared__ static thread_local
#define INSTAGEN_EMU_STATIC_SMEM(name, key)                                                                    \
    (*static_cast<std::remove_reference_t<decltype(name)>*>(                                                   \
        instagen_emu_static_smem(&(key), sizeof(std::remove_reference_t<decltype(name)>))))

#define threadIdx (static_cast<const uint3&>(instagen_emu_self->thread_idx))
#define blockIdx (static_cast<const uint3&>(instagen_emu_blk->block_idx))
#define blockDim (static_cast<const dim3&>(instagen_emu_blk->block_dim))
#define gridDim (static_cast<const dim3&>(instagen_emu_blk->grid_dim))
static constexpr int warpSize = 32;

// A kernel's assert ends the launch with an error instead of aborting the process.
#undef assert
#define assert(e) ((e) ? (void)0 : instagen_emu_trap(__FILE__, __LINE__, "assertion failed: " #e))
#define __trap() instagen_emu_trap(__FILE__, __LINE__, "__trap()")

// ---- math and bit intrinsics -----------------------------------------------------------------------------

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }   // NaN -> 0

namespace instagen_emu {
template <class To, class From> inline To bit_cast(const From& v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
    To r;
    std::memcpy(&r, &v, sizeof(To));
    return r;
}
template <class A, class B>
using if_arith = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value,
                                  std::common_type_t<A, B>>;
}   // namespace instagen_emu

// CUDA's global min/max for every arithmetic pair (fmin/fmax semantics for floating point).
template <class A, class B> inline instagen_emu::if_arith<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value) return std::fmin(C(a), C(b));
    else return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B> inline instagen_emu::if_arith<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}

inline int __float_as_int(float x) { return instagen_emu::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return instagen_emu::bit_cast<unsigned>(x); }
inline float __int_as_float(int x) { return instagen_emu::bit_cast<float>(x); }
inline float __uint_as_float(unsigned x) { return instagen_emu::bit_cast<float>(x); }
inline long long __double_as_longlong(double x) { return instagen_emu::bit_cast<long long>(x); }
inline double __longlong_as_double(long long x) { return instagen_emu::bit_cast<double>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(unsigned(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
template <class T> inline T __ldg(const T* p) { return *p; }
// Atomics and fences are not instrumented in the race-check copies: atomics are never races.
#define INSTAGEN_EMU_NO_RACECHECK __attribute__((no_sanitize_thread))
INSTAGEN_EMU_NO_RACECHECK inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
INSTAGEN_EMU_NO_RACECHECK inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- __half and __nv_bfloat16 ----------------------------------------------------------------------------

namespace instagen_emu {
// f32 -> f16, round to nearest even; subnormals, overflow to inf, NaN kept NaN (quiet, top payload bits).
inline unsigned short f32_to_f16(float f) {
    unsigned u = bit_cast<unsigned>(f);
    const unsigned sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return (unsigned short)(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
    if (u >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);   // >= 65520 rounds to inf
    unsigned r, rem, half;
    if (u >= 0x38800000u) {   // normal: rebias the exponent, round off 13 mantissa bits
        r = (u - 0x38000000u) >> 13;
        rem = u & 0x1fffu;
        half = 0x1000u;
    } else {                  // subnormal (in units of 2^-24) or zero
        if (u <= 0x33000000u) return (unsigned short)sign;   // <= 2^-25 (the tie) rounds to zero
        const unsigned shift = 126u - (u >> 23), m = (u & 0x7fffffu) | 0x800000u;
        r = m >> shift;
        rem = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
    }
    r += (rem > half || (rem == half && (r & 1u))) ? 1u : 0u;
    return (unsigned short)(sign | r);
}
inline float f16_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return bit_cast<float>(sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u));
    if (e == 0u) {
        const float v = (float)m * 5.9604644775390625e-8f;   // m * 2^-24, exact
        return sign ? -v : v;
    }
    return bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
// f32 -> bf16, round to nearest even; NaN kept NaN (quiet).
inline unsigned short f32_to_bf16(float f) {
    const unsigned u = bit_cast<unsigned>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(unsigned short b) {
    const unsigned u = ((b & 0x7fffu) > 0x7f80u) ? (b | 0x40u) : b;
    return bit_cast<float>(u << 16);
}
}   // namespace instagen_emu

struct __half_raw {
    unsigned short x;
};
struct __nv_bfloat16_raw {
    unsigned short x;
};

// A 16-bit float storage type: implicit conversions from arithmetic types (rounded) and to float.
#define INSTAGEN_EMU_F16_TYPE(T, RAW, TO, FROM)                                                                \
    struct T {                                                                                                 \
        unsigned short __x;                                                                                    \
        T() = default;                                                                                         \
        constexpr T(RAW r) : __x(r.x) {}                                                                       \
        template <class A, std::enable_if_t<std::is_arithmetic<A>::value, int> = 0>                            \
        T(A v) : __x(::instagen_emu::FROM(static_cast<float>(v))) {}                                           \
        operator float() const { return ::instagen_emu::TO(__x); }                                             \
        operator RAW() const { return RAW{__x}; }                                                              \
    };
INSTAGEN_EMU_F16_TYPE(__half, __half_raw, f16_to_f32, f32_to_f16)
INSTAGEN_EMU_F16_TYPE(__nv_bfloat16, __nv_bfloat16_raw, bf16_to_f32, f32_to_bf16)
#undef INSTAGEN_EMU_F16_TYPE

struct alignas(4) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(__half a, __half b) : x(a), y(b) {}
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) : x(a), y(b) {}
};
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

namespace instagen_emu {
// a * b + c for a result rounded to a 16-bit type (to nearest even) in one rounding: the product is exact in
// double; the sum is rounded to odd in double (TwoSum gives its error), then to odd in float. Rounding to odd
// with at least 2 spare bits, then to nearest, equals rounding the exact value once.
inline float fma_to_odd(float a, float b, float c) {
    const double p = (double)a * (double)b, s = p + (double)c;
    if (!std::isfinite(s)) return (float)s;
    const double bv = s - p, e = (p - (s - bv)) + ((double)c - bv);
    double so = s;
    if (e != 0.0 && !(bit_cast<unsigned long long>(s) & 1ull)) so = std::nextafter(s, e > 0.0 ? INFINITY : -INFINITY);
    float f = (float)so;
    if (std::isfinite(f) && (double)f != so && !(bit_cast<unsigned>(f) & 1u)) {
        f = std::nextafter(f, so > (double)f ? INFINITY : -INFINITY);
    }
    return f;
}
}   // namespace instagen_emu

// Arithmetic shared by both types (as CUDA overloads it): computed in f32 and rounded once (exact for
// + - * / of 16-bit inputs; fma through instagen_emu::fma_to_odd).
#define INSTAGEN_EMU_F16_OPS(T, T2)                                                                            \
    inline T operator+(T a, T b) { return T(float(a) + float(b)); }                                            \
    inline T operator-(T a, T b) { return T(float(a) - float(b)); }                                            \
    inline T operator*(T a, T b) { return T(float(a) * float(b)); }                                            \
    inline T operator/(T a, T b) { return T(float(a) / float(b)); }                                            \
    inline T operator-(T a) { a.__x ^= 0x8000u; return a; }                                                    \
    inline T operator+(T a) { return a; }                                                                      \
    inline T& operator+=(T& a, T b) { return a = a + b; }                                                      \
    inline T& operator-=(T& a, T b) { return a = a - b; }                                                      \
    inline T& operator*=(T& a, T b) { return a = a * b; }                                                      \
    inline T& operator/=(T& a, T b) { return a = a / b; }                                                     \
    inline bool operator==(T a, T b) { return float(a) == float(b); }                                          \
    inline bool operator!=(T a, T b) { return float(a) != float(b); }                                          \
    inline bool operator<(T a, T b) { return float(a) < float(b); }                                            \
    inline bool operator>(T a, T b) { return float(a) > float(b); }                                            \
    inline bool operator<=(T a, T b) { return float(a) <= float(b); }                                          \
    inline bool operator>=(T a, T b) { return float(a) >= float(b); }                                          \
    inline T __hadd(T a, T b) { return a + b; }                                                                \
    inline T __hsub(T a, T b) { return a - b; }                                                                \
    inline T __hmul(T a, T b) { return a * b; }                                                                \
    inline T __hdiv(T a, T b) { return a / b; }                                                                \
    inline T __hneg(T a) { return -a; }                                                                        \
    inline T __hfma(T a, T b, T c) { return T(::instagen_emu::fma_to_odd(float(a), float(b), float(c))); }              \
    inline T __habs(T a) { a.__x &= 0x7fffu; return a; }                                                       \
    inline T __hmax(T a, T b) { return T(fmaxf(float(a), float(b))); }                                         \
    inline T __hmin(T a, T b) { return T(fminf(float(a), float(b))); }                                         \
    inline bool __hisnan(T a) { return std::isnan(float(a)); }                                                 \
    inline int __hisinf(T a) { return std::isinf(float(a)) ? (float(a) < 0 ? -1 : 1) : 0; }                    \
    inline bool __heq(T a, T b) { return a == b; }                                                             \
    inline bool __hlt(T a, T b) { return a < b; }                                                              \
    inline bool __hgt(T a, T b) { return a > b; }                                                              \
    inline T2 __hadd2(T2 a, T2 b) { return T2(a.x + b.x, a.y + b.y); }                                         \
    inline T2 __hsub2(T2 a, T2 b) { return T2(a.x - b.x, a.y - b.y); }                                         \
    inline T2 __hmul2(T2 a, T2 b) { return T2(a.x * b.x, a.y * b.y); }                                         \
    inline T2 __hfma2(T2 a, T2 b, T2 c) { return T2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }           \
    inline T2 __hmax2(T2 a, T2 b) { return T2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }                           \
    inline T2 __hmin2(T2 a, T2 b) { return T2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }                           \
    inline float __low2float(T2 a) { return float(a.x); }                                                      \
    inline float __high2float(T2 a) { return float(a.y); }

// Conversions, named per type: N is `half` or `bfloat16` (__float2half_rn, __float2bfloat16_rn, ...).
#define INSTAGEN_EMU_F16_CONV(T, T2, N)                                                                        \
    inline T __float2##N(float f) { return T(f); }                                                             \
    inline T __float2##N##_rn(float f) { return T(f); }                                                        \
    inline float __##N##2float(T h) { return float(h); }                                                       \
    inline T2 __float2##N##2_rn(float f) { return T2(T(f), T(f)); }                                            \
    inline T2 __floats2##N##2_rn(float a, float b) { return T2(T(a), T(b)); }                                  \
    inline T2 __float22##N##2_rn(float2 f) { return T2(T(f.x), T(f.y)); }                                      \
    inline float2 __##N##22float2(T2 h) { return float2{float(h.x), float(h.y)}; }                             \
    inline T __low2##N(T2 h) { return h.x; }                                                                   \
    inline T __high2##N(T2 h) { return h.y; }                                                                  \
    inline T2 __halves2##N##2(T lo, T hi) { return T2(lo, hi); }                                               \
    inline unsigned short __##N##_as_ushort(T h) { return h.__x; }                                             \
    inline short __##N##_as_short(T h) { return (short)h.__x; }                                                \
    inline T __ushort_as_##N(unsigned short b) { T h; h.__x = b; return h; }                                   \
    inline T __short_as_##N(short b) { T h; h.__x = (unsigned short)b; return h; }

INSTAGEN_EMU_F16_OPS(__half, __half2)
INSTAGEN_EMU_F16_OPS(__nv_bfloat16, __nv_bfloat162)
INSTAGEN_EMU_F16_CONV(__half, __half2, half)
INSTAGEN_EMU_F16_CONV(__nv_bfloat16, __nv_bfloat162, bfloat16)
#undef INSTAGEN_EMU_F16_OPS
#undef INSTAGEN_EMU_F16_CONV

// ---- atomics (global and shared memory alike) ------------------------------------------------------------

namespace instagen_emu {
template <std::size_t N> struct uint_of;
template <> struct uint_of<2> { using type = unsigned short; };
template <> struct uint_of<4> { using type = unsigned; };
template <> struct uint_of<8> { using type = unsigned long long; };
// old = *p; *p = f(old) atomically (a CAS loop on the bits); returns old.
template <class T, class F> INSTAGEN_EMU_NO_RACECHECK inline T atomic_update(T* p, F f) {
    using U = typename uint_of<sizeof(T)>::type;
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_RELAXED);
    for (;;) {
        const T o = bit_cast<T>(old);
        if (__atomic_compare_exchange_n(q, &old, bit_cast<U>(f(o)), true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            return o;
        }
    }
}
}   // namespace instagen_emu

#define INSTAGEN_EMU_ATOMIC_INT(T)                                                                             \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }      \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }      \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }      \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }        \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }      \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }    \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicCAS(T* p, T cmp, T v) {                                                    \
        __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
        return cmp;                                                                                            \
    }                                                                                                          \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicMax(T* p, T v) { return instagen_emu::atomic_update(p, [v](T o) { return o < v ? v : o; }); } \
    INSTAGEN_EMU_NO_RACECHECK inline T atomicMin(T* p, T v) { return instagen_emu::atomic_update(p, [v](T o) { return v < o ? v : o; }); }
INSTAGEN_EMU_ATOMIC_INT(int)
INSTAGEN_EMU_ATOMIC_INT(unsigned)
INSTAGEN_EMU_ATOMIC_INT(long long)
INSTAGEN_EMU_ATOMIC_INT(unsigned long long)
#undef INSTAGEN_EMU_ATOMIC_INT

#define INSTAGEN_EMU_ATOMIC_FLOAT(T)                                                                           \
    inline T atomicAdd(T* p, T v) { return instagen_emu::atomic_update(p, [v](T o) { return T(o + v); }); }    \
    inline T atomicExch(T* p, T v) { return instagen_emu::atomic_update(p, [v](T) { return v; }); }
INSTAGEN_EMU_ATOMIC_FLOAT(float)
INSTAGEN_EMU_ATOMIC_FLOAT(double)
INSTAGEN_EMU_ATOMIC_FLOAT(__half)
INSTAGEN_EMU_ATOMIC_FLOAT(__nv_bfloat16)
#undef INSTAGEN_EMU_ATOMIC_FLOAT

inline unsigned atomicInc(unsigned* p, unsigned m) {
    return instagen_emu::atomic_update(p, [m](unsigned o) { return o >= m ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned m) {
    return instagen_emu::atomic_update(p, [m](unsigned o) { return (o == 0u || o > m) ? m : o - 1u; });
}

// ---- barriers and warp collectives -----------------------------------------------------------------------
// The trailing defaulted parameters record the caller's file and line for error messages.

#define INSTAGEN_EMU_AT const char *at_file = __builtin_FILE(), int at_line = __builtin_LINE()

inline void __syncthreads(INSTAGEN_EMU_AT) { instagen_emu_syncthreads(at_file, at_line); }
inline void __syncwarp(unsigned mask = 0xffffffffu, INSTAGEN_EMU_AT) {
    instagen_emu_warp_op(INSTAGEN_EMU_SYNCWARP, mask, "__syncwarp", at_file, at_line, nullptr);
}

namespace instagen_emu {
// Results of shuffles and votes once every lane of `mask` has deposited its operand. Shuffles follow the
// pseudocode of PTX shfl.sync: only bits 4:0 of the lane or offset operand count (offsets of 32 and more
// wrap), and a source outside the lane's segment of `width` lanes gives the lane's own value.
template <int Kind> inline void exchange_complete(instagen_emu_thread* const* lanes, unsigned mask) {
    if constexpr (Kind == INSTAGEN_EMU_BALLOT || Kind == INSTAGEN_EMU_ANY || Kind == INSTAGEN_EMU_ALL) {
        unsigned bits = 0;
        for (unsigned l = 0; l < 32; ++l) bits |= ((mask >> l & 1u) && lanes[l]->in) ? 1u << l : 0u;
        const unsigned long long r = Kind == INSTAGEN_EMU_BALLOT ? bits
                                     : Kind == INSTAGEN_EMU_ANY  ? bits != 0
                                                                 : bits == mask;
        for (unsigned l = 0; l < 32; ++l) {
            if (mask >> l & 1u) lanes[l]->out = r;
        }
    } else {
        for (unsigned l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            instagen_emu_thread* t = lanes[l];
            const unsigned w = (unsigned)t->width;
            if (w < 1 || w > 32 || (w & (w - 1))) instagen_emu_trap(nullptr, 0, "shuffle width not a power of 2 <= 32");
            // CUDA's operands: b = source lane or offset, c = ((32 - width) << 8) | (up ? 0 : 31).
            const int b = t->arg & 31, segmask = 32 - (int)w, cval = Kind == INSTAGEN_EMU_SHFL_UP ? 0 : 31;
            const int lane = (int)l, max_lane = (lane & segmask) | (cval & ~segmask), min_lane = lane & segmask;
            int j;
            bool ok;
            if constexpr (Kind == INSTAGEN_EMU_SHFL_UP) j = lane - b, ok = j >= max_lane;
            else if constexpr (Kind == INSTAGEN_EMU_SHFL_DOWN) j = lane + b, ok = j <= max_lane;
            else if constexpr (Kind == INSTAGEN_EMU_SHFL_XOR) j = lane ^ b, ok = j <= max_lane;
            else j = min_lane | (b & ~segmask), ok = j <= max_lane;
            const unsigned src = ok ? (unsigned)j : l;
            t->out = (mask >> src & 1u) ? lanes[src]->in : ~0ull;
        }
    }
}
// Every lane of `mask` deposits `v` (and its own `arg`, `width`) and gets its result.
template <int Kind, class T>
inline T exchange(const char* what, unsigned mask, T v, int arg, int width, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    instagen_emu_thread* me = instagen_emu_self;
    me->in = 0;
    std::memcpy(&me->in, &v, sizeof(T));
    me->arg = arg;
    me->width = width;
    instagen_emu_warp_op(Kind, mask, what, file, line, &exchange_complete<Kind>);
    T r;
    std::memcpy(&r, &me->out, sizeof(T));
    return r;
}
}   // namespace instagen_emu

// A source lane outside `mask` (undefined on a GPU) reads as all-one bits (NaN for floats).
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize, INSTAGEN_EMU_AT) {
    return instagen_emu::exchange<INSTAGEN_EMU_SHFL_IDX>("__shfl_sync", mask, v, src, width, at_file, at_line);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = warpSize, INSTAGEN_EMU_AT) {
    return instagen_emu::exchange<INSTAGEN_EMU_SHFL_UP>("__shfl_up_sync", mask, v, (int)d, width, at_file, at_line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = warpSize, INSTAGEN_EMU_AT) {
    return instagen_emu::exchange<INSTAGEN_EMU_SHFL_DOWN>("__shfl_down_sync", mask, v, (int)d, width, at_file,
                                  at_line);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize, INSTAGEN_EMU_AT) {
    return instagen_emu::exchange<INSTAGEN_EMU_SHFL_XOR>("__shfl_xor_sync", mask, v, lane_mask, width, at_file,
                                  at_line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, INSTAGEN_EMU_AT) {
    return (unsigned)instagen_emu::exchange<INSTAGEN_EMU_BALLOT, unsigned long long>("__ballot_sync", mask,
                                                                pred != 0, 0, 32, at_file, at_line);
}
inline int __any_sync(unsigned mask, int pred, INSTAGEN_EMU_AT) {
    return (int)instagen_emu::exchange<INSTAGEN_EMU_ANY, unsigned long long>("__any_sync", mask, pred != 0, 0, 32,
                                                           at_file, at_line);
}
inline int __all_sync(unsigned mask, int pred, INSTAGEN_EMU_AT) {
    return (int)instagen_emu::exchange<INSTAGEN_EMU_ALL, unsigned long long>("__all_sync", mask, pred != 0, 0, 32,
                                                           at_file, at_line);
}

// ---- tensor-core instructions (used by the wrappers in kernels/common.cuh) -------------------------------

namespace instagen_emu {
inline unsigned short half_of(unsigned reg, int hi) { return (unsigned short)(hi ? reg >> 16 : reg & 0xffffu); }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 with the PTX ISA fragment layouts
// (groupID = lane >> 2, tig = lane % 4):
//   A (16x16): a[r] holds elements 2r, 2r+1; element i sits at row groupID + 8*(i&2 ? 1:0),
//              column tig*2 + (i&1) + 8*(i&4 ? 1:0)
//   B (16x8):  b[r] holds elements 2r, 2r+1; element i sits at row (k) tig*2 + (i&1) + 8*(i&2 ? 1:0),
//              column groupID
//   C, D:      element i sits at row groupID + 8*(i&2 ? 1:0), column tig*2 + (i&1)
// Products are exact and accumulated in double, then rounded to f32 once.
template <float (*Dec)(unsigned short)> inline void mma16816_complete(instagen_emu_thread* const* lanes, unsigned) {
    float a[16][16], b[16][8], c[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const unsigned* ra = static_cast<const unsigned*>(lanes[l]->ptr[0]);
        const unsigned* rb = static_cast<const unsigned*>(lanes[l]->ptr[1]);
        const float* rc = static_cast<const float*>(lanes[l]->ptr[2]);
        for (int i = 0; i < 8; ++i) {
            a[g + (i & 2 ? 8 : 0)][t * 2 + (i & 1) + (i & 4 ? 8 : 0)] = Dec(half_of(ra[i / 2], i & 1));
        }
        for (int i = 0; i < 4; ++i) {
            b[t * 2 + (i & 1) + (i & 2 ? 8 : 0)][g] = Dec(half_of(rb[i / 2], i & 1));
            c[g + (i & 2 ? 8 : 0)][t * 2 + (i & 1)] = rc[i];
        }
    }
    for (int l = 0; l < 32; ++l) {   // every fragment was read above, so d may alias c
        const int g = l >> 2, t = l & 3;
        float* rd = static_cast<float*>(lanes[l]->ptr[3]);
        for (int i = 0; i < 4; ++i) {
            const int row = g + (i & 2 ? 8 : 0), col = t * 2 + (i & 1);
            double acc = c[row][col];
            for (int k = 0; k < 16; ++k) acc += (double)a[row][k] * (double)b[k][col];
            rd[i] = (float)acc;
        }
    }
}
template <float (*Dec)(unsigned short)>
inline void mma16816(const char* what, float* d, const unsigned* a, const unsigned* b, const float* c,
                     const char* file, int line) {
    instagen_emu_thread* me = instagen_emu_self;
    me->ptr[0] = const_cast<unsigned*>(a);
    me->ptr[1] = const_cast<unsigned*>(b);
    me->ptr[2] = const_cast<float*>(c);
    me->ptr[3] = d;
    instagen_emu_warp_op(INSTAGEN_EMU_CUSTOM, 0xffffffffu, what, file, line, &mma16816_complete<Dec>);
}

// ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16: lanes 8m..8m+7 give the row addresses of matrix m; lane l
// receives in register m the elements (row l/4, columns 2*(l%4), 2*(l%4)+1), or with .trans (rows 2*(l%4),
// 2*(l%4)+1, column l/4); the lower column/row goes to the low 16 bits.
template <int N, bool Trans> inline void ldmatrix_complete(instagen_emu_thread* const* lanes, unsigned) {
    for (int l = 0; l < 8 * N; ++l) {
        if (reinterpret_cast<std::uintptr_t>(lanes[l]->ptr[0]) & 15u) {
            char msg[160];
            std::snprintf(msg, sizeof msg, "ldmatrix: lane %d's row address %p is not 16-byte aligned", l,
                          lanes[l]->ptr[0]);
            instagen_emu_trap(nullptr, 0, msg);
        }
        instagen_emu_shared_read(lanes[l]->ptr[0], 16);
    }
    for (int m = 0; m < N; ++m) {
        for (int l = 0; l < 32; ++l) {
            const int r = l >> 2, c = (l & 3) * 2;
            const auto row = [&](int i) { return static_cast<const unsigned short*>(lanes[8 * m + i]->ptr[0]); };
            const unsigned lo = Trans ? row(c)[r] : row(r)[c];
            const unsigned hi = Trans ? row(c + 1)[r] : row(r)[c + 1];
            static_cast<unsigned*>(lanes[l]->ptr[1])[m] = lo | (hi << 16);
        }
    }
}
template <int N, bool Trans>
inline void ldmatrix(const char* what, unsigned* r, const void* row, const char* file, int line) {
    instagen_emu_thread* me = instagen_emu_self;
    me->ptr[0] = const_cast<void*>(row);
    me->ptr[1] = r;
    instagen_emu_warp_op(INSTAGEN_EMU_CUSTOM, 0xffffffffu, what, file, line, &ldmatrix_complete<N, Trans>);
}

// ---- launching: unpack cuLaunchKernel-style `void** args` by the kernel's own parameter types -------------

template <class... P, std::size_t... I>
inline void invoke_impl(void (*k)(P...), void** args, std::index_sequence<I...>) {
    (void)args;
    k(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}
template <class... P> inline void invoke(void (*k)(P...), void** args) {
    invoke_impl(k, args, std::index_sequence_for<P...>{});
}
template <auto K> void entry(void** args) { invoke(K, args); }
template <class... P> constexpr unsigned arity(void (*)(P...)) { return sizeof...(P); }
// What each generated `instagen_emu_launch_<kernel>` calls.
// The race-check copies (-DINSTAGEN_EMU_RACECHECK, compiled with -fsanitize=thread) say so.
template <auto K> inline int launch(const instagen_emu_dims* dims, const char* name, void** args) {
#ifdef INSTAGEN_EMU_RACECHECK
    return instagen_emu_run(dims, name, &entry<K>, args, arity(K), INSTAGEN_EMU_RACECHECK_FLAG);
#else
    return instagen_emu_run(dims, name, &entry<K>, args, arity(K), 0);
#endif
}
}   // namespace instagen_emu
