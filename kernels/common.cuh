// Shared helpers for every kernels/*.cu file.
//
// Kept to plain CUDA C++ so the same sources can later be compiled for the CPU through an
// emulation header: extern "C" __global__ entry points, templates and functors only inside.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

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
