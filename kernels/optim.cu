// Optimiser kernels beside adamw.cu (as src/backend/cpu/kernels/optim.rs), f32 math:
//
//  - sgd_<pdt>: PyTorch torch.optim.SGD on one parameter tensor stored as <pdt>; the gradient dtype is an
//    argument (0 f32, 1 f16, 2 bf16). g = grad * grad_scale; g += wd * w; with momentum mu: buf = g on the
//    first step, else buf = mu * buf + (1 - dampening) * g; g = nesterov ? g + mu * buf : buf; w -= lr * g.
//    With `master` (f32 master weights for f16/bf16 params) w lives there and the parameter is rewritten from
//    it. `momentum` is null when mu == 0.
//  - ema_<sdt>: ema = decay * ema + (1 - decay) * src, ema f32, src stored as <sdt>.
//  - accumulate_<gdt>: acc = g (first) or acc + g, acc f32, g stored as <gdt>.
//  - sumsq_partial_<dt>: sum of squares of one tensor in f64; block b writes partials[b]. Each thread sums its
//    grid-stride elements in order, the block combines its 256 sums in a fixed tree.
//  - sumsq_final: one block sums partials[0..n] (fixed order: thread t takes t, t + 256, ..., then the tree)
//    and writes partials[n]. Results depend on the launch geometry only, which the launcher derives from sizes.
// Each element is read and written by one thread (grid-stride loops), so nothing races; the reductions
// synchronise with __syncthreads.
#include "common.cuh"

struct SgdArgs {
    float lr, momentum;
    float one_minus_dampening, weight_decay;
    float grad_scale;
    int nesterov, first, grad_dtype;
    long long n;
};

__device__ __forceinline__ float load_any(const void* p, long long i, int dtype) {
    if (dtype == 1) return to_f32(static_cast<const __half*>(p)[i]);
    if (dtype == 2) return to_f32(static_cast<const __nv_bfloat16*>(p)[i]);
    return static_cast<const float*>(p)[i];
}

template <typename T>
__device__ __forceinline__ void sgd(T* param, const void* grad, float* buf, float* master, SgdArgs a) {
    for (long long i = gidx(); i < a.n; i += gstride()) {
        const float w = master != nullptr ? master[i] : to_f32(param[i]);
        float g = load_any(grad, i, a.grad_dtype) * a.grad_scale;
        if (a.weight_decay != 0.0f) g = g + a.weight_decay * w;
        if (buf != nullptr) {
            const float b = a.first ? g : a.momentum * buf[i] + a.one_minus_dampening * g;
            buf[i] = b;
            g = a.nesterov ? g + a.momentum * b : b;
        }
        const float wn = w - a.lr * g;
        if (master != nullptr) master[i] = wn;
        param[i] = from_f32<T>(wn);
    }
}

INSTAGEN_KERNELS_FLOAT(sgd, , (T* param, const void* grad, float* buf, float* master, SgdArgs a),
                       sgd(param, grad, buf, master, a))

template <typename T>
__device__ __forceinline__ void ema(float* e, const T* src, float decay, float rest, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) e[i] = decay * e[i] + rest * to_f32(src[i]);
}

INSTAGEN_KERNELS_FLOAT(ema, , (float* e, const T* src, float decay, float rest, long long n),
                       ema(e, src, decay, rest, n))

template <typename T>
__device__ __forceinline__ void accumulate(float* acc, const T* g, int first, long long n) {
    for (long long i = gidx(); i < n; i += gstride()) acc[i] = first ? to_f32(g[i]) : acc[i] + to_f32(g[i]);
}

INSTAGEN_KERNELS_FLOAT(accumulate, , (float* acc, const T* g, int first, long long n), accumulate(acc, g, first, n))

// Tree sum of one value per thread (blockDim.x == 256); every thread must call it; the result is in red[0].
__device__ __forceinline__ void block_sum(double* red, double v) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] = red[threadIdx.x] + red[threadIdx.x + s];
        __syncthreads();
    }
}

template <typename T>
__device__ __forceinline__ void sumsq_partial(const T* x, double* partials, long long n) {
    __shared__ double red[256];
    double acc = 0.0;
    for (long long i = gidx(); i < n; i += gstride()) {
        const double v = (double)to_f32(x[i]);
        acc += v * v;
    }
    block_sum(red, acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}

INSTAGEN_KERNELS_FLOAT(sumsq_partial, __launch_bounds__(256), (const T* x, double* partials, long long n),
                       sumsq_partial(x, partials, n))

__device__ __forceinline__ void sumsq_final_impl(double* partials, long long n) {
    __shared__ double red[256];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += 256) acc += partials[i];
    block_sum(red, acc);
    if (threadIdx.x == 0) partials[n] = red[0];
}

INSTAGEN_KERNEL(sumsq_final, double, __launch_bounds__(256), (double* partials, long long n),
                sumsq_final_impl(partials, n))
