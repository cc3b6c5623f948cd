// 2-D convolution (Op::Conv2d) and its gradients (Op::Conv2dBwdData, Op::Conv2dBwdWeight) as implicit GEMMs
// on NHWC activations with [O, C, kh, kw] weights (the checkpoint layout). Taps are t = ky * kw + kx, KK = kh*kw.
//
//   mode 0, forward:       M = N*Ho*Wo (output pixels), N = O, K = KK*C ordered (tap, c)
//                          A[m, (t, c)] = x[pixel under tap t of output pixel m, c] (0 in the padding)
//                          B[(t, c), o] = w[o, c, t]                    y[m, o] = A @ B (+ bias[o])
//   mode 1, backward data: M = N*H*W (input pixels), N = C, K = KK*O ordered (t, o)
//                          A[m, (t, o)] = dy[output pixel that reaches input pixel m through tap t, o]
//                                         (0 when none does: stride 2 leaves 3 of 4 taps empty per pixel)
//                          B[(t, o), c] = w[o, c, t]                    dx[m, c] = A @ B
//   mode 2, backward weight: M = O, N = KK*C ordered (t, c), K = N*Ho*Wo (output pixels)
//                          A[o, q] = dy[q, o], B[q, (t, c)] = x[pixel under tap t of q, c]
//                          dw[o, c, t] = (A @ B)[o, (t, c)]
//
// Why (t, c) and not (c, t) along K: NHWC keeps the channels of one pixel contiguous, so with C % 8 == 0 every
// 8-element chunk of an A row (modes 0, 1) or B row (mode 2) is one 16-byte cp.async (zero-filled in the
// padding) from a single pixel. The price of keeping OIHW weights is that the weight operand of modes 0 and 1
// is strided along K (w[o, c, t] with c stride KK): it is gathered with 2-byte loads through registers
// straight into the swizzled shared tile (the same path gemm.cu uses for unaligned operands), not cp.async.
// Weights are small and stay in L1/L2; a pre-packed [O, kh, kw, C] copy would make them cp.async too but
// needs a scratch buffer that `Launch` cannot express yet.
//
// conv2d_{fwd,bwd_data,bwd_weight}_tc_{f16,bf16}: tensor cores, the main loop of gemm_tc (tc_mainloop in
//   gemm_util.cuh: 128 x 128 x 32 tiles, 8 warps of 64 x 32, mma.sync m16n8k16 from ldmatrix on XOR-swizzled
//   tiles, 3-stage cp.async ring) with this file's tile loader (CvLoader). The gathered operands fall back to
//   guarded 2-byte loads when the channel count is not a multiple of 8 or a tensor is not 16-byte aligned (e.g.
//   C = 3 or 4 of the first convolutions); still tensor cores.
// Split-K (mode 2 only, both paths): mode 2 has few output tiles and a long K, so the launcher may split K into
//   gridDim.y chunks of p.reserved (a multiple of 32) k each: block (tile, y) sums its chunk and writes f32
//   partials to the workspace ws[y][m][n]; conv2d_bwd_weight_fin adds the chunks in order and stores dw.
//   p.reserved == 0: no split, dw stored directly (ws unused).
// conv2d_{fwd,bwd_data,bwd_weight}_simt_f32: CUDA cores, 64 x 64 x 16 tiles, 256 threads of 4 x 4 outputs,
//   operands gathered element by element through registers into a shared double buffer.
#include "common.cuh"
#include "gemm_util.cuh"

// Mirrored by `ConvParams` in src/backend/launch/conv.rs (every field 8 bytes, no padding).
struct ConvParams {
    long long n, h, w, c;  // x / dx [n, h, w, c]
    long long ho, wo, o;   // y / dy [n, ho, wo, o]
    long long kh, kw, stride, pad;
    long long reserved;  // mode 2: split-K chunk (0: no split)
};

// Offset of channel 0 of the input pixel under tap t of output pixel q (q < n*ho*wo), or -1 in the padding.
__device__ __forceinline__ long long conv_im2col(const ConvParams& p, unsigned q, unsigned t) {
    const unsigned wo = (unsigned)p.wo, ho = (unsigned)p.ho, kw = (unsigned)p.kw;
    const unsigned j = q % wo, r = q / wo, i = r % ho, b = r / ho;
    const unsigned ky = t / kw, kx = t - ky * kw;
    const long long hi = (long long)i * p.stride - p.pad + ky, wi = (long long)j * p.stride - p.pad + kx;
    if (hi < 0 || wi < 0 || hi >= p.h || wi >= p.w) return -1;
    return (((long long)b * p.h + hi) * p.w + wi) * p.c;
}

