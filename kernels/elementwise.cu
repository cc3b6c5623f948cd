// Elementwise kernels: unary functions and their derivatives, broadcasting binary ops, fill and cast.
//
// Symbols: unary_fwd_<dt>, unary_bwd_<dt>, binary_fwd_<dt> (dt = f32, f16, bf16), fill_<dt> (also i32, i64,
// u8) and cast_<src>_<dst> (all 36 ordered pairs of the six dtypes).
// Storage is f32/f16/bf16, arithmetic is f32 (no fast math), element counts are 64-bit and every loop is a
// grid-stride loop, so any launch geometry covers any n. Outputs may alias same-shaped inputs (the planner's
// in place): each element (or 16-byte pack) is read and written by the same thread, so no pointer is
// __restrict__. Contiguous streams move 16 bytes per access when every pointer is 16-byte aligned (checked
// at run time; the arena is 256-byte aligned) and fall back to one element per access otherwise.
//
// The op codes below are mirrored by `UnaryCode` / `BinaryCode` in src/backend/launch/elementwise.rs; a test
// there parses this file and checks that both sides agree.
#include "strided.cuh"

// ---- op codes -----------------------------------------------------------------------------------------

enum UnaryCode {
    UNARY_NEG = 0,
    UNARY_EXP = 1,
    UNARY_LOG = 2,
    UNARY_SQRT = 3,
    UNARY_RSQRT = 4,
    UNARY_RECIP = 5,
    UNARY_ABS = 6,
    UNARY_SQUARE = 7,
    UNARY_TANH = 8,
    UNARY_SIGMOID = 9,
    UNARY_RELU = 10,
    UNARY_GELU = 11,
    UNARY_GELU_TANH = 12,
    UNARY_SILU = 13,
    UNARY_SIN = 14,
    UNARY_COS = 15,
    UNARY_AFFINE = 16,  // y = p0 * x + p1
    UNARY_POWF = 17,    // y = x ^ p0
    UNARY_QUICK_GELU = 18,  // y = x * sigmoid(1.702 x)
};

enum BinaryCode {
    BINARY_ADD = 0,
    BINARY_SUB = 1,
    BINARY_MUL = 2,
    BINARY_DIV = 3,
    BINARY_MAX = 4,
    BINARY_MIN = 5,
    BINARY_EQ = 6,
    BINARY_GT = 7,
    BINARY_GE = 8,
};

// ---- f32 math shared by forward and backward --------------------------------------------------------------

#define SQRT_2_OVER_PI 0.7978845608028654f
#define INV_SQRT_2PI 0.3989422804014327f
#define FRAC_1_SQRT_2 0.7071067811865476f
#define GELU_TANH_C 0.044715f

// sigmoid(x) and 1 - sigmoid(x), both without cancellation: with e = exp(-|x|) <= 1, the larger one is
// 1 / (1 + e) and the smaller e / (1 + e).
__device__ __forceinline__ void sigmoid_pair(float x, float& s, float& sc) {
    float e = expf(-fabsf(x));
    float r = 1.0f / (1.0f + e);
    float small = e * r;
    s = x >= 0.0f ? r : small;
    sc = x >= 0.0f ? small : r;
}
__device__ __forceinline__ float sigmoid_stable(float x) {
    float s, sc;
    sigmoid_pair(x, s, sc);
    return s;
}
// Standard normal CDF through erfc, accurate in both tails (0.5 * (1 + erf) cancels for negative x).
__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * erfcf(-x * FRAC_1_SQRT_2); }
__device__ __forceinline__ float gelu_tanh_arg(float x) { return SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x); }

// ---- unary functors: f(x) and f'(x) in f32 ----------------------------------------------------------------

#define UNARY_FUNCTOR(NAME, FWD, DERIV)                                                                        \
    struct NAME {                                                                                              \
        float p0, p1;                                                                                          \
        __device__ __forceinline__ float fwd(float x) const { FWD; }                                           \
        __device__ __forceinline__ float deriv(float x) const { DERIV; }                                       \
    };

