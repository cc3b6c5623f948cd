// GEMM helpers shared by kernels/gemm.cu (and later the implicit-GEMM convolutions): the launch
// parameter block, the tile raster, and the swizzled shared-memory layouts of the tensor-core kernel.
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
