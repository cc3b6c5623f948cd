// Matrix products C[z] = op(A[z]) @ op(B[z]) (GemmParams in gemm_util.cuh): f32 accumulation everywhere.
//
// gemm_tc_f16 / gemm_tc_bf16: tensor cores (mma.sync m16n8k16, row.col, f32 accumulators).
//   Block tile 128 x 128 x 32, 256 threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4 mma tiles.
//   Operand tiles go global -> shared with cp.async (16 bytes a thread a copy) through a 3-stage ring, and
//   shared -> registers with ldmatrix (x4; .trans for tiles whose rows run along M or N instead of K), in
//   XOR-swizzled layouts that keep ldmatrix free of bank conflicts (gemm_util.cuh).
//   Why 128 x 128 and not 128 x 256: 3 stages x (8 KB + 8 KB) = 48 KB is exactly the static shared-memory
//   limit (no opt-in attribute), 64 accumulators a thread leave room for two blocks (16 warps) per SM under
//   __launch_bounds__(256, 2), and smaller tiles waste less on the SD shapes (N = 320: 384 computed columns
//   with 128-wide tiles, 512 with 256-wide ones) and give more blocks for mid-sized products.
//   Tails: a 16-byte chunk that lies partly or wholly outside the matrix (M, N or K tail) is a cp.async with
//   zero fill (src-size = its in-range bytes, 0 when none), so out-of-range rows and columns contribute
//   zeros and any M, N, K work. Alignment: cp.async needs 16-byte aligned sources, i.e. the operand's base,
//   row stride and batch stride all multiples of 8 elements; an operand without that (checked per launch, in
//   the kernel) is loaded through registers (guarded 2-byte loads, one 16-byte shared store a chunk): still
//   tensor cores, only that operand's loads are synchronous. That is this file's fallback for unaligned
//   leading dimensions (e.g. K = 77 text tokens), chosen over a SIMT kernel because it keeps the mma rate.
//   The four ta/tb layouts are template instances selected at the top of one entry point (a uniform branch).
//   Occupancy (ptxas, sm_80 and sm_90): 128 registers, 48 KB static shared memory, no spills, so 2 blocks =
//   16 warps per SM, register-bound (2 x 256 x 128 = the 64K-register file; shared memory would allow 4).
//   Per warp and k-tile: 32 mma, 12 ldmatrix.x4, 4 cp.async and ~60 other instructions in the aligned path.
//   Not measured on a GPU yet. mma.sync on Hopper runs well below the wgmma peak (~800 TFLOP/s measured
//   dense f16), so expect roughly 40-55% of it at 4096^3; the 60% aim likely needs wgmma + TMA (sm_90a).
//
// gemm_simt_f32: CUDA cores, register tiled: block tile 128 x 128 x 8, 256 threads as 16 x 16, each thread
//   8 x 8 outputs (two 4-row by two 4-column groups 64 apart, so the shared reads are float4 and conflict
//   free), shared double buffer fed through registers. The f32 path of MatMul.
//
// Both: batches on blockIdx.z with 64-bit strides (0 broadcasts), output tiles on blockIdx.x (grouped
// raster), bounds-checked stores converted from f32 once.
#include "common.cuh"
#include "gemm_util.cuh"

// ---- tensor cores --------------------------------------------------------------------------------------

#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
#define TC_STAGES 3
#define TC_THREADS 256
#define TC_TILE_ELEMS (TC_BM * TC_BK)  // 4096 16-bit elements = 8 KB, for A and B alike

