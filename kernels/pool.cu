// Max pooling over NHWC maps (Op::MaxPool2d, torch F.max_pool2d with ceil_mode=False) and its gradient
// (Op::MaxPool2dBwd), as src/ops/pool/cpu.rs. A window is scanned row by row from its first in-bounds element
// with a running max starting at -inf; an element replaces it when larger or NaN (PyTorch's pick: the first
// of tied maxima, NaN propagates). The gradient is a gather: one thread per dx element visits the windows that
// hold it, re-finds each window's pick and sums the dy of those that picked it (in output order, f32): no
// atomics, each element written once, deterministic.
#include "common.cuh"

struct PoolGeom {
    long long h, w, c, ho, wo;
    int k, s, p;
};

// PyTorch's pick in window (oh, ow) of image n, channel ch: the max into *m, the flat pixel ih * w + iw.
template <typename T>
__device__ __forceinline__ long long pool_pick(const T* x, const PoolGeom& g, long long n, long long oh, long long ow,
                                               long long ch, float* m) {
    const long long hs = oh * g.s - g.p, ws = ow * g.s - g.p;
    const long long h0 = hs > 0 ? hs : 0, w0 = ws > 0 ? ws : 0;
    const long long h1 = hs + g.k < g.h ? hs + g.k : g.h, w1 = ws + g.k < g.w ? ws + g.k : g.w;
    float best = __int_as_float(0xff800000);  // -inf
    long long at = h0 * g.w + w0;
    for (long long ih = h0; ih < h1; ++ih) {
        for (long long iw = w0; iw < w1; ++iw) {
            const long long pix = ih * g.w + iw;
            const float v = to_f32(x[(n * g.h * g.w + pix) * g.c + ch]);
            if (v > best || v != v) {
                best = v;
                at = pix;
            }
        }
    }
    *m = best;
    return at;
}

template <typename T>
__device__ __forceinline__ void max_pool_fwd(const T* x, T* y, PoolGeom g, long long total) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const long long ch = i % g.c;
        long long r = i / g.c;
        const long long ow = r % g.wo;
        r /= g.wo;
        const long long oh = r % g.ho, n = r / g.ho;
        float m;
        pool_pick(x, g, n, oh, ow, ch, &m);
        y[i] = from_f32<T>(m);
    }
}

template <typename T>
__device__ __forceinline__ void max_pool_bwd(const T* x, const T* dy, T* dx, PoolGeom g, long long total) {
    for (long long i = gidx(); i < total; i += gstride()) {
        const long long ch = i % g.c;
        long long r = i / g.c;
        const long long iw = r % g.w;
        r /= g.w;
        const long long ih = r % g.h, n = r / g.h;
        // Outputs whose window holds (ih, iw): o * s - p <= i < o * s - p + k.
        const long long ah = ih + g.p + 1 - g.k, aw = iw + g.p + 1 - g.k;
        const long long oh0 = ah > 0 ? (ah + g.s - 1) / g.s : 0, ow0 = aw > 0 ? (aw + g.s - 1) / g.s : 0;
        const long long oh1 = min((ih + g.p) / g.s + 1, g.ho), ow1 = min((iw + g.p) / g.s + 1, g.wo);
        const long long pix = ih * g.w + iw;
        float acc = 0.0f;
        for (long long oh = oh0; oh < oh1; ++oh) {
            for (long long ow = ow0; ow < ow1; ++ow) {
                float m;
                if (pool_pick(x, g, n, oh, ow, ch, &m) == pix) {
                    acc += to_f32(dy[((n * g.ho + oh) * g.wo + ow) * g.c + ch]);
                }
            }
        }
        dx[i] = from_f32<T>(acc);
    }
}

// Arguments: x (and dy), the output, n, h, w, c, ho, wo, kernel, stride, padding.
#define POOL_PARAMS long long n, long long h, long long w, long long c, long long ho, long long wo, int k, int s, int p
#define POOL_GEOM PoolGeom{h, w, c, ho, wo, k, s, p}
INSTAGEN_KERNELS_FLOAT(max_pool2d_fwd, ,
                       (const T* x, T* y, POOL_PARAMS),
                       max_pool_fwd<T>(x, y, POOL_GEOM, n * ho * wo * c))
INSTAGEN_KERNELS_FLOAT(max_pool2d_bwd, ,
                       (const T* x, const T* dy, T* dx, POOL_PARAMS),
                       max_pool_bwd<T>(x, dy, dx, POOL_GEOM, n * h * w * c))
