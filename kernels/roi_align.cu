// RoI Align on NHWC features (Op::RoiAlign), its gradient w.r.t. the features (Op::RoiAlignBwd) and the FPN
// level mapper (Op::FpnLevels), as src/backend/cpu/kernels/roi.rs (torchvision.ops.roi_align semantics: see
// there for the sampling geometry). Features and gradients are f32/f16/bf16 storage, RoIs are f32 [K, 5]
// (batch_index, x1, y1, x2, y2); arithmetic in f32.
//
// roi_align_fwd: one thread per output element (k, ph, pw, c): consecutive threads read consecutive channels
// of the same pixels, so a warp's loads are contiguous.
//
// roi_align_bwd: a gather, not torchvision's scatter with atomicAdd: one thread per element (n, y, x, c) of
// dfeat walks the RoIs of image n and, for each RoI near the pixel, only the samples whose bilinear taps can
// touch it (the samples of a RoI lie on a regular grid along each axis, so those are an index range found by
// division), summing dy * weight. Every output element is written exactly once: no zero-fill launch (Launch
// has no scratch memory), the same code for f32/f16/bf16 (f32 accumulation, rounded once; atomics on f16/bf16
// outputs would round at every add), and the result is deterministic. The cost is a pass over the RoI list
// per thread, mostly a cheap batch/extent rejection (RoI records are the same for every thread of a warp, so
// they are broadcast loads).
#include "common.cuh"

struct RoiGeom {
    float y1, x1, bin_h, bin_w, inv_count;
    int gh, gw;
};

__device__ __forceinline__ RoiGeom roi_geom(const float* r, int out_h, int out_w, float scale, int sr, int aligned) {
    const float off = aligned ? 0.5f : 0.0f;
    RoiGeom g;
    g.x1 = r[1] * scale - off;
    g.y1 = r[2] * scale - off;
    float rw = (r[3] * scale - off) - g.x1;
    float rh = (r[4] * scale - off) - g.y1;
    if (!aligned) {
        rw = fmaxf(rw, 1.0f);
        rh = fmaxf(rh, 1.0f);
    }
    g.bin_h = rh / (float)out_h;
    g.bin_w = rw / (float)out_w;
    g.gh = sr > 0 ? sr : (int)fmaxf(ceilf(rh / (float)out_h), 0.0f);
    g.gw = sr > 0 ? sr : (int)fmaxf(ceilf(rw / (float)out_w), 0.0f);
    const int cnt = g.gh * g.gw;
    g.inv_count = 1.0f / (float)(cnt > 1 ? cnt : 1);
    return g;
}

// The batch index of a RoI, or -1 when it is outside [0, n).
__device__ __forceinline__ int roi_batch(const float* r, int n) {
    const float b = r[0];
    return (b >= 0.0f && (int)b < n) ? (int)b : -1;
}

// Sample i (of g) of bin p along an axis starting at `start`: the CPU reference's expression.
__device__ __forceinline__ float sample_pos(float start, int p, float bin, int i, int g) {
    return start + (float)p * bin + ((float)i + 0.5f) * bin / (float)g;
}

// Bilinear taps along one axis: false when the sample lies outside [-1, size].
__device__ __forceinline__ bool axis_taps(float y, int size, int& lo, int& hi, float& wl, float& wh) {
    if (y < -1.0f || y > (float)size) return false;
    if (y <= 0.0f) y = 0.0f;
    lo = (int)y;
    if (lo >= size - 1) {
        lo = hi = size - 1;
        wl = 1.0f;
        wh = 0.0f;
    } else {
        hi = lo + 1;
        wh = y - (float)lo;
        wl = 1.0f - wh;
    }
    return true;
}

// The weight a sample at y gives pixel p along an axis of `size` pixels.
__device__ __forceinline__ float axis_weight(float y, int p, int size) {
    int lo, hi;
    float wl, wh;
    if (!axis_taps(y, size, lo, hi, wl, wh)) return 0.0f;
    return (p == lo ? wl : 0.0f) + (p == hi && hi != lo ? wh : 0.0f);
}

template <typename T>
__device__ __forceinline__ void roi_align_fwd(const T* feat, const float* rois, T* out, long long total, int n,
                                              int h, int w, int c, int out_h, int out_w, float scale, int sr,
                                              int aligned) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const int ch = (int)(i % c);
        const long long bin = i / c;
        const int pw = (int)(bin % out_w), ph = (int)(bin / out_w % out_h);
        const long long k = bin / ((long long)out_w * out_h);
        const float* r = rois + k * 5;
        const int b = roi_batch(r, n);
        float acc = 0.0f;
        const RoiGeom g = roi_geom(r, out_h, out_w, scale, sr, aligned);
        if (b >= 0) {
            const T* img = feat + (long long)b * h * w * c + ch;
            for (int iy = 0; iy < g.gh; ++iy) {
                int yl, yh;
                float wyl, wyh;
                if (!axis_taps(sample_pos(g.y1, ph, g.bin_h, iy, g.gh), h, yl, yh, wyl, wyh)) continue;
                for (int ix = 0; ix < g.gw; ++ix) {
                    int xl, xh;
                    float wxl, wxh;
                    if (!axis_taps(sample_pos(g.x1, pw, g.bin_w, ix, g.gw), w, xl, xh, wxl, wxh)) continue;
                    const float v1 = to_f32(img[((long long)yl * w + xl) * c]);
                    const float v2 = to_f32(img[((long long)yl * w + xh) * c]);
                    const float v3 = to_f32(img[((long long)yh * w + xl) * c]);
                    const float v4 = to_f32(img[((long long)yh * w + xh) * c]);
                    acc += wyl * wxl * v1 + wyl * wxh * v2 + wyh * wxl * v3 + wyh * wxh * v4;
                }
            }
        }
        out[i] = from_f32<T>(acc * g.inv_count);
    }
}