UNARY_FUNCTOR(UNeg, return -x, return -1.0f)
UNARY_FUNCTOR(UExp, return expf(x), return expf(x))
UNARY_FUNCTOR(ULog, return logf(x), return 1.0f / x)
UNARY_FUNCTOR(USqrt, return sqrtf(x), return 0.5f / sqrtf(x))
UNARY_FUNCTOR(URsqrt, return 1.0f / sqrtf(x), return -0.5f / (x * sqrtf(x)))
UNARY_FUNCTOR(URecip, return 1.0f / x, return -1.0f / (x * x))
// |x|' is the sign, 0 at 0, NaN for NaN (the CPU reference's convention).
UNARY_FUNCTOR(UAbs, return fabsf(x), return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == 0.0f ? 0.0f : x)))
UNARY_FUNCTOR(USquare, return x * x, return 2.0f * x)
// tanh' = 1 - tanh^2 = 4e / (1 + e)^2 with e = exp(-2|x|): no cancellation where tanh is near +-1.
UNARY_FUNCTOR(UTanh, return tanhf(x), float e = expf(-2.0f * fabsf(x)); float r = 1.0f + e; return 4.0f * e / (r * r))
// sigmoid' = s (1 - s) = e / (1 + e)^2 with e = exp(-|x|).
UNARY_FUNCTOR(USigmoid, return sigmoid_stable(x), float e = expf(-fabsf(x)); float r = 1.0f + e; return e / (r * r))
// relu passes NaN; its derivative is 1 for x > 0, NaN for NaN, else 0.
UNARY_FUNCTOR(URelu, return (x > 0.0f || x != x) ? x : 0.0f, return x > 0.0f ? 1.0f : (x != x ? x : 0.0f))
UNARY_FUNCTOR(UGelu, return x * normal_cdf(x), return normal_cdf(x) + x * INV_SQRT_2PI * expf(-0.5f * x * x))
// 0.5 x (1 + tanh u) == x sigmoid(2u); derivative s + 2 x s (1 - s) u' with s = sigmoid(2u).
UNARY_FUNCTOR(UGeluTanh, return x * sigmoid_stable(2.0f * gelu_tanh_arg(x)),
              float s; float sc; sigmoid_pair(2.0f * gelu_tanh_arg(x), s, sc);
              float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * x * x); return s + 2.0f * x * s * sc * du)
UNARY_FUNCTOR(USilu, return x * sigmoid_stable(x),
              float s; float sc; sigmoid_pair(x, s, sc); return s * (1.0f + x * sc))
UNARY_FUNCTOR(USin, return sinf(x), return cosf(x))
UNARY_FUNCTOR(UCos, return cosf(x), return -sinf(x))
// One rounding: fmaf(mul, x, add).
UNARY_FUNCTOR(UAffine, return fmaf(p0, x, p1), return p0)
// PyTorch: the gradient of x^0 is 0 everywhere.
UNARY_FUNCTOR(UPowf, return powf(x, p0), return p0 == 0.0f ? 0.0f : p0 * powf(x, p0 - 1.0f))

// x sigmoid(k x) with k = 1.702 (CLIP); derivative s + k x s (1 - s).
#define QUICK_GELU_K 1.702f
UNARY_FUNCTOR(UQuickGelu, return x * sigmoid_stable(QUICK_GELU_K * x),
              float s; float sc; sigmoid_pair(QUICK_GELU_K * x, s, sc); return s + QUICK_GELU_K * x * s * sc)

// ---- contiguous maps --------------------------------------------------------------------------------------