// Offset of channel 0 of the dy pixel that reaches input pixel q (q < n*h*w) through tap t, or -1.
__device__ __forceinline__ long long conv_col2im(const ConvParams& p, unsigned q, unsigned t) {
    const unsigned w = (unsigned)p.w, h = (unsigned)p.h, kw = (unsigned)p.kw, s = (unsigned)p.stride;
    const unsigned j = q % w, r = q / w, i = r % h, b = r / h;
    const unsigned ky = t / kw, kx = t - ky * kw;
    const long long th = (long long)i + p.pad - ky, tw = (long long)j + p.pad - kx;
    if (th < 0 || tw < 0) return -1;
    const unsigned uh = (unsigned)th, uw = (unsigned)tw;
    const unsigned oh = uh / s, ow = uw / s;
    if (oh * s != uh || ow * s != uw || oh >= p.ho || ow >= p.wo) return -1;
    return (((long long)b * p.ho + oh) * p.wo + ow) * p.o;
}

// GEMM sizes of a mode.
template <int MODE>
__device__ __forceinline__ void conv_gemm_dims(const ConvParams& p, long long& M, long long& N, long long& K) {
    const long long kk = p.kh * p.kw;
    if (MODE == 0) {
        M = p.n * p.ho * p.wo, N = p.o, K = kk * p.c;
    } else if (MODE == 1) {
        M = p.n * p.h * p.w, N = p.c, K = kk * p.o;
    } else {
        M = p.o, N = kk * p.c, K = p.n * p.ho * p.wo;
    }
}

// Element A[m, k] of a mode (m < M, k < K), as f32. `src` is x (mode 0) or dy (modes 1, 2).
template <typename T, int MODE>
__device__ __forceinline__ float conv_a(const T* src, const ConvParams& p, long long m, long long k) {
    if (MODE == 2) return to_f32(src[k * p.o + m]);
    const unsigned cr = (unsigned)(MODE == 0 ? p.c : p.o);
    const unsigned t = (unsigned)k / cr, ch = (unsigned)k - t * cr;
    const long long off = MODE == 0 ? conv_im2col(p, (unsigned)m, t) : conv_col2im(p, (unsigned)m, t);
    return off < 0 ? 0.0f : to_f32(src[off + ch]);
}

// Element B[k, n] of a mode (k < K, n < N), as f32. `src` is w (modes 0, 1) or x (mode 2).
template <typename T, int MODE>
__device__ __forceinline__ float conv_b(const T* src, const ConvParams& p, long long k, long long n) {
    const long long kk = p.kh * p.kw;
    if (MODE == 2) {
        const unsigned t = (unsigned)n / (unsigned)p.c, ch = (unsigned)n - t * (unsigned)p.c;
        const long long off = conv_im2col(p, (unsigned)k, t);
        return off < 0 ? 0.0f : to_f32(src[off + ch]);
    }
    const unsigned cr = (unsigned)(MODE == 0 ? p.c : p.o);
    const unsigned t = (unsigned)k / cr, r = (unsigned)k - t * cr;
    // Mode 0: w[n, r, t]; mode 1: w[r, n, t].
    const long long o = MODE == 0 ? n : (long long)r, c = MODE == 0 ? (long long)r : n;
    return to_f32(src[(o * p.c + c) * kk + t]);
}

// Stores C[m, n] (m < M, n < N) of a mode: y / dx rows, or dw[o, c, t].
template <typename T, int MODE>
__device__ __forceinline__ void conv_store(T* dst, const T* bias, const ConvParams& p, long long N, long long m,
                                           long long n, float v) {
    if (MODE == 2) {
        const unsigned t = (unsigned)n / (unsigned)p.c, ch = (unsigned)n - t * (unsigned)p.c;
        dst[(m * p.c + ch) * (p.kh * p.kw) + t] = from_f32<T>(v);
    } else {
        if (MODE == 0 && bias != nullptr) v += to_f32(bias[n]);
        dst[m * N + n] = from_f32<T>(v);
    }
}

// ---- tensor cores --------------------------------------------------------------------------------------

