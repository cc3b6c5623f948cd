// Element-wise ops on contiguous, same-shape tensors.
//
// Symbols: <op>_<fwd|bwd>[_<variant>]_<dtype>. f16 kernels load __half, compute in f32, store __half.
// Every kernel takes the element count n as a signed 64-bit integer and uses a grid-stride loop,
// so any launch geometry covers any n. Outputs may alias inputs (in-place): each element is read and
// written by the same thread, so pointers are deliberately not __restrict__.
#include "common.cuh"

// ---- generic loops: one output per element, f32 arithmetic -------------------------------------

template <typename T, typename F>
__device__ __forceinline__ void map1(const T* x, T* y, long long n, F f) {
    for (long long i = gidx(); i < n; i += gstride()) {
        y[i] = from_f32<T>(f(to_f32(x[i])));
    }
}

template <typename T, typename F>
__device__ __forceinline__ void map2(const T* a, const T* b, T* y, long long n, F f) {
    for (long long i = gidx(); i < n; i += gstride()) {
        y[i] = from_f32<T>(f(to_f32(a[i]), to_f32(b[i])));
    }
}

// ---- the ops, as f32 functors -------------------------------------------------------------------

struct AddOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MulOp {
    __device__ float operator()(float a, float b) const { return a * b; }
};
// silu(x) = x * sigmoid(x)
struct SiluOp {
    __device__ float operator()(float x) const { return x * sigmoid_f32(x); }
};
// d silu / dx = s * (1 + x * (1 - s)), s = sigmoid(x); the first argument is dy, the second x.
struct SiluBwdOp {
    __device__ float operator()(float dy, float x) const {
        float s = sigmoid_f32(x);
        return dy * (s * (1.0f + x * (1.0f - s)));
    }
};
// y = a * x + b
struct ScaleOp {
    float a, b;
    __device__ float operator()(float x) const { return fmaf(a, x, b); }
};

// ---- entry points -------------------------------------------------------------------------------

// y = a + b
extern "C" __global__ void add_fwd_f32(const float* a, const float* b, float* y, long long n) {
    map2(a, b, y, n, AddOp{});
}
extern "C" __global__ void add_fwd_f16(const __half* a, const __half* b, __half* y, long long n) {
    map2(a, b, y, n, AddOp{});
}

// y = a * b
extern "C" __global__ void mul_fwd_f32(const float* a, const float* b, float* y, long long n) {
    map2(a, b, y, n, MulOp{});
}
extern "C" __global__ void mul_fwd_f16(const __half* a, const __half* b, __half* y, long long n) {
    map2(a, b, y, n, MulOp{});
}

// y = silu(x)
extern "C" __global__ void silu_fwd_f32(const float* x, float* y, long long n) {
    map1(x, y, n, SiluOp{});
}
extern "C" __global__ void silu_fwd_f16(const __half* x, __half* y, long long n) {
    map1(x, y, n, SiluOp{});
}

// dx = dy * silu'(x)
extern "C" __global__ void silu_bwd_f32(const float* dy, const float* x, float* dx, long long n) {
    map2(dy, x, dx, n, SiluBwdOp{});
}
extern "C" __global__ void silu_bwd_f16(const __half* dy, const __half* x, __half* dx, long long n) {
    map2(dy, x, dx, n, SiluBwdOp{});
}

// y = a * x + b (a, b are f32 scalars for every dtype)
extern "C" __global__ void scale_fwd_f32(const float* x, float* y, float a, float b, long long n) {
    map1(x, y, n, ScaleOp{a, b});
}
extern "C" __global__ void scale_fwd_f16(const __half* x, __half* y, float a, float b, long long n) {
    map1(x, y, n, ScaleOp{a, b});
}