// The range [t0, t1] of sample indices (0 .. bins * g - 1, spacing bin / g from start) that may lie within
// [lo, hi], widened by one on each side against rounding (the weights decide exactly).
__device__ __forceinline__ void sample_range(float start, float bin, int g, int bins, float lo, float hi, int& t0,
                                             int& t1) {
    const float step = bin / (float)g;
    const int last = bins * g - 1;
    if (!(step > 0.0f)) {
        t0 = 0;
        t1 = last;
        return;
    }
    const float a = floorf((lo - start) / step - 0.5f) - 1.0f;
    const float b = ceilf((hi - start) / step - 0.5f) + 1.0f;
    t0 = a < 0.0f ? 0 : (a > (float)last ? last + 1 : (int)a);
    t1 = b < 0.0f ? -1 : (b > (float)last ? last : (int)b);
}

template <typename T>
__device__ __forceinline__ void roi_align_bwd(const float* rois, const T* dy, T* dx, long long total, int k_count,
                                              int n, int h, int w, int c, int out_h, int out_w, float scale, int sr,
                                              int aligned) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const int ch = (int)(i % c);
        const long long pix = i / c;
        const int x = (int)(pix % w), y = (int)(pix / w % h);
        const int b = (int)(pix / ((long long)w * h));
        // Samples in (lo, hi) can touch this pixel (plus the clamped ones at the border).
        const float ylo = y == 0 ? -1.0f : (float)(y - 1), yhi = y == h - 1 ? (float)h : (float)(y + 1);
        const float xlo = x == 0 ? -1.0f : (float)(x - 1), xhi = x == w - 1 ? (float)w : (float)(x + 1);
        float acc = 0.0f;
        for (int k = 0; k < k_count; ++k) {
            const float* r = rois + (long long)k * 5;
            if (roi_batch(r, n) != b) continue;
            const RoiGeom g = roi_geom(r, out_h, out_w, scale, sr, aligned);
            if (g.gh <= 0 || g.gw <= 0) continue;
            // Every sample lies between start and start + bins * bin (below start for an inverted aligned RoI
            // with a fixed sampling ratio).
            const float ey = g.y1 + g.bin_h * (float)out_h, ex = g.x1 + g.bin_w * (float)out_w;
            if (fminf(g.y1, ey) > yhi + 1.0f || fmaxf(g.y1, ey) < ylo - 1.0f || fminf(g.x1, ex) > xhi + 1.0f ||
                fmaxf(g.x1, ex) < xlo - 1.0f) {
                continue;
            }
            int ty0, ty1, tx0, tx1;
            sample_range(g.y1, g.bin_h, g.gh, out_h, ylo, yhi, ty0, ty1);
            sample_range(g.x1, g.bin_w, g.gw, out_w, xlo, xhi, tx0, tx1);
            const T* d = dy + (long long)k * out_h * out_w * c + ch;
            float part = 0.0f;
            for (int ty = ty0; ty <= ty1; ++ty) {
                const int ph = ty / g.gh, iy = ty - ph * g.gh;
                const float wy = axis_weight(sample_pos(g.y1, ph, g.bin_h, iy, g.gh), y, h);
                if (wy == 0.0f) continue;
                float row = 0.0f;
                for (int tx = tx0; tx <= tx1; ++tx) {
                    const int pw = tx / g.gw, ix = tx - pw * g.gw;
                    const float wx = axis_weight(sample_pos(g.x1, pw, g.bin_w, ix, g.gw), x, w);
                    if (wx == 0.0f) continue;
                    row += wx * to_f32(d[((long long)ph * out_w + pw) * c]);
                }
                part += wy * row;
            }
            acc += part * g.inv_count;
        }
        dx[i] = from_f32<T>(acc);
    }
}

// torchvision LevelMapper in f32 (floor(k0 + log2(s / s0) + eps)); a NaN level (degenerate box) maps to k_min. `cols` is 5 (rois) or 4 (boxes).
template <typename T>
__device__ __forceinline__ void fpn_levels(const T* rois, long long* out, long long k_count, int cols, int k_min,
                                           int k_max, float s0, int k0, float eps) {
    for (long long i = gidx(); i < k_count; i += gstride()) {
        const T* r = rois + i * cols + (cols - 4);
        const float area = (to_f32(r[2]) - to_f32(r[0])) * (to_f32(r[3]) - to_f32(r[1]));
        float l = floorf(((float)k0 + log2f(sqrtf(area) / s0)) + eps);
        l = l != l ? (float)k_min : fminf(fmaxf(l, (float)k_min), (float)k_max);
        out[i] = (long long)l - k_min;
    }
}

INSTAGEN_KERNELS_FLOAT(roi_align_fwd, ,
                       (const T* feat, const float* rois, T* out, long long total, int n, int h, int w, int c,
                        int out_h, int out_w, float scale, int sr, int aligned),
                       roi_align_fwd<T>(feat, rois, out, total, n, h, w, c, out_h, out_w, scale, sr, aligned))
INSTAGEN_KERNELS_FLOAT(roi_align_bwd, ,
                       (const float* rois, const T* dy, T* dx, long long total, int k_count, int n, int h, int w,
                        int c, int out_h, int out_w, float scale, int sr, int aligned),
                       roi_align_bwd<T>(rois, dy, dx, total, k_count, n, h, w, c, out_h, out_w, scale, sr, aligned))
INSTAGEN_KERNELS_FLOAT(fpn_levels_fwd, ,
                       (const T* rois, long long* out, long long k_count, int cols, int k_min, int k_max, float s0,
                        int k0, float eps),
                       fpn_levels<T>(rois, out, k_count, cols, k_min, k_max, s0, k0, eps))