// 8 elements gathered one by one (bounds-checked through conv_a / conv_b) into one 16-byte shared chunk.
// KC: the chunk runs along k from (row, k0); else along m/n from (k0 = the k-row, row = first m/n).
template <typename T, int MODE, bool IS_A, bool KC>
__device__ __forceinline__ void cv_gather8(unsigned short* dst, const T* src, const ConvParams& p, long long row,
                                           long long k0, long long rows, long long K) {
    unsigned wv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const long long r = KC ? row : row + 2 * j + e, k = KC ? k0 + 2 * j + e : k0;
            v[e] = 0.0f;
            if (r < rows && k < K) v[e] = IS_A ? conv_a<T, MODE>(src, p, r, k) : conv_b<T, MODE>(src, p, k, r);
        }
        T lo = from_f32<T>(v[0]), hi = from_f32<T>(v[1]);
        wv[j] = (unsigned)*reinterpret_cast<unsigned short*>(&lo) | ((unsigned)*reinterpret_cast<unsigned short*>(&hi) << 16);
    }
    *reinterpret_cast<uint4*>(dst) = make_uint4(wv[0], wv[1], wv[2], wv[3]);
}

// One operand chunk of a tile. The pixel operands (A of modes 0, 1; A and B of mode 2) use one 16-byte
// cp.async (zero-filled outside the tensor) when VEC; everything else goes through cv_gather8.
template <typename T, int MODE, bool IS_A, bool KC, bool VEC>
__device__ __forceinline__ void cv_chunk(unsigned short* dst, const T* src, const ConvParams& p, long long row,
                                         long long k0, long long rows, long long K) {
    const bool pixel_operand = IS_A || MODE == 2;
    if (VEC && pixel_operand) {
        const unsigned short* s = reinterpret_cast<const unsigned short*>(src);
        long long off = -1;
        if (row < rows && k0 < K) {
            if (MODE == 2 && IS_A) {
                off = k0 * p.o + row;  // dy[q, o .. o + 7]
            } else if (MODE == 2) {
                const unsigned t = (unsigned)row / (unsigned)p.c;
                const long long base = conv_im2col(p, (unsigned)k0, t);
                off = base < 0 ? -1 : base + (row - (long long)t * p.c);
            } else {
                const unsigned cr = (unsigned)(MODE == 0 ? p.c : p.o);
                const unsigned t = (unsigned)k0 / cr;
                const long long base = MODE == 0 ? conv_im2col(p, (unsigned)row, t) : conv_col2im(p, (unsigned)row, t);
                off = base < 0 ? -1 : base + (k0 - (long long)t * cr);
            }
        }
        cp_async_16_zfill(dst, off >= 0 ? s + off : s, off >= 0 ? 16 : 0);
    } else {
        cv_gather8<T, MODE, IS_A, KC>(dst, src, p, row, k0, rows, K);
    }
}

// tc_mainloop's loader of one operand: load(tile, k0) fills a stage with the k-tile starting at k0, 2 chunks
// per thread, laid out as gemm_tc's. KC: k-contiguous tile (rows r0.. of M or N); else mn-contiguous.
template <typename T, int MODE, bool IS_A, bool KC, bool VEC>
struct CvLoader {
    const T* src;
    const ConvParams& p;
    long long r0, rows, K;  // first row of the block tile, rows and k of the operand
    long long kofs;         // first k of this block's split-K chunk (0 without split)

    __device__ __forceinline__ void load(unsigned short* tile, long long k0) const {
        const int t = threadIdx.x;
        k0 += kofs;
        if (KC) {
            const int r = t >> 2, c = t & 3;
            cv_chunk<T, MODE, IS_A, KC, VEC>(tile + swz_k(r, c), src, p, r0 + r, k0 + c * 8, rows, K);
            cv_chunk<T, MODE, IS_A, KC, VEC>(tile + swz_k(r + 64, c), src, p, r0 + r + 64, k0 + c * 8, rows, K);
        } else {
            const int kr = t >> 4, c = t & 15;
            cv_chunk<T, MODE, IS_A, KC, VEC>(tile + swz_mn(kr, c), src, p, r0 + c * 8, k0 + kr, rows, K);
            cv_chunk<T, MODE, IS_A, KC, VEC>(tile + swz_mn(kr + 16, c), src, p, r0 + c * 8, k0 + kr + 16, rows, K);
        }
    }
};

// A: modes 0, 1 load k-contiguous tiles (rows = M), mode 2 m-contiguous ones (dy rows); B: modes 0, 1
// k-contiguous (rows = N, the weight gather), mode 2 n-contiguous (x pixels).
// The k range [kofs, kofs + klen) of this block: its split-K chunk in mode 2 (p.reserved > 0), else all of K.
template <int MODE>
__device__ __forceinline__ void conv_k_range(const ConvParams& p, long long K, long long& kofs, long long& klen) {
    kofs = 0;
    klen = K;
    if (MODE == 2 && p.reserved > 0) {
        kofs = (long long)blockIdx.y * p.reserved;
        klen = K - kofs < p.reserved ? K - kofs : p.reserved;
    }
}