// y[i] = f(x[i]) for T storage; 16-byte packs when x and y are aligned, then the tail one element at a time.
template <typename T, typename F>
__device__ __forceinline__ void unary_map(const T* x, T* y, long long n, F f) {
    constexpr int V = 16 / sizeof(T);
    long long nv = (is_aligned(x, 16) && is_aligned(y, 16)) ? n / V : 0;
    for (long long i = gidx(); i < nv; i += gstride()) {
        Pack<T, V> p = reinterpret_cast<const Pack<T, V>*>(x)[i];
#pragma unroll
        for (int k = 0; k < V; ++k) p.v[k] = from_f32<T>(f.fwd(to_f32(p.v[k])));
        reinterpret_cast<Pack<T, V>*>(y)[i] = p;
    }
    for (long long i = nv * V + gidx(); i < n; i += gstride()) y[i] = from_f32<T>(f.fwd(to_f32(x[i])));
}

// dx[i] = dy[i] * f'(x[i]).
template <typename T, typename F>
__device__ __forceinline__ void unary_bwd_map(const T* x, const T* dy, T* dx, long long n, F f) {
    constexpr int V = 16 / sizeof(T);
    long long nv = (is_aligned(x, 16) && is_aligned(dy, 16) && is_aligned(dx, 16)) ? n / V : 0;
    for (long long i = gidx(); i < nv; i += gstride()) {
        Pack<T, V> px = reinterpret_cast<const Pack<T, V>*>(x)[i];
        Pack<T, V> pg = reinterpret_cast<const Pack<T, V>*>(dy)[i];
#pragma unroll
        for (int k = 0; k < V; ++k) px.v[k] = from_f32<T>(to_f32(pg.v[k]) * f.deriv(to_f32(px.v[k])));
        reinterpret_cast<Pack<T, V>*>(dx)[i] = px;
    }
    for (long long i = nv * V + gidx(); i < n; i += gstride()) {
        dx[i] = from_f32<T>(to_f32(dy[i]) * f.deriv(to_f32(x[i])));
    }
}

// Runs `run(f)` with `f` the functor of op code `op` (one instantiation per op, outside the loops).
template <typename R>
__device__ __forceinline__ void unary_dispatch(int op, float p0, float p1, R run) {
    switch (op) {
        case UNARY_NEG: run(UNeg{p0, p1}); break;
        case UNARY_EXP: run(UExp{p0, p1}); break;
        case UNARY_LOG: run(ULog{p0, p1}); break;
        case UNARY_SQRT: run(USqrt{p0, p1}); break;
        case UNARY_RSQRT: run(URsqrt{p0, p1}); break;
        case UNARY_RECIP: run(URecip{p0, p1}); break;
        case UNARY_ABS: run(UAbs{p0, p1}); break;
        case UNARY_SQUARE: run(USquare{p0, p1}); break;
        case UNARY_TANH: run(UTanh{p0, p1}); break;
        case UNARY_SIGMOID: run(USigmoid{p0, p1}); break;
        case UNARY_RELU: run(URelu{p0, p1}); break;
        case UNARY_GELU: run(UGelu{p0, p1}); break;
        case UNARY_GELU_TANH: run(UGeluTanh{p0, p1}); break;
        case UNARY_SILU: run(USilu{p0, p1}); break;
        case UNARY_SIN: run(USin{p0, p1}); break;
        case UNARY_COS: run(UCos{p0, p1}); break;
        case UNARY_AFFINE: run(UAffine{p0, p1}); break;
        case UNARY_POWF: run(UPowf{p0, p1}); break;
        case UNARY_QUICK_GELU: run(UQuickGelu{p0, p1}); break;
        default: break;
    }
}

template <typename T>
struct UnaryFwdRun {
    const T* x;
    T* y;
    long long n;
    template <typename F> __device__ __forceinline__ void operator()(F f) const { unary_map(x, y, n, f); }
};
template <typename T>
struct UnaryBwdRun {
    const T* x;
    const T* dy;
    T* dx;
    long long n;
    template <typename F> __device__ __forceinline__ void operator()(F f) const { unary_bwd_map(x, dy, dx, n, f); }
};

