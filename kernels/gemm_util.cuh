// GEMM helpers shared by kernels/gemm.cu and the implicit-GEMM convolutions of kernels/conv.cu: the launch
// parameter block, the tile raster, the swizzled shared-memory layouts, and the one tensor-core main loop
// (tc_mainloop: cp.async stage ring, ldmatrix, mma.sync), which takes the tile loaders as parameters.
#pragma once

#include "common.cuh"

// One (batched) product C[z] = op(A[z]) @ op(B[z]) for z < gridDim.z. Mirrored by `GemmParams` in
// src/backend/launch/gemm.rs (every field 8 bytes, no padding).
//   op(A) is M x K: A stored [M, K] with row stride lda (ta = 0) or [K, M] with row stride lda (ta = 1).
//   op(B) is K x N: B stored [K, N] with row stride ldb (tb = 0) or [N, K] with row stride ldb (tb = 1).
//   C is [M, N] with row stride ldc. Batch z starts at A + z*sa, B + z*sb, C + z*sc (elements);
//   a batch stride of 0 broadcasts that operand.
struct GemmParams {
    long long m, n, k;
    long long lda, ldb, ldc;
    long long sa, sb, sc;
    long long ta, tb;
    long long reserved;
};

// Block tile (tm, tn) for linear block id `pid` over a tiles_m x tiles_n grid of output tiles, visited in
// groups of GROUP tile rows, column by column inside a group, so the blocks resident at one time share
// A row panels and B column panels in L2.
template <int GROUP>
__device__ __forceinline__ void gemm_tile_of(long long pid, long long tiles_m, long long tiles_n, long long& tm,
                                             long long& tn) {
    long long width = (long long)GROUP * tiles_n;
    long long first = (pid / width) * GROUP;
    long long rows = tiles_m - first < GROUP ? tiles_m - first : GROUP;
    long long in_group = pid % width;
    tm = first + in_group % rows;
    tn = in_group / rows;
}

// ---- shared-memory tiles of the tensor-core kernel (16-bit elements, 16-byte chunks) ----------------------
//
// A "k-contiguous" tile holds 128 rows x 32 k (64 bytes a row, 4 chunks); ldmatrix reads 8 rows at one chunk
// column, which at a 64-byte row pitch would hit the same 16-byte bank group every other row (4-way
// conflict). Chunk c of row r is stored at chunk c ^ ((r >> 1) & 3): rows r..r+7 (r a multiple of 8) then
// cover all 8 bank groups of a 128-byte line (r & 1 picks the half line, (r >> 1) & 3 the chunk inside it).
__device__ __forceinline__ int swz_k(int row, int chunk) { return row * 32 + ((chunk ^ ((row >> 1) & 3)) << 3); }

// An "mn-contiguous" tile holds 32 k-rows x 128 elements (256 bytes a row, 16 chunks); ldmatrix.trans reads
// 8 consecutive k-rows at one chunk column, all in the same bank group without a swizzle (8-way conflict).
// Chunk c of row k is stored at chunk c ^ (k & 7).
__device__ __forceinline__ int swz_mn(int krow, int chunk) { return krow * 128 + ((chunk ^ (krow & 7)) << 3); }

// ---- the tensor-core main loop of gemm_tc (gemm.cu) and conv2d_*_tc (conv.cu) -----------------------------
//
// Block tile TC_BM x TC_BN x TC_BK, TC_THREADS threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32 = 4 x 4
// mma.sync m16n8k16 tiles with f32 accumulators. Operand tiles come from global memory through a TC_STAGES
// ring of shared-memory stages, and go to registers with ldmatrix (x4; .trans for mn-contiguous tiles).

#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
#define TC_STAGES 3
#define TC_THREADS 256
#define TC_TILE_ELEMS (TC_BM * TC_BK)  // 4096 16-bit elements = 8 KB, for A and B alike

// Origin of this thread's warp tile inside the block tile.
__device__ __forceinline__ int tc_warp_m() { return ((int)(threadIdx.x >> 5) >> 2) * 64; }
__device__ __forceinline__ int tc_warp_n() { return ((int)(threadIdx.x >> 5) & 3) * 32; }

template <typename T> struct TcMma;
// The mma of a storage type, and its pair type for 4-byte stores of two columns (low half = lower column).
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

// acc = sum over k-tiles of A[m0.., k] @ B[k, n0..] for this warp's 64 x 32 part of the block tile:
// acc[mi][ni] is the m16n8 accumulator of rows wm + 16 mi.., columns wn + 8 ni.. (tc_warp_m / tc_warp_n);
// within it c0, c1 sit at (row g, cols 2t, 2t+1) and c2, c3 at (row g + 8, same cols), g = lane / 4,
// t = lane % 4. acc is overwritten (zeroed first).
//
// The operands come from loaders: `la.load(tile, k0)` and `lb.load(tile, k0)` fill one stage `tile`
// (TC_TILE_ELEMS 16-bit elements) with the k-tile that starts at k0, k0 = 0, TC_BK, 2 TC_BK, ... in that
// order, zero outside the matrix, with cp.async copies (not committed: the loop commits a group a stage) or
// plain shared stores. A_KC / B_KC say how the loader lays a tile out: k-contiguous (A: 128 rows of M x 32 k
// at swz_k(row, chunk); B: 128 rows of N likewise) or mn-contiguous (32 k-rows x 128 of M or N at
// swz_mn(krow, chunk)). A is the m16n8k16 "row" operand, B the "col" one.
template <typename T, bool A_KC, bool B_KC, typename LoadA, typename LoadB>
__device__ __forceinline__ void tc_mainloop(float (&acc)[4][4][4], LoadA& la, LoadB& lb, long long K,
                                            unsigned short* smem_a, unsigned short* smem_b) {
    const int lane = threadIdx.x & 31;
    const int wm = tc_warp_m(), wn = tc_warp_n();
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int ktiles = (int)((K + TC_BK - 1) / TC_BK);
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
        if (s < ktiles) {
            la.load(smem_a + s * TC_TILE_ELEMS, (long long)s * TC_BK);
            lb.load(smem_b + s * TC_TILE_ELEMS, (long long)s * TC_BK);
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
            const long long k0 = (long long)(kt + TC_STAGES - 1) * TC_BK;
            la.load(smem_a + ws * TC_TILE_ELEMS, k0);
            lb.load(smem_b + ws * TC_TILE_ELEMS, k0);
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
                if (A_KC) {
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
                if (B_KC) {
                    int n = wn + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                    ldmatrix_x4(r, bs + swz_k(n, (kk >> 3) + ((lane >> 3) & 1)));
                } else {
                    int krow = kk + (lane & 7) + (((lane >> 3) & 1) << 3);
                    int n = wn + nj * 16 + ((lane >> 4) << 3);
                    ldmatrix_x4_trans(r, bs + swz_mn(krow, n >> 3));
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
}
