// Box ops on xyxy boxes (f32 arithmetic; every product that feeds a sum is rounded on its own with __fmul_rn,
// so no FMA contraction makes the GPU differ from torchvision / the CPU reference):
//
//  - box_iou_fwd_<dt>: IoU or GIoU (`giou` = 1) of every pair, a [B, N, 4] x b [B, M, 4] -> [B, N, M]; one
//    thread per output (grid stride), consecutive threads along M.
//  - box_encode_fwd_<dt> / box_decode_fwd_<dt>: torchvision BoxCoder, one thread per (box, class) delta.
//  - nms_fwd_<score dt>_<class dt>: batched NMS in ONE block. A bitmask of removed boxes lives in dynamic
//    shared memory (N bits). Each round every thread scans its boxes (i = tid, tid + blockDim, ...): drops the
//    ones the box kept last round suppresses (same class, IoU > threshold), and proposes its best survivor by
//    (score key, lower index); a block-wide max picks the next kept box. Rounds = kept + 1 (<= max_out + 1),
//    each O(N / blockDim) work and two barriers. This replaces torchvision's sort + N x N/64 mask matrix
//    because a launch has no scratch memory (see docs/DESIGN.md).
#include "common.cuh"

// ---- shared helpers ----------------------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ void load_box(const T* p, float b[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = to_f32(p[i]);
}

// Intersection area (0 when disjoint).
__device__ __forceinline__ float box_inter(const float a[4], const float b[4]) {
    const float w = fmaxf(fminf(a[2], b[2]) - fmaxf(a[0], b[0]), 0.0f);
    const float h = fmaxf(fminf(a[3], b[3]) - fmaxf(a[1], b[1]), 0.0f);
    return __fmul_rn(w, h);
}

__device__ __forceinline__ float box_area(const float b[4]) { return __fmul_rn(b[2] - b[0], b[3] - b[1]); }

// Key whose unsigned order is the score order: NaN largest, -0 == +0 (detection::boxes::score_key).
__device__ __forceinline__ unsigned score_key(float v) {
    if (v != v) return 0xffffffffu;
    const unsigned b = v == 0.0f ? 0u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// ---- IoU / GIoU matrix ------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void box_iou(const T* a, const T* b, T* out, long long batch, long long n, long long m,
                                        int giou) {
    const long long total = batch * n * m;
    for (long long e = gidx(); e < total; e += gstride()) {
        const long long j = e % m, r = e / m;  // r = bi * n + i
        const long long bi = r / n;
        float p[4], q[4];
        load_box(a + r * 4, p);
        load_box(b + (bi * m + j) * 4, q);
        const float inter = box_inter(p, q);
        const float uni = (box_area(p) + box_area(q)) - inter;
        float v = inter / uni;
        if (giou) {
            const float w = fmaxf(fmaxf(p[2], q[2]) - fminf(p[0], q[0]), 0.0f);
            const float h = fmaxf(fmaxf(p[3], q[3]) - fminf(p[1], q[1]), 0.0f);
            const float hull = __fmul_rn(w, h);
            v = v - (hull - uni) / hull;
        }
        out[e] = from_f32<T>(v);
    }
}

// ---- box coder ----------------------------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ void box_encode(const T* ref, const T* tgt, T* out, long long n, float wx, float wy,
                                           float ww, float wh) {
    for (long long i = gidx(); i < n; i += gstride()) {
        float r[4], t[4];
        load_box(ref + i * 4, r);
        load_box(tgt + i * 4, t);
        const float ew = r[2] - r[0], eh = r[3] - r[1];
        const float ex = r[0] + __fmul_rn(0.5f, ew), ey = r[1] + __fmul_rn(0.5f, eh);
        const float gw = t[2] - t[0], gh = t[3] - t[1];
        const float gx = t[0] + __fmul_rn(0.5f, gw), gy = t[1] + __fmul_rn(0.5f, gh);
        out[i * 4 + 0] = from_f32<T>(__fmul_rn(wx, gx - ex) / ew);
        out[i * 4 + 1] = from_f32<T>(__fmul_rn(wy, gy - ey) / eh);
        out[i * 4 + 2] = from_f32<T>(__fmul_rn(ww, logf(gw / ew)));
        out[i * 4 + 3] = from_f32<T>(__fmul_rn(wh, logf(gh / eh)));
    }
}