template <typename T>
__device__ __forceinline__ void unary_fwd(const T* x, T* y, int op, float p0, float p1, long long n) {
    unary_dispatch(op, p0, p1, UnaryFwdRun<T>{x, y, n});
}
template <typename T>
__device__ __forceinline__ void unary_bwd(const T* x, const T* dy, T* dx, int op, float p0, float p1, long long n) {
    unary_dispatch(op, p0, p1, UnaryBwdRun<T>{x, dy, dx, n});
}

// y = f(x); y may be x.
INSTAGEN_KERNELS_FLOAT(unary_fwd, ,
                       (const T* x, T* y, int op, float p0, float p1, long long n),
                       unary_fwd(x, y, op, p0, p1, n))

// dx = dy * f'(x); dx may be x or dy.
INSTAGEN_KERNELS_FLOAT(unary_bwd, ,
                       (const T* x, const T* dy, T* dx, int op, float p0, float p1, long long n),
                       unary_bwd(x, dy, dx, op, p0, p1, n))

// ---- binary ops with numpy broadcasting -------------------------------------------------------------------

// The output's merged axes (innermost first) and each operand's element strides along them (0 on broadcast
// axes). Mirrored by `BcastShape` in src/backend/launch/elementwise.rs.
struct BcastShape {
    long long ndim;  // >= 1
    long long wide;  // 1: some index may reach 2^31, divide in 64 bits
    long long vec;   // > 1: inner strides are 0 or 1 and (ndim == 1 or shape[0] % vec == 0): use packs of vec
    long long pad_;
    long long shape[STRIDED_MAX_DIMS];
    long long sa[STRIDED_MAX_DIMS];
    long long sb[STRIDED_MAX_DIMS];
    unsigned magic[STRIDED_MAX_DIMS];
    unsigned shift[STRIDED_MAX_DIMS];
};

struct BAdd { __device__ __forceinline__ float operator()(float a, float b) const { return a + b; } };
struct BSub { __device__ __forceinline__ float operator()(float a, float b) const { return a - b; } };
struct BMul { __device__ __forceinline__ float operator()(float a, float b) const { return a * b; } };
struct BDiv { __device__ __forceinline__ float operator()(float a, float b) const { return a / b; } };
// NaN from either side propagates (torch.maximum); a tie returns b, which equals a.
struct BMax { __device__ __forceinline__ float operator()(float a, float b) const { return (a > b || a != a) ? a : b; } };
struct BMin { __device__ __forceinline__ float operator()(float a, float b) const { return (a < b || a != a) ? a : b; } };
struct BEq { __device__ __forceinline__ float operator()(float a, float b) const { return a == b ? 1.0f : 0.0f; } };
struct BGt { __device__ __forceinline__ float operator()(float a, float b) const { return a > b ? 1.0f : 0.0f; } };
struct BGe { __device__ __forceinline__ float operator()(float a, float b) const { return a >= b ? 1.0f : 0.0f; } };

template <bool Wide>
__device__ __forceinline__ void bcast_offsets(const BcastShape& s, long long i, long long& oa, long long& ob) {
    long long a = 0, b = 0;
    for_each_coord<Wide>(s, i, [&](int d, long long c) {
        a += c * s.sa[d];
        b += c * s.sb[d];
    });
    oa = a;
    ob = b;
}

// One element per step: any strides.
template <typename T, bool Wide, typename F>
__device__ __forceinline__ void binary_scalar(const T* a, const T* b, T* y, const BcastShape& s, long long from,
                                              long long n, F f) {
    for (long long i = from + gidx(); i < n; i += gstride()) {
        long long oa, ob;
        bcast_offsets<Wide>(s, i, oa, ob);
        y[i] = from_f32<T>(f(to_f32(a[oa]), to_f32(b[ob])));
    }
}

