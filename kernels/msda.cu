// Multi-scale deformable attention (Op::Msda) and its gradients (Op::MsdaBwdValue, Op::MsdaBwdLocAttn), as
// src/ops/msda/cpu.rs: bilinear grid_sample (align_corners=False, zero padding) of value [B, S, H, D] at
// normalised locations loc [B, Q, H, L, P, 2] (f32), weighted by attn [B, Q, H, L, P] and summed over levels
// and points -> [B, Q, H*D]. Value, weights and gradients are f32/f16/bf16 storage; arithmetic in f32; offsets
// in 64 bits.
//
// msda_fwd: one thread per output element (b, q, h, d): consecutive threads read consecutive channels of the
// same value rows (coalesced), and the sample geometry is a broadcast.
//
// The gradient w.r.t. value is a scatter (every sample adds to its four corners). It is deterministic without
// atomics: msda_bwd_value_part gives each thread one column (chunk k, b, h, d) of an f32 partial dvalue in the
// node's workspace, which it zeroes and then accumulates alone over its chunk's queries in (query, level,
// point) order; msda_bwd_value_fin adds the chunks' partials in chunk order and stores dvalue. The chunk count
// is a function of the shapes only (ops/msda/launch.rs), so results are the same on every run.
//
// msda_bwd_loc_attn: one thread per sample (b, q, h, l, p): four dot products dy . value_corner over D, then
// d attn = sum_c w_c s_c, d loc_x = attn * w_level * sum_c dwx_c s_c (likewise y).
#include "common.cuh"

#define MSDA_MAX_LEVELS 8

// Mirrored by MsdaParams in src/ops/msda/launch.rs (every field 8 bytes, no padding).
struct MsdaParams {
    long long b, q, s, h, d, l, p;
    long long chunks;  // msda_bwd_value: query chunks (partials in the workspace)
    long long qchunk;  // queries per chunk
    long long lh[MSDA_MAX_LEVELS], lw[MSDA_MAX_LEVELS], start[MSDA_MAX_LEVELS];
};

// Pixel coordinate of a normalised location (x = loc * size - 0.5, rounded as the CPU code: no FMA), clamped
// into [-2, size + 1]; NaN lands on -2 (fmaxf returns the other operand).
__device__ __forceinline__ float msda_pixel(float loc, long long size) {
    const float x = __fadd_rn(__fmul_rn(loc, (float)size), -0.5f);
    return fminf(fmaxf(x, -2.0f), (float)size + 1.0f);
}

// The four corners (y0,x0), (y0,x1), (y1,x0), (y1,x1): pixel index in the level (-1 off the map), weight, and
// the weight's derivatives w.r.t. the pixel coordinates.
struct MsdaCorners {
    long long idx[4];
    float w[4], dwx[4], dwy[4];
};

__device__ __forceinline__ MsdaCorners msda_corners(float lx, float ly, long long h, long long w) {
    const float x = msda_pixel(lx, w), y = msda_pixel(ly, h);
    const float x0f = floorf(x), y0f = floorf(y);
    const float fx = x - x0f, fy = y - y0f;
    const float gx = 1.0f - fx, gy = 1.0f - fy;
    const long long x0 = (long long)x0f, y0 = (long long)y0f;
    MsdaCorners c;
    const long long ys[4] = {y0, y0, y0 + 1, y0 + 1}, xs[4] = {x0, x0 + 1, x0, x0 + 1};
    for (int i = 0; i < 4; ++i) {
        c.idx[i] = (ys[i] >= 0 && xs[i] >= 0 && ys[i] < h && xs[i] < w) ? ys[i] * w + xs[i] : -1;
    }
    c.w[0] = gy * gx;
    c.w[1] = gy * fx;
    c.w[2] = fy * gx;
    c.w[3] = fy * fx;
    c.dwx[0] = -gy;
    c.dwx[1] = gy;
    c.dwx[2] = -fy;
    c.dwx[3] = fy;
    c.dwy[0] = -gx;
    c.dwy[1] = -fx;
    c.dwy[2] = gx;
    c.dwy[3] = fx;
    return c;
}

template <typename T>
__device__ __forceinline__ void msda_fwd(const T* value, const float* loc, const T* attn, T* out, long long total,
                                         const MsdaParams& p) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const long long dd = i % p.d, r = i / p.d;  // r = (b, q, h)
        const long long hh = r % p.h, b = r / (p.q * p.h);
        float acc = 0.0f;
        for (long long l = 0; l < p.l; ++l) {
            const T* v = value + ((b * p.s + p.start[l]) * p.h + hh) * p.d + dd;
            for (long long pt = 0; pt < p.p; ++pt) {
                const long long k = (r * p.l + l) * p.p + pt;
                const MsdaCorners c = msda_corners(loc[2 * k], loc[2 * k + 1], p.lh[l], p.lw[l]);
                const float a = to_f32(attn[k]);
                for (int ci = 0; ci < 4; ++ci) {
                    if (c.idx[ci] >= 0) acc += (a * c.w[ci]) * to_f32(v[c.idx[ci] * p.h * p.d]);
                }
            }
        }
        out[i] = from_f32<T>(acc);
    }
}