template <typename T>
__device__ __forceinline__ void box_decode(const T* ref, const T* deltas, T* out, long long n, long long k, float wx,
                                           float wy, float ww, float wh, float clamp) {
    for (long long e = gidx(); e < n * k; e += gstride()) {
        const long long i = e / k;
        float r[4], d[4];
        load_box(ref + i * 4, r);
        load_box(deltas + e * 4, d);
        const float w = r[2] - r[0], h = r[3] - r[1];
        const float cx = r[0] + __fmul_rn(0.5f, w), cy = r[1] + __fmul_rn(0.5f, h);
        const float dx = d[0] / wx, dy = d[1] / wy;
        float dw = d[2] / ww, dh = d[3] / wh;
        dw = dw > clamp ? clamp : dw;  // torch.clamp(max=): NaN stays NaN
        dh = dh > clamp ? clamp : dh;
        const float px = __fmul_rn(dx, w) + cx, py = __fmul_rn(dy, h) + cy;
        const float pw = __fmul_rn(expf(dw), w), ph = __fmul_rn(expf(dh), h);
        const float hw = __fmul_rn(0.5f, pw), hh = __fmul_rn(0.5f, ph);
        out[e * 4 + 0] = from_f32<T>(px - hw);
        out[e * 4 + 1] = from_f32<T>(py - hh);
        out[e * 4 + 2] = from_f32<T>(px + hw);
        out[e * 4 + 3] = from_f32<T>(py + hh);
    }
}

// ---- batched NMS (one block) ----------------------------------------------------------------------------

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

template <typename S, typename C>
__device__ __forceinline__ void nms_block(const float* boxes, const S* scores, const C* classes, long long* out,
                                          int n, int max_out, float thr) {
    INSTAGEN_DYNAMIC_SMEM(unsigned, removed);  // ceil(n / 32) words
    __shared__ unsigned long long red[32];
    __shared__ unsigned long long best_slot;
    const int tid = threadIdx.x, bd = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = (bd + 31) >> 5;
    const int words = (n + 31) >> 5;
    for (int w = tid; w < words; w += bd) removed[w] = 0u;
    __syncthreads();
    int kept = 0, last = -1;
    long long last_cls = 0;
    float lb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float larea = 0.0f;
    while (kept < max_out) {
        unsigned long long mine = 0ull;  // (key << 32) | ~index: the max is the highest key, then the lowest index
        for (int i = tid; i < n; i += bd) {
            if (removed[i >> 5] & (1u << (i & 31))) continue;
            bool drop = i == last;
            if (!drop && last >= 0 && (long long)classes[i] == last_cls) {
                float b[4];
                load_box(boxes + (long long)i * 4, b);
                const float inter = box_inter(lb, b);
                drop = inter / ((larea + box_area(b)) - inter) > thr;
            }
            if (drop) {
                atomicOr(&removed[i >> 5], 1u << (i & 31));
                continue;
            }
            const unsigned long long c =
                ((unsigned long long)score_key(to_f32(scores[i])) << 32) | (unsigned long long)(~(unsigned)i);
            mine = c > mine ? c : mine;
        }
        mine = warp_max_u64(mine);
        if (lane == 0) red[warp] = mine;
        __syncthreads();
        if (warp == 0) {
            unsigned long long v = lane < nw ? red[lane] : 0ull;
            v = warp_max_u64(v);
            if (lane == 0) best_slot = v;
        }
        __syncthreads();
        const unsigned long long best = best_slot;
        if (best == 0ull) break;  // nothing left (keys are never 0)
        last = (int)(~(unsigned)(best & 0xffffffffull));
        if (tid == 0) out[kept] = last;
        ++kept;
        last_cls = (long long)classes[last];
        load_box(boxes + (long long)last * 4, lb);
        larea = box_area(lb);
    }
    for (int i = kept + tid; i < max_out; i += bd) out[i] = -1;
    if (tid == 0) out[max_out] = kept;
}

// ---- entry points -------------------------------------------------------------------------------------------

INSTAGEN_KERNELS_FLOAT(box_iou_fwd, ,
                       (const T* a, const T* b, T* out, long long batch, long long n, long long m, int giou),
                       box_iou(a, b, out, batch, n, m, giou))
INSTAGEN_KERNELS_FLOAT(box_encode_fwd, ,
                       (const T* ref, const T* tgt, T* out, long long n, float wx, float wy, float ww, float wh),
                       box_encode(ref, tgt, out, n, wx, wy, ww, wh))
INSTAGEN_KERNELS_FLOAT(box_decode_fwd, ,
                       (const T* ref, const T* deltas, T* out, long long n, long long k, float wx, float wy, float ww,
                        float wh, float clamp),
                       box_decode(ref, deltas, out, n, k, wx, wy, ww, wh, clamp))

// nms_fwd_<scores dtype>_<classes index type>; T is the scores' type.
#define NMS_FWD(NAME, S, I)                                                                                    \
    INSTAGEN_KERNEL(NAME, S, __launch_bounds__(1024),                                                          \
                    (const float* boxes, const T* scores, const I* classes, long long* out, int n, int max_out, \
                     float thr),                                                                               \
                    nms_block(boxes, scores, classes, out, n, max_out, thr))
NMS_FWD(nms_fwd_f32_i32, float, int)
NMS_FWD(nms_fwd_f32_i64, float, long long)
NMS_FWD(nms_fwd_f16_i32, __half, int)
NMS_FWD(nms_fwd_f16_i64, __half, long long)
NMS_FWD(nms_fwd_bf16_i32, __nv_bfloat16, int)
NMS_FWD(nms_fwd_bf16_i64, __nv_bfloat16, long long)
#undef NMS_FWD