// Stores C[m, n], or in split-K the f32 partial of this block's chunk.
template <typename T, int MODE>
__device__ __forceinline__ void conv_out(T* dst, float* ws, const T* bias, const ConvParams& p, long long M,
                                         long long N, long long m, long long n, float v) {
    if (MODE == 2 && p.reserved > 0) ws[((long long)blockIdx.y * M + m) * N + n] = v;
    else conv_store<T, MODE>(dst, bias, p, N, m, n, v);
}

template <typename T, int MODE, bool VEC>
__device__ __forceinline__ void conv_tc(const T* __restrict__ a_src, const T* __restrict__ b_src,
                                        const T* __restrict__ bias, T* __restrict__ dst, float* ws,
                                        const ConvParams& p, unsigned short* smem_a, unsigned short* smem_b) {
    constexpr bool A_KC = MODE != 2, B_KC = MODE != 2;  // mode 2: dy and x pixels run along M and N
    long long M, N, K, kofs, klen;
    conv_gemm_dims<MODE>(p, M, N, K);
    conv_k_range<MODE>(p, K, kofs, klen);
    const long long tiles_m = (M + TC_BM - 1) / TC_BM, tiles_n = (N + TC_BN - 1) / TC_BN;
    long long tm, tn;
    gemm_tile_of<8>(blockIdx.x, tiles_m, tiles_n, tm, tn);
    const long long m0 = tm * TC_BM, n0 = tn * TC_BN;

    CvLoader<T, MODE, true, A_KC, VEC> la{a_src, p, m0, M, K, kofs};
    CvLoader<T, MODE, false, B_KC, VEC> lb{b_src, p, n0, N, K, kofs};
    float acc[4][4][4];
    tc_mainloop<T, A_KC, B_KC>(acc, la, lb, klen, smem_a, smem_b);

    // Accumulator (m16n8 f32): c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g + 8, same cols).
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = tc_warp_m(), wn = tc_warp_n();
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const long long row = m0 + wm + mi * 16 + g + half * 8;
            if (row >= M) continue;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const long long col = n0 + wn + ni * 8 + 2 * t;
                if (col < N) conv_out<T, MODE>(dst, ws, bias, p, M, N, row, col, acc[mi][ni][2 * half]);
                if (col + 1 < N) conv_out<T, MODE>(dst, ws, bias, p, M, N, row, col + 1, acc[mi][ni][2 * half + 1]);
            }
        }
    }
}

// Whether a mode's pixel operands can use 16-byte copies: 8-channel chunks and 16-byte aligned bases.
template <int MODE>
__device__ __forceinline__ bool conv_vec(const void* a, const void* b, const ConvParams& p) {
    const bool al = ((unsigned long long)a & 15ull) == 0 && ((unsigned long long)b & 15ull) == 0;
    if (MODE == 0) return al && (p.c & 7) == 0;
    if (MODE == 1) return al && (p.o & 7) == 0;
    return al && (p.c & 7) == 0 && (p.o & 7) == 0;
}

template <typename T, int MODE>
__device__ __forceinline__ void conv_tc_entry(const T* a, const T* b, const T* bias, T* dst, float* ws,
                                              const ConvParams& p) {
    __shared__ __align__(128) unsigned short smem_a[TC_STAGES * TC_TILE_ELEMS];
    __shared__ __align__(128) unsigned short smem_b[TC_STAGES * TC_TILE_ELEMS];
    if (conv_vec<MODE>(a, b, p)) conv_tc<T, MODE, true>(a, b, bias, dst, ws, p, smem_a, smem_b);
    else conv_tc<T, MODE, false>(a, b, bias, dst, ws, p, smem_a, smem_b);
}

// Forward: (x, w, bias or null) -> y. Backward data: (dy, w) -> dx. Backward weight: (x, dy) -> dw.
INSTAGEN_KERNELS_HALF(conv2d_fwd_tc, __launch_bounds__(TC_THREADS, 2),
                      (const T* x, const T* w, const T* bias, T* y, ConvParams p),
                      conv_tc_entry<T, 0>(x, w, bias, y, nullptr, p))
INSTAGEN_KERNELS_HALF(conv2d_bwd_data_tc, __launch_bounds__(TC_THREADS, 2),
                      (const T* dy, const T* w, T* dx, ConvParams p),
                      conv_tc_entry<T, 1>(dy, w, nullptr, dx, nullptr, p))
INSTAGEN_KERNELS_HALF(conv2d_bwd_weight_tc, __launch_bounds__(TC_THREADS, 2),
                      (const T* x, const T* dy, T* dw, float* ws, ConvParams p),
                      conv_tc_entry<T, 2>(dy, x, nullptr, dw, ws, p))