// Copies one 16-byte chunk (8 elements, `nvalid` of them inside the matrix) into shared memory.
__device__ __forceinline__ void tc_copy_chunk(unsigned short* dst, const unsigned short* src, int nvalid, bool aligned,
                                              const unsigned short* safe) {
    if (aligned) {
        // zfill: reads only the in-range bytes (none when nvalid = 0, `safe` then stands in) and zero-fills.
        cp_async_16_zfill(dst, nvalid > 0 ? src : safe, nvalid * 2);
    } else {
        // Rows not 16-byte aligned: guarded 2-byte loads through registers, zero beyond the matrix.
        unsigned int w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            unsigned int lo = 2 * j < nvalid ? src[2 * j] : 0u;
            unsigned int hi = 2 * j + 1 < nvalid ? src[2 * j + 1] : 0u;
            w[j] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

__device__ __forceinline__ int tc_clamp8(long long v) { return v >= 8 ? 8 : v <= 0 ? 0 : (int)v; }

// One thread's share of an operand's tiles: 2 of each tile's 512 chunks of 8 elements, the second 2048
// elements after the first in shared memory (64 rows further in a k-contiguous tile, 16 k-rows further in
// an mn-contiguous one: the same swizzle phase). Everything per thread is set up once; a tile costs two
// copies and a pointer step.
// KC: the operand is k-contiguous in memory (x[r * ld + k], tile rows r0.. of its M or N axis); else its
// rows run along M/N (x[k * ld + r]).
template <bool KC>
struct TcLoader {
    const unsigned short* src;  // this thread's first chunk in the next tile to load
    const unsigned short* base; // a valid address for zero-byte copies
    long long second;           // elements from the first chunk to the second
    long long step;             // elements from one k-tile to the next
    int dst;                    // shared offset of the first chunk inside a stage
    int kofs;                   // k of the first chunk inside the tile
    int n0, n1;                 // KC: in-range elements of each chunk if K were unlimited (0 or 8);
                                // else: in-range elements along M/N (same for both chunks)
    bool aligned;

    __device__ __forceinline__ TcLoader(const unsigned short* x, long long ld, long long rows, long long r0,
                                        bool al) {
        const int t = threadIdx.x;
        base = x;
        aligned = al;
        if (KC) {
            const int r = t >> 2, c = t & 3;
            dst = swz_k(r, c);
            kofs = c * 8;
            src = x + (r0 + r) * ld + kofs;
            second = 64 * ld;
            step = TC_BK;
            n0 = r0 + r < rows ? 8 : 0;
            n1 = r0 + r + 64 < rows ? 8 : 0;
        } else {
            const int kr = t >> 4, c = t & 15;
            dst = swz_mn(kr, c);
            kofs = kr;
            src = x + (long long)kr * ld + r0 + c * 8;
            second = 16 * ld;
            step = TC_BK * ld;
            n0 = n1 = tc_clamp8(rows - (r0 + c * 8));
        }
    }

    // Loads the tile whose first k is k0 (krem = K - k0 > 0) into `tile` and steps to the next.
    __device__ __forceinline__ void load(unsigned short* tile, long long krem) {
        int v0, v1;
        if (KC) {
            // Both chunks share their k range; a row outside the matrix has n = 0.
            const int kv = tc_clamp8(krem - kofs);
            v0 = n0 < kv ? n0 : kv;
            v1 = n1 < kv ? n1 : kv;
        } else {
            v0 = kofs < krem ? n0 : 0;
            v1 = kofs + 16 < krem ? n1 : 0;
        }
        tc_copy_chunk(tile + dst, src, v0, aligned, base);
        tc_copy_chunk(tile + dst + TC_TILE_ELEMS / 2, src + second, v1, aligned, base);
        src += step;
    }
};

template <typename T> struct TcMma;
// The mma of a storage type, and its pair type for the epilogue's 4-byte stores (low half = lower column).
template <> struct TcMma<__half> {
    typedef __half2 T2;
    static __device__ __forceinline__ T2 pack(float lo, float hi) { return __floats2half2_rn(lo, hi); }
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        mma_m16n8k16_f16(acc, a, b, acc);
    }
};
template <> struct TcMma<__nv_bfloat16> {
    typedef __nv_bfloat162 T2;
    static __device__ __forceinline__ T2 pack(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        mma_m16n8k16_bf16(acc, a, b, acc);
    }
};

// 16-byte alignment of an operand for cp.async: base, row stride and batch stride (in 2-byte elements).
__device__ __forceinline__ bool tc_aligned(const void* p, long long ld, long long batch_stride) {
    return ((unsigned long long)p & 15ull) == 0 && (ld & 7) == 0 && (batch_stride & 7) == 0;
}

template <typename T, bool TA, bool TB>
__device__ __forceinline__ void gemm_tc(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                                        const GemmParams& p, unsigned short* smem_a, unsigned short* smem_b) {
    const long long M = p.m, N = p.n, K = p.k;
    const long long tiles_m = (M + TC_BM - 1) / TC_BM, tiles_n = (N + TC_BN - 1) / TC_BN;
    long long tm, tn;
    gemm_tile_of<8>(blockIdx.x, tiles_m, tiles_n, tm, tn);
    const long long m0 = tm * TC_BM, n0 = tn * TC_BN;
    const long long z = blockIdx.z;
    const unsigned short* a = reinterpret_cast<const unsigned short*>(A) + z * p.sa;
    const unsigned short* b = reinterpret_cast<const unsigned short*>(B) + z * p.sb;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;  // warp tile origin inside the block tile

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int ktiles = (int)((K + TC_BK - 1) / TC_BK);
    // A: ta = 0 is k-contiguous ([M, K]); B: tb = 1 is k-contiguous ([N, K]).
    TcLoader<!TA> la(a, p.lda, M, m0, tc_aligned(A, p.lda, p.sa));
    TcLoader<TB> lb(b, p.ldb, N, n0, tc_aligned(B, p.ldb, p.sb));
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) {
            la.load(smem_a + s * TC_TILE_ELEMS, K - (long long)s * TC_BK);
            lb.load(smem_b + s * TC_TILE_ELEMS, K - (long long)s * TC_BK);
        }
        cp_async_commit();
    }

    int rs = 0, ws = TC_STAGES - 1;  // stage read this iteration, stage refilled this iteration
    for (int kt = 0; kt < ktiles; ++kt) {
        // Groups committed so far: kt + 2; at most one still in flight means tile kt has landed.
        INSTAGEN_DROPPABLE(3) cp_async_wait_group<TC_STAGES - 2>();
        __syncthreads();
        // Refill the stage read in iteration kt - 1 (every warp is past it: the barrier above).
        if (kt + TC_STAGES - 1 < ktiles) {
            const long long krem = K - (long long)(kt + TC_STAGES - 1) * TC_BK;
            la.load(smem_a + ws * TC_TILE_ELEMS, krem);
            lb.load(smem_b + ws * TC_TILE_ELEMS, krem);
        }
        cp_async_commit();

        const unsigned short* as = smem_a + rs * TC_TILE_ELEMS;
        const unsigned short* bs = smem_b + rs * TC_TILE_ELEMS;
        rs = rs == TC_STAGES - 1 ? 0 : rs + 1;
        ws = ws == TC_STAGES - 1 ? 0 : ws + 1;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned af[4][4], bfr[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                // Matrices 0..3 of the x4: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15)
                // = the a0..a3 registers of the m16n8k16 A fragment.
                if (!TA) {
                    int row = wm + mi * 16 + (lane & 15);
                    ldmatrix_x4(af[mi], as + swz_k(row, (kk >> 3) + (lane >> 4)));
                } else {
                    int krow = kk + (lane & 7) + ((lane >> 4) << 3);
                    int m = wm + mi * 16 + (((lane >> 3) & 1) << 3);
                    ldmatrix_x4_trans(af[mi], as + swz_mn(krow, m >> 3));
                }
            }
#pragma unroll
            for (int nj = 0; nj < 2; ++nj) {
                // Matrices 0..3: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                // = b0, b1 of n-tile 2*nj and b0, b1 of n-tile 2*nj + 1.
                unsigned r[4];
                if (!TB) {
                    int krow = kk + (lane & 7) + (((lane >> 3) & 1) << 3);
                    int n = wn + nj * 16 + ((lane >> 4) << 3);
                    ldmatrix_x4_trans(r, bs + swz_mn(krow, n >> 3));
                } else {
                    int n = wn + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                    ldmatrix_x4(r, bs + swz_k(n, (kk >> 3) + ((lane >> 3) & 1)));
                }
                bfr[2 * nj][0] = r[0];
                bfr[2 * nj][1] = r[1];
                bfr[2 * nj + 1][0] = r[2];
                bfr[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) TcMma<T>::run(acc[mi][ni], af[mi], bfr[ni]);
        }
    }
    cp_async_wait_all();

    // Accumulator layout (m16n8 f32): c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g + 8, same cols),
    // g = lane / 4, t = lane % 4. Column pairs go out as one 4-byte store when C's rows keep them aligned.
    T* c = C + z * p.sc;
    const bool pairs = ((unsigned long long)C & 3ull) == 0 && (p.ldc & 1) == 0 && (p.sc & 1) == 0;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            long long row = m0 + wm + mi * 16 + g + half * 8;
            if (row >= M) continue;
            T* crow = c + row * p.ldc;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                long long col = n0 + wn + ni * 8 + 2 * t;
                float v0 = acc[mi][ni][2 * half], v1 = acc[mi][ni][2 * half + 1];
                if (pairs && col + 1 < N) {
                    *reinterpret_cast<typename TcMma<T>::T2*>(crow + col) = TcMma<T>::pack(v0, v1);
                } else {
                    if (col < N) crow[col] = from_f32<T>(v0);
                    if (col + 1 < N) crow[col + 1] = from_f32<T>(v1);
                }
            }
        }
    }
}

