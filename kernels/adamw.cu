// Fused AdamW update (PyTorch torch.optim.AdamW semantics, as src/backend/cpu/kernels/optim.rs), f32 math:
//
//   g = grad * grad_scale
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g
//   w = w * (1 - lr * wd) - step_size * m / (sqrt(v) / bc2_sqrt + eps)
//
// with step_size = lr / (1 - beta1^step) and bc2_sqrt = sqrt(1 - beta2^step) computed on the host in f64.
// adamw_<pdt>: the parameter is stored as <pdt>. With `master` (f32 master weights, for f16/bf16 params)
// w is read from and written to master and the parameter is rewritten from it; with master == null, w is
// the parameter itself. The gradient dtype is an argument (0 f32, 1 f16, 2 bf16). m, v are f32.
// Each element is read and written by one thread (grid-stride loop), so nothing races.
#include "common.cuh"

struct AdamWArgs {
    float beta1, beta2;
    float one_minus_beta1, one_minus_beta2;
    float eps, decay;  // decay = 1 - lr * weight_decay
    float step_size, bc2_sqrt;
    float grad_scale, pad;
    long long n;
    int grad_dtype, pad2;
};

template <typename G>
__device__ __forceinline__ float load_grad(const void* g, long long i) {
    return to_f32(static_cast<const G*>(g)[i]);
}

template <typename T>
__device__ __forceinline__ void adamw(T* param, const void* grad, float* m, float* v, float* master, AdamWArgs a) {
    for (long long i = gidx(); i < a.n; i += gstride()) {
        float g;
        if (a.grad_dtype == 1) {
            g = load_grad<__half>(grad, i);
        } else if (a.grad_dtype == 2) {
            g = load_grad<__nv_bfloat16>(grad, i);
        } else {
            g = load_grad<float>(grad, i);
        }
        g *= a.grad_scale;
        const float mi = a.beta1 * m[i] + a.one_minus_beta1 * g;
        const float vi = a.beta2 * v[i] + a.one_minus_beta2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const float w = master != nullptr ? master[i] : to_f32(param[i]);
        const float denom = sqrtf(vi) / a.bc2_sqrt + a.eps;
        const float wn = w * a.decay - a.step_size * mi / denom;
        if (master != nullptr) master[i] = wn;
        param[i] = from_f32<T>(wn);
    }
}

INSTAGEN_KERNELS_FLOAT(adamw, ,
                       (T* param, const void* grad, float* m, float* v, float* master, AdamWArgs a),
                       adamw(param, grad, m, v, master, a))