// Thread (k, b, h, d) owns column (b, :, h, d) of partial k: zeroes it, then adds its chunk's samples.
template <typename T>
__device__ __forceinline__ void msda_bwd_value_part(const float* loc, const T* attn, const T* dy, float* part,
                                                    const MsdaParams& p) {
    const long long cols = p.chunks * p.b * p.h * p.d;
    const long long img = p.s * p.h * p.d;
    for (long long i = gidx(); i < cols; i += gstride()) {
        const long long dd = i % p.d, hh = i / p.d % p.h, b = i / (p.d * p.h) % p.b, k = i / (p.d * p.h * p.b);
        float* col = part + (k * p.b + b) * img + hh * p.d + dd;
        for (long long s = 0; s < p.s; ++s) col[s * p.h * p.d] = 0.0f;
        const long long q1 = (k + 1) * p.qchunk < p.q ? (k + 1) * p.qchunk : p.q;
        for (long long q = k * p.qchunk; q < q1; ++q) {
            const long long r = (b * p.q + q) * p.h + hh;
            const float g = to_f32(dy[r * p.d + dd]);
            for (long long l = 0; l < p.l; ++l) {
                float* lv = col + p.start[l] * p.h * p.d;
                for (long long pt = 0; pt < p.p; ++pt) {
                    const long long kk = (r * p.l + l) * p.p + pt;
                    const MsdaCorners c = msda_corners(loc[2 * kk], loc[2 * kk + 1], p.lh[l], p.lw[l]);
                    const float a = to_f32(attn[kk]);
                    for (int ci = 0; ci < 4; ++ci) {
                        if (c.idx[ci] >= 0) lv[c.idx[ci] * p.h * p.d] += (a * c.w[ci]) * g;
                    }
                }
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void msda_bwd_value_fin(const float* part, T* dvalue, long long total, const MsdaParams& p) {
    for (long long i = gidx(); i < total; i += gstride()) {
        float acc = 0.0f;
        for (long long k = 0; k < p.chunks; ++k) acc += part[k * total + i];
        dvalue[i] = from_f32<T>(acc);
    }
}

template <typename T>
__device__ __forceinline__ void msda_bwd_loc_attn(const T* value, const float* loc, const T* attn, const T* dy,
                                                  float* out, long long total, const MsdaParams& p) {
    for (long long kk = gidx(); kk < total; kk += gstride()) {
        const long long l = kk / p.p % p.l, r = kk / (p.p * p.l);  // r = (b, q, h)
        const long long hh = r % p.h, b = r / (p.q * p.h);
        const MsdaCorners c = msda_corners(loc[2 * kk], loc[2 * kk + 1], p.lh[l], p.lw[l]);
        const T* v = value + ((b * p.s + p.start[l]) * p.h + hh) * p.d;
        const T* g = dy + r * p.d;
        float da = 0.0f, gx = 0.0f, gy = 0.0f;
        for (int ci = 0; ci < 4; ++ci) {
            if (c.idx[ci] < 0) continue;
            const T* vc = v + c.idx[ci] * p.h * p.d;
            float s = 0.0f;
            for (long long dd = 0; dd < p.d; ++dd) s += to_f32(vc[dd]) * to_f32(g[dd]);
            da += c.w[ci] * s;
            gx += c.dwx[ci] * s;
            gy += c.dwy[ci] * s;
        }
        const float a = to_f32(attn[kk]);
        out[3 * kk] = a * (float)p.lw[l] * gx;
        out[3 * kk + 1] = a * (float)p.lh[l] * gy;
        out[3 * kk + 2] = da;
    }
}

INSTAGEN_KERNELS_FLOAT(msda_fwd, ,
                       (const T* value, const float* loc, const T* attn, T* out, long long total, const MsdaParams p),
                       msda_fwd<T>(value, loc, attn, out, total, p))
INSTAGEN_KERNELS_FLOAT(msda_bwd_value_part, ,
                       (const float* loc, const T* attn, const T* dy, float* part, const MsdaParams p),
                       msda_bwd_value_part<T>(loc, attn, dy, part, p))
INSTAGEN_KERNELS_FLOAT(msda_bwd_value_fin, , (const float* part, T* dvalue, long long total, const MsdaParams p),
                       msda_bwd_value_fin<T>(part, dvalue, total, p))
INSTAGEN_KERNELS_FLOAT(msda_bwd_loc_attn, ,
                       (const T* value, const float* loc, const T* attn, const T* dy, float* out, long long total,
                        const MsdaParams p),
                       msda_bwd_loc_attn<T>(value, loc, attn, dy, out, total, p))