template <typename T>
__device__ __forceinline__ void gemm_tc_entry(const T* A, const T* B, T* C, const GemmParams& p) {
    // One shared ring for whichever layout instance runs (declared here so the four share it).
    __shared__ __align__(128) unsigned short smem_a[TC_STAGES * TC_TILE_ELEMS];
    __shared__ __align__(128) unsigned short smem_b[TC_STAGES * TC_TILE_ELEMS];
    if (p.ta) {
        if (p.tb) gemm_tc<T, true, true>(A, B, C, p, smem_a, smem_b);
        else gemm_tc<T, true, false>(A, B, C, p, smem_a, smem_b);
    } else {
        if (p.tb) gemm_tc<T, false, true>(A, B, C, p, smem_a, smem_b);
        else gemm_tc<T, false, false>(A, B, C, p, smem_a, smem_b);
    }
}

extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
    gemm_tc_f16(const __half* A, const __half* B, __half* C, GemmParams p) {
    gemm_tc_entry<__half>(A, B, C, p);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2)
    gemm_tc_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, __nv_bfloat16* C, GemmParams p) {
    gemm_tc_entry<__nv_bfloat16>(A, B, C, p);
}

// ---- CUDA cores ----------------------------------------------------------------------------------------

#define SIMT_BM 128
#define SIMT_BN 128
#define SIMT_BK 8
#define SIMT_PAD 4  // row pitch 132 floats: the transposing stores of k-contiguous operands spread over banks
#define SIMT_PITCH (SIMT_BM + SIMT_PAD)
#define SIMT_THREADS 256