// Split-K pass 2: dw[m, n] = sum over the gridDim.y chunks of ws[chunk][m][n], in chunk order.
template <typename T>
__device__ __forceinline__ void conv_bwd_weight_fin(const float* ws, T* dw, const ConvParams& p, long long splits) {
    long long M, N, K;
    conv_gemm_dims<2>(p, M, N, K);
    for (long long e = gidx(); e < M * N; e += gstride()) {
        float v = 0.0f;
        for (long long s = 0; s < splits; ++s) v += ws[s * M * N + e];
        const long long m = e / N;
        conv_store<T, 2>(dw, nullptr, p, N, m, e - m * N, v);
    }
}

INSTAGEN_KERNELS_FLOAT(conv2d_bwd_weight_fin, , (const float* ws, T* dw, ConvParams p, long long splits),
                       conv_bwd_weight_fin<T>(ws, dw, p, splits))

// ---- CUDA cores (f32) ----------------------------------------------------------------------------------

#define CS_BM 64
#define CS_BN 64
#define CS_BK 16
#define CS_THREADS 256

template <int MODE>
__device__ __forceinline__ void conv_simt(const float* __restrict__ a_src, const float* __restrict__ b_src,
                                          const float* __restrict__ bias, float* __restrict__ dst, float* ws,
                                          const ConvParams& p) {
    __shared__ __align__(16) float sa[2][CS_BK][CS_BM];
    __shared__ __align__(16) float sb[2][CS_BK][CS_BN];
    long long M, N, K, kofs, klen;
    conv_gemm_dims<MODE>(p, M, N, K);
    conv_k_range<MODE>(p, K, kofs, klen);
    const long long tiles_m = (M + CS_BM - 1) / CS_BM, tiles_n = (N + CS_BN - 1) / CS_BN;
    long long tm, tn;
    gemm_tile_of<8>(blockIdx.x, tiles_m, tiles_n, tm, tn);
    const long long m0 = tm * CS_BM, n0 = tn * CS_BN;
    const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
    // Loads: element i of a thread is (row, k) = ((t + 256 i) % 64, (t + 256 i) / 64) of the 64 x 16 tile.
    float va[4], vb[4];
    auto fetch = [&](long long k0) {
        k0 += kofs;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = t + CS_THREADS * i, r = e & 63, kk = e >> 6;
            const long long k = k0 + kk, m = m0 + r, n = n0 + r;
            va[i] = (m < M && k < K) ? conv_a<float, MODE>(a_src, p, m, k) : 0.0f;
            vb[i] = (n < N && k < K) ? conv_b<float, MODE>(b_src, p, k, n) : 0.0f;
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int e = t + CS_THREADS * i, r = e & 63, kk = e >> 6;
            sa[buf][kk][r] = va[i];
            sb[buf][kk][r] = vb[i];
        }
    };
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    const int ktiles = (int)((klen + CS_BK - 1) / CS_BK);
    if (ktiles > 0) {
        fetch(0);
        stash(0);
    }
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const bool more = kt + 1 < ktiles;
        if (more) fetch((long long)(kt + 1) * CS_BK);
        const int buf = kt & 1;
#pragma unroll
        for (int kk = 0; kk < CS_BK; ++kk) {
            const float4 a4 = *reinterpret_cast<const float4*>(&sa[buf][kk][ty * 4]);
            const float4 b4 = *reinterpret_cast<const float4*>(&sb[buf][kk][tx * 4]);
            const float av[4] = {a4.x, a4.y, a4.z, a4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) stash(buf ^ 1);
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long n = n0 + tx * 4 + j;
            if (n < N) conv_out<float, MODE>(dst, ws, bias, p, M, N, m, n, acc[i][j]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(CS_THREADS)
    conv2d_fwd_simt_f32(const float* x, const float* w, const float* bias, float* y, ConvParams p) {
    conv_simt<0>(x, w, bias, y, nullptr, p);
}
extern "C" __global__ void __launch_bounds__(CS_THREADS)
    conv2d_bwd_data_simt_f32(const float* dy, const float* w, float* dx, ConvParams p) {
    conv_simt<1>(dy, w, nullptr, dx, nullptr, p);
}
extern "C" __global__ void __launch_bounds__(CS_THREADS)
    conv2d_bwd_weight_simt_f32(const float* x, const float* dy, float* dw, float* ws, ConvParams p) {
    conv_simt<2>(dy, x, nullptr, dw, ws, p);
}