// V elements per step along the inner axis, each operand read as a pack (inner stride 1) or one broadcast
// value (inner stride 0); then the tail (only when ndim == 1) one element at a time.
template <typename T, int V, bool Wide, typename F>
__device__ __forceinline__ void binary_packed(const T* a, const T* b, T* y, const BcastShape& s, long long n, F f) {
    long long groups = n / V;
    bool a_vec = s.sa[0] == 1, b_vec = s.sb[0] == 1;
    for (long long g = gidx(); g < groups; g += gstride()) {
        long long oa, ob;
        bcast_offsets<Wide>(s, g * V, oa, ob);
        Pack<T, V> pa, pb;
        if (a_vec) {
            pa = *reinterpret_cast<const Pack<T, V>*>(a + oa);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) pa.v[k] = a[oa];
        }
        if (b_vec) {
            pb = *reinterpret_cast<const Pack<T, V>*>(b + ob);
        } else {
#pragma unroll
            for (int k = 0; k < V; ++k) pb.v[k] = b[ob];
        }
#pragma unroll
        for (int k = 0; k < V; ++k) pa.v[k] = from_f32<T>(f(to_f32(pa.v[k]), to_f32(pb.v[k])));
        reinterpret_cast<Pack<T, V>*>(y)[g] = pa;
    }
    binary_scalar<T, Wide>(a, b, y, s, groups * V, n, f);
}

template <typename T, typename F>
__device__ __forceinline__ void binary_run(const T* a, const T* b, T* y, const BcastShape& s, long long n, F f) {
    constexpr int V = 16 / sizeof(T);
    bool packed = s.vec == V && is_aligned(a, 16) && is_aligned(b, 16) && is_aligned(y, 16);
    if (packed) {
        if (s.wide) binary_packed<T, V, true>(a, b, y, s, n, f);
        else binary_packed<T, V, false>(a, b, y, s, n, f);
    } else {
        if (s.wide) binary_scalar<T, true>(a, b, y, s, 0, n, f);
        else binary_scalar<T, false>(a, b, y, s, 0, n, f);
    }
}

template <typename T>
__device__ __forceinline__ void binary_fwd(const T* a, const T* b, T* y, int op, const BcastShape& s, long long n) {
    switch (op) {
        case BINARY_ADD: binary_run(a, b, y, s, n, BAdd{}); break;
        case BINARY_SUB: binary_run(a, b, y, s, n, BSub{}); break;
        case BINARY_MUL: binary_run(a, b, y, s, n, BMul{}); break;
        case BINARY_DIV: binary_run(a, b, y, s, n, BDiv{}); break;
        case BINARY_MAX: binary_run(a, b, y, s, n, BMax{}); break;
        case BINARY_MIN: binary_run(a, b, y, s, n, BMin{}); break;
        case BINARY_EQ: binary_run(a, b, y, s, n, BEq{}); break;
        case BINARY_GT: binary_run(a, b, y, s, n, BGt{}); break;
        case BINARY_GE: binary_run(a, b, y, s, n, BGe{}); break;
        default: break;
    }
}

// y = a op b broadcast to the output (n elements, row-major); y may be a or b when it has the output's shape.
INSTAGEN_KERNELS_FLOAT(binary_fwd, ,
                       (const T* a, const T* b, T* y, int op, BcastShape s, long long n),
                       binary_fwd(a, b, y, op, s, n))

// ---- conversions with the CPU reference's semantics (Rust `as`) -------------------------------------------

template <typename T> struct IsInt { static constexpr bool value = false; };
template <> struct IsInt<int> { static constexpr bool value = true; };
template <> struct IsInt<long long> { static constexpr bool value = true; };
template <> struct IsInt<unsigned char> { static constexpr bool value = true; };

// Any dtype to f32: floats exactly, integers rounded to nearest (i64 directly, not through f64).
__device__ __forceinline__ float value_f32(float x) { return x; }
__device__ __forceinline__ float value_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float value_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float value_f32(int x) { return (float)x; }
__device__ __forceinline__ float value_f32(long long x) { return (float)x; }
__device__ __forceinline__ float value_f32(unsigned char x) { return (float)x; }