// Reads this thread's 4 elements of an operand tile (128 rows of M or N by 8 of K) into registers, zero
// outside the matrix. KC: k-contiguous operand (x[r * ld + k]): element i is row rb + 32 i, k kb (8
// threads read one row's 8 k); else x[k * ld + r]: element i is row rb, k kb + 2 i (a warp reads 32
// consecutive rows of one k). `x` already points at (rb, kb) of tile k0 = 0; rows_left / k_left count the
// rows and k from there to the matrix's edge.
template <typename T, bool KC>
__device__ __forceinline__ void simt_fetch(float* v, const T* x, long long ld, long long rows_left,
                                           long long k_left) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        bool ok = KC ? (32 * i < rows_left && k_left > 0) : (rows_left > 0 && 2 * i < k_left);
        v[i] = ok ? to_f32(x[(KC ? 32 * i : 2 * i) * ld]) : 0.0f;
    }
}

template <bool KC>
__device__ __forceinline__ void simt_stash(float* tile, const float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int e = threadIdx.x + i * SIMT_THREADS;
        int r = KC ? e >> 3 : e & 127, kk = KC ? e & 7 : e >> 7;
        tile[kk * SIMT_PITCH + r] = v[i];
    }
}

template <typename T, bool TA, bool TB>
__device__ __forceinline__ void gemm_simt(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
                                          const GemmParams& p, float* sa, float* sb) {
    const long long M = p.m, N = p.n, K = p.k;
    const long long tiles_m = (M + SIMT_BM - 1) / SIMT_BM, tiles_n = (N + SIMT_BN - 1) / SIMT_BN;
    long long tm, tn;
    gemm_tile_of<8>(blockIdx.x, tiles_m, tiles_n, tm, tn);
    const long long m0 = tm * SIMT_BM, n0 = tn * SIMT_BN;
    const long long z = blockIdx.z;
    const T* a = A + z * p.sa;
    const T* b = B + z * p.sb;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    const int ktiles = (int)((K + SIMT_BK - 1) / SIMT_BK);
    const int tile = SIMT_BK * SIMT_PITCH;
    // This thread's first element of each operand tile: (row, k) = (tid / 8, tid % 8) when k-contiguous,
    // (tid % 128, tid / 128) otherwise; successive k tiles advance 8 along k.
    const int t = threadIdx.x;
    const long long ar = TA ? t & 127 : t >> 3, ak = TA ? t >> 7 : t & 7;
    const long long br = TB ? t >> 3 : t & 127, bk = TB ? t & 7 : t >> 7;
    const T* pa = a + (TA ? ak * p.lda + m0 + ar : (m0 + ar) * p.lda + ak);
    const T* pb = b + (TB ? (n0 + br) * p.ldb + bk : bk * p.ldb + n0 + br);
    const long long a_step = TA ? SIMT_BK * p.lda : SIMT_BK, b_step = TB ? SIMT_BK : SIMT_BK * p.ldb;
    const long long a_rows = M - m0 - ar, b_rows = N - n0 - br;
    float va[4], vb[4];
    if (ktiles > 0) {
        simt_fetch<T, !TA>(va, pa, p.lda, a_rows, K - ak);
        simt_fetch<T, TB>(vb, pb, p.ldb, b_rows, K - bk);
        simt_stash<!TA>(sa, va);
        simt_stash<TB>(sb, vb);
    }
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const bool more = kt + 1 < ktiles;
        if (more) {
            // Issue the next tile's global loads before the math; they land in registers meanwhile.
            const long long k1 = (long long)(kt + 1) * SIMT_BK;
            pa += a_step;
            pb += b_step;
            simt_fetch<T, !TA>(va, pa, p.lda, a_rows, K - k1 - ak);
            simt_fetch<T, TB>(vb, pb, p.ldb, b_rows, K - k1 - bk);
        }
        const float* as = sa + (kt & 1) * tile;
        const float* bs = sb + (kt & 1) * tile;
#pragma unroll
        for (int kk = 0; kk < SIMT_BK; ++kk) {
            float4 a0 = *reinterpret_cast<const float4*>(as + kk * SIMT_PITCH + ty * 4);
            float4 a1 = *reinterpret_cast<const float4*>(as + kk * SIMT_PITCH + 64 + ty * 4);
            float4 b0 = *reinterpret_cast<const float4*>(bs + kk * SIMT_PITCH + tx * 4);
            float4 b1 = *reinterpret_cast<const float4*>(bs + kk * SIMT_PITCH + 64 + tx * 4);
            const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        if (more) {
            // The other buffer was last read in iteration kt - 1; every thread passed the barrier since.
            simt_stash<!TA>(sa + ((kt + 1) & 1) * tile, va);
            simt_stash<TB>(sb + ((kt + 1) & 1) * tile, vb);
        }
        __syncthreads();
    }

    T* c = C + z * p.sc;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        long long row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (row >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            long long col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
            if (col < N) c[row * p.ldc + col] = from_f32<T>(acc[i][j]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SIMT_THREADS, 2)
    gemm_simt_f32(const float* A, const float* B, float* C, GemmParams p) {
    __shared__ __align__(16) float sa[2 * SIMT_BK * SIMT_PITCH];
    __shared__ __align__(16) float sb[2 * SIMT_BK * SIMT_PITCH];
    if (p.ta) {
        if (p.tb) gemm_simt<float, true, true>(A, B, C, p, sa, sb);
        else gemm_simt<float, true, false>(A, B, C, p, sa, sb);
    } else {
        if (p.tb) gemm_simt<float, false, true>(A, B, C, p, sa, sb);
        else gemm_simt<float, false, false>(A, B, C, p, sa, sb);
    }
}
