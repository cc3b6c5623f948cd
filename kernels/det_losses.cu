// Detection losses, reduction "none", as src/backend/cpu/kernels/det_losses.rs (which computes in f64; these
// compute in f32): the sigmoid focal loss (Op::SigmoidFocalLoss, torchvision.ops.sigmoid_focal_loss) and its
// gradient w.r.t. the logits, and the GIoU loss 1 - GIoU (Op::GiouLoss, torchvision.ops.generalized_box_iou_loss)
// and its gradient w.r.t. the predicted boxes. One thread per element / box pair, grid-stride loops.
#include "common.cuh"

// Focal loss at logit x, target t; with `grad`, d loss / dx instead. 1 - p_t = p (1 - t) + (1 - p) t and
// p - t = p (1 - t) - (1 - p) t are formed without cancellation (p and 1 - p are both sigmoids).
__device__ __forceinline__ float focal(float x, float t, float alpha, float gamma, bool grad) {
    const float p = sigmoid_f32(x), q = sigmoid_f32(-x);
    const float ce = fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
    const float m = p * (1.0f - t) + q * t;
    const float mg = gamma == 0.0f ? 1.0f : powf(m, gamma);
    const float a = alpha >= 0.0f ? alpha * t + (1.0f - alpha) * (1.0f - t) : 1.0f;
    if (!grad) return a * ce * mg;
    const float dmg = gamma == 0.0f ? 0.0f : gamma * powf(m, gamma - 1.0f) * (1.0f - 2.0f * t) * p * q;
    return a * ((p * (1.0f - t) - q * t) * mg + ce * dmg);
}

template <typename T>
__device__ __forceinline__ void focal_fwd(const T* x, const T* t, T* out, long long n, float alpha, float gamma) {
    for (long long i = gidx(); i < n; i += gstride()) {
        out[i] = from_f32<T>(focal(to_f32(x[i]), to_f32(t[i]), alpha, gamma, false));
    }
}

template <typename T>
__device__ __forceinline__ void focal_bwd(const T* x, const T* t, const T* dy, T* dx, long long n, float alpha,
                                          float gamma) {
    for (long long i = gidx(); i < n; i += gstride()) {
        dx[i] = from_f32<T>(focal(to_f32(x[i]), to_f32(t[i]), alpha, gamma, true) * to_f32(dy[i]));
    }
}

// d max(a, b) / da as torch defines it: 1, 0.5 on a tie, 0.
__device__ __forceinline__ float dmax(float a, float b) { return a > b ? 1.0f : (a == b ? 0.5f : 0.0f); }

// 1 - GIoU of boxes p and t; with g != null also d/dp into g[0..4].
__device__ __forceinline__ float giou_loss(const float* p, const float* t, float eps, float* g) {
    const float x1 = p[0], y1 = p[1], x2 = p[2], y2 = p[3];
    const float a1 = t[0], b1 = t[1], a2 = t[2], b2 = t[3];
    const float iw = fminf(x2, a2) - fmaxf(x1, a1), ih = fminf(y2, b2) - fmaxf(y1, b1);
    const bool mask = iw > 0.0f && ih > 0.0f;
    const float inter = mask ? iw * ih : 0.0f;
    const float union_ = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter;
    const float cw = fmaxf(x2, a2) - fminf(x1, a1), ch = fmaxf(y2, b2) - fminf(y1, b1);
    const float area_c = cw * ch;
    const float ue = union_ + eps, ce = area_c + eps;
    const float giou = inter / ue - (area_c - union_) / ce;
    if (g != nullptr) {
        const float d_inter = 1.0f / ue + inter / (ue * ue) - 1.0f / ce;
        const float d_area = -inter / (ue * ue) + 1.0f / ce;
        const float d_c = -1.0f / ce + (area_c - union_) / (ce * ce);
        float g0 = -d_area * (y2 - y1), g2 = d_area * (y2 - y1);
        float g1 = -d_area * (x2 - x1), g3 = d_area * (x2 - x1);
        if (mask) {
            g0 -= d_inter * ih * dmax(x1, a1);
            g2 += d_inter * ih * dmax(-x2, -a2);
            g1 -= d_inter * iw * dmax(y1, b1);
            g3 += d_inter * iw * dmax(-y2, -b2);
        }
        g0 -= d_c * ch * dmax(-x1, -a1);
        g2 += d_c * ch * dmax(x2, a2);
        g1 -= d_c * cw * dmax(-y1, -b1);
        g3 += d_c * cw * dmax(y2, b2);
        g[0] = -g0;
        g[1] = -g1;
        g[2] = -g2;
        g[3] = -g3;
    }
    return 1.0f - giou;
}

template <typename T>
__device__ __forceinline__ void load_box(const T* b, long long i, float* v) {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = to_f32(b[i * 4 + k]);
}

template <typename T>
__device__ __forceinline__ void giou_fwd(const T* p, const T* t, T* out, long long n, float eps) {
    for (long long i = gidx(); i < n; i += gstride()) {
        float pv[4], tv[4];
        load_box(p, i, pv);
        load_box(t, i, tv);
        out[i] = from_f32<T>(giou_loss(pv, tv, eps, nullptr));
    }
}

template <typename T>
__device__ __forceinline__ void giou_bwd(const T* p, const T* t, const T* dy, T* dp, long long n, float eps) {
    for (long long i = gidx(); i < n; i += gstride()) {
        float pv[4], tv[4], g[4];
        load_box(p, i, pv);
        load_box(t, i, tv);
        giou_loss(pv, tv, eps, g);
        const float d = to_f32(dy[i]);
#pragma unroll
        for (int k = 0; k < 4; ++k) dp[i * 4 + k] = from_f32<T>(g[k] * d);
    }
}

INSTAGEN_KERNELS_FLOAT(sigmoid_focal_loss_fwd, ,
                       (const T* x, const T* t, T* out, long long n, float alpha, float gamma),
                       focal_fwd<T>(x, t, out, n, alpha, gamma))
INSTAGEN_KERNELS_FLOAT(sigmoid_focal_loss_bwd, ,
                       (const T* x, const T* t, const T* dy, T* dx, long long n, float alpha, float gamma),
                       focal_bwd<T>(x, t, dy, dx, n, alpha, gamma))
INSTAGEN_KERNELS_FLOAT(giou_loss_fwd, ,
                       (const T* p, const T* t, T* out, long long n, float eps),
                       giou_fwd<T>(p, t, out, n, eps))
INSTAGEN_KERNELS_FLOAT(giou_loss_bwd, ,
                       (const T* p, const T* t, const T* dy, T* dp, long long n, float eps),
                       giou_bwd<T>(p, t, dy, dp, n, eps))