// f32 to any dtype: floats round to nearest even; integers truncate toward zero, saturate, NaN -> 0. The
// bounds are explicit because C++ leaves out-of-range float-to-int conversion undefined (the emulator's x86
// conversion would give INT_MIN).
template <typename T> __device__ __forceinline__ T store_f32(float v);
template <> __device__ __forceinline__ float store_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ int store_f32<int>(float v) {
    if (v != v) return 0;
    if (v >= 2147483648.0f) return 2147483647;
    if (v <= -2147483648.0f) return (-2147483647 - 1);
    return (int)v;
}
template <> __device__ __forceinline__ long long store_f32<long long>(float v) {
    if (v != v) return 0;
    if (v >= 9223372036854775808.0f) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0f) return (-9223372036854775807LL - 1);
    return (long long)v;
}
template <> __device__ __forceinline__ unsigned char store_f32<unsigned char>(float v) {
    if (v != v || v <= 0.0f) return 0;
    if (v >= 255.0f) return 255;
    return (unsigned char)v;
}

// Integer to integer by value, wrapping like Rust `as` (two's complement truncation / extension); anything
// involving a float goes through f32.
template <typename D, typename S>
__device__ __forceinline__ D convert(S x) {
    if constexpr (IsInt<S>::value && IsInt<D>::value) {
        return (D)(unsigned long long)(long long)x;
    } else {
        return store_f32<D>(value_f32(x));
    }
}

// ---- fill and cast ----------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void fill_run(T* y, T v, long long n) {
    constexpr int V = 16 / sizeof(T);
    long long nv = is_aligned(y, 16) ? n / V : 0;
    Pack<T, V> p;
#pragma unroll
    for (int k = 0; k < V; ++k) p.v[k] = v;
    for (long long i = gidx(); i < nv; i += gstride()) reinterpret_cast<Pack<T, V>*>(y)[i] = p;
    for (long long i = nv * V + gidx(); i < n; i += gstride()) y[i] = v;
}

// y[:] = value as T (integers: truncated toward zero, saturated; NaN -> 0).
INSTAGEN_KERNELS_ALL(fill, , (T* y, float value, long long n), fill_run(y, store_f32<T>(value), n))

// Four elements per step (x and y aligned to 4 elements), then the tail.
template <typename S, typename D>
__device__ __forceinline__ void cast_run(const S* x, D* y, long long n) {
    constexpr int V = 4;
    long long nv = (is_aligned(x, sizeof(S) * V) && is_aligned(y, sizeof(D) * V)) ? n / V : 0;
    for (long long i = gidx(); i < nv; i += gstride()) {
        Pack<S, V> p = reinterpret_cast<const Pack<S, V>*>(x)[i];
        Pack<D, V> q;
#pragma unroll
        for (int k = 0; k < V; ++k) q.v[k] = convert<D>(p.v[k]);
        reinterpret_cast<Pack<D, V>*>(y)[i] = q;
    }
    for (long long i = nv * V + gidx(); i < n; i += gstride()) y[i] = convert<D>(x[i]);
}

// y = x as D for every ordered pair (src == dst included: a plain copy).
INSTAGEN_KERNELS_ALL(cast_f32, , (const float* x, T* y, long long n), cast_run(x, y, n))
INSTAGEN_KERNELS_ALL(cast_f16, , (const __half* x, T* y, long long n), cast_run(x, y, n))
INSTAGEN_KERNELS_ALL(cast_bf16, , (const __nv_bfloat16* x, T* y, long long n), cast_run(x, y, n))
INSTAGEN_KERNELS_ALL(cast_i32, , (const int* x, T* y, long long n), cast_run(x, y, n))
INSTAGEN_KERNELS_ALL(cast_i64, , (const long long* x, T* y, long long n), cast_run(x, y, n))
INSTAGEN_KERNELS_ALL(cast_u8, , (const unsigned char* x, T* y, long long n), cast_run(x, y, n))
