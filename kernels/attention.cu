// Fused attention (Op::Attention), its backward statistics (Op::AttentionStats) and gradients
// (Op::AttentionBwd). Layout [B, T, H, D]: row (b, t, h) is D contiguous elements, rows of one head H*D apart.
// f32 accumulation and softmax statistics everywhere; scores are kept in log2 units (s * scale * log2 e) so
// the exponentials are exp2f.
//
// attention_fwd_d<DP>_<f16|bf16> (DP = 48, 64, 80, 160): tensor cores, flash-attention style.
//   Grid (ceil(Tq / 64), B * H), 128 threads = 4 warps, each warp 16 query rows. D is padded to DP (a multiple
//   of 16, the mma k): padded columns are zero-filled in shared memory and zero in the Q fragments, so they
//   add nothing to q.k and the padded output columns are never stored. The warp's Q tile lives in registers
//   as m16n8k16 A fragments (DP / 16 k-steps); K and V tiles of BC keys (64, or 32 for DP = 160 to stay inside
//   48 KB of static shared memory) go global -> shared with cp.async (16-byte chunks, zero fill beyond Tk and D)
//   into a 2-stage ring with a row pitch of DP + 8 elements (an odd number of 16-byte chunks: ldmatrix rows
//   land in distinct bank groups without a swizzle). S = Q K^T: ldmatrix.x4 of K rows gives B fragments of two
//   8-key tiles. Online softmax on the S accumulators (row max over the 4 lanes of a row by two shuffles; the
//   row sum stays per lane until the end), then P (rounded to the storage type) is re-used in registers as the
//   A operand of P V (the m16n8 accumulator layout of two key tiles is the A layout of one k16 step), with V's
//   B fragments from ldmatrix.x4.trans. Key tails (Tk = 77) and the causal mask set scores to -inf; a key tile
//   entirely above the diagonal of the block's last row is not visited. Requirements (checked by the
//   launcher): D % 8 == 0, D <= DP, 16-byte aligned tensors. Everything else goes to the SIMT kernels.
//   Registers (DP = 160): 40 for Q, 80 for O, 16 for S a thread.
// attention_stats_fwd_d<DP>_<dt>: the same kernel without V: writes stats[b, h, 0, i] = logsumexp (natural
//   log) and stats[b, h, 1, i] = sum_d dy * o, the inputs of the backward.
// attention_{fwd,stats_fwd}_simt_<f32|f16|bf16>: CUDA cores, any D <= 512, any alignment: one warp per query
//   row, lanes take 32 keys at a time (lane j computes q.k_j with q in shared memory), online softmax across
//   the warp, then each lane accumulates its D / 32 output columns (registers) over the 32 keys (p broadcast
//   by shuffles, V rows read coalesced).
// attention_bwd_dq_simt_<dt> and attention_bwd_dkv_simt_<dt>: flash-attention 2 math without atomics: P is
//   recomputed from q, k and the stored logsumexp, dS = P (dP - delta) with dP = dy v^T.
//   dq: one warp per query row (loop over keys); dk, dv: one warp per key row (loop over queries), so each
//   output row has one writer and no scratch memory is needed (at the price of computing q.k and dy.v twice).
//   Output [B, Tq + 2 Tk, H, D]: dq rows at t < Tq, dk at Tq + j, dv at Tq + Tk + j.
#include "common.cuh"

#define ATT_LOG2E 1.4426950408889634f
#define ATT_LN2 0.6931471805599453f
#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_BR (ATT_WARPS * 16)  // query rows per block (tensor cores)
#define SIMT_MAXR 16             // output columns per lane in the SIMT kernels: D <= 512

__device__ __forceinline__ float att_neg_inf() { return __int_as_float(0xff800000); }

// Shapes of one launch (by value; mirrored by the argument list in src/backend/launch/attention.rs).
struct AttShape {
    long long b, tq, tk, h, d;
};

// ---- tensor cores ---------------------------------------------------------------------------------------

template <typename T> struct AttMma;
template <> struct AttMma<__half> {
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        mma_m16n8k16_f16(acc, a, b, acc);
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};
template <> struct AttMma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float* acc, const unsigned* a, const unsigned* b) {
        mma_m16n8k16_bf16(acc, a, b, acc);
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&h);
    }
};

// Loads keys [k0, k0 + BC) of one head (rows `ld` elements apart) into a shared tile of pitch DP + 8, zeros
// beyond tk rows and d columns. 16-byte chunks: requires d % 8 == 0 and 16-byte aligned rows.
template <int DP, int BC>
__device__ __forceinline__ void att_load_tile(unsigned short* tile, const unsigned short* head, long long ld,
                                              long long k0, long long tk, long long d) {
    constexpr int CH = DP / 8, PITCH = DP + 8;
    for (int c = threadIdx.x; c < BC * CH; c += ATT_THREADS) {
        const int r = c / CH, ch = c % CH;
        const bool ok = k0 + r < tk && ch * 8 < d;
        const unsigned short* src = ok ? head + (k0 + r) * ld + ch * 8 : head;
        cp_async_16_zfill(tile + r * PITCH + ch * 8, src, ok ? 16 : 0);
    }
}

// One block: 64 query rows of head (b, h). STATS: no V; write the logsumexp and delta rows instead of O.
template <typename T, int DP, int BC, bool STATS>
__device__ __forceinline__ void att_fwd_tc(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                           const T* __restrict__ o_in, const T* __restrict__ dy, T* __restrict__ o,
                                           float* __restrict__ stats, AttShape s, int causal, float scale) {
    constexpr int PITCH = DP + 8, KT = DP / 16, NT = BC / 8, OT = DP / 8;
    __shared__ __align__(16) unsigned short ks[2 * BC * PITCH];
    __shared__ __align__(16) unsigned short vs[STATS ? 8 : 2 * BC * PITCH];
    const long long bh = blockIdx.y, b = bh / s.h, h = bh % s.h;
    const long long ld = s.h * s.d;  // elements between consecutive t of one head
    const long long q0 = (long long)blockIdx.x * ATT_BR;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const unsigned short* kh = reinterpret_cast<const unsigned short*>(k) + (b * s.tk * s.h + h) * s.d;
    const unsigned short* vh = reinterpret_cast<const unsigned short*>(v) + (b * s.tk * s.h + h) * s.d;
    const long long qrow_base = (b * s.tq * s.h + h) * s.d;  // element of (b, t = 0, h, 0)
    const float sl2 = scale * ATT_LOG2E;

    // Q fragments: a0 (row g, k 2t..2t+1), a1 (row g+8), a2 (row g, k + 8), a3 (row g + 8, k + 8).
    unsigned qf[KT][4];
    const long long r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    {
        const unsigned* qu = reinterpret_cast<const unsigned*>(q);
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const long long row = (e & 1) ? r1 : r0;
                const long long col = kk * 16 + 2 * t4 + ((e >> 1) << 3);
                qf[kk][e] = (row < s.tq && col < s.d) ? qu[(qrow_base + row * ld + col) >> 1] : 0u;
            }
        }
    }
    float acc[STATS ? 1 : OT][4];
#pragma unroll
    for (int n = 0; n < (STATS ? 1 : OT); ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
    float m[2] = {att_neg_inf(), att_neg_inf()}, l[2] = {0.0f, 0.0f};

    const long long kend = causal ? (q0 + ATT_BR < s.tk ? q0 + ATT_BR : s.tk) : s.tk;
    const int ntiles = (int)((kend + BC - 1) / BC);
    if (ntiles > 0) {
        att_load_tile<DP, BC>(ks, kh, ld, 0, s.tk, s.d);
        if (!STATS) att_load_tile<DP, BC>(vs, vh, ld, 0, s.tk, s.d);
    }
    cp_async_commit();
    for (int kt = 0; kt < ntiles; ++kt) {
        const int buf = kt & 1;
        if (kt + 1 < ntiles) {
            att_load_tile<DP, BC>(ks + (buf ^ 1) * BC * PITCH, kh, ld, (long long)(kt + 1) * BC, s.tk, s.d);
            if (!STATS) att_load_tile<DP, BC>(vs + (buf ^ 1) * BC * PITCH, vh, ld, (long long)(kt + 1) * BC, s.tk, s.d);
            cp_async_commit();
            cp_async_wait_group<1>();
        } else {
            cp_async_wait_group<0>();
        }
        INSTAGEN_DROPPABLE(2) __syncthreads();  // tile kt, copied by every thread, has landed for all warps
        const unsigned short* kt_s = ks + buf * BC * PITCH;
        const long long k0 = (long long)kt * BC;

        // S = Q K^T for this warp's 16 rows x BC keys.
        float sc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[n][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
            for (int nj = 0; nj < NT / 2; ++nj) {
                // Matrices: (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15).
                unsigned r[4];
                const int key = nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(r, kt_s + key * PITCH + kk * 16 + (((lane >> 3) & 1) << 3));
                AttMma<T>::run(sc[2 * nj], qf[kk], r);
                AttMma<T>::run(sc[2 * nj + 1], qf[kk], r + 2);
            }
        }
        // Scale to log2 units, mask, online softmax.
        float mx[2] = {att_neg_inf(), att_neg_inf()};
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const long long key = k0 + n * 8 + 2 * t4 + (e & 1);
                const long long row = (e >> 1) ? r1 : r0;
                const bool masked = key >= s.tk || (causal && key > row);
                const float x = masked ? att_neg_inf() : sc[n][e] * sl2;
                sc[n][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], mu[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float mn = fmaxf(m[i], mx[i]);
            mu[i] = mn == att_neg_inf() ? 0.0f : mn;  // a row with nothing unmasked yet stays at p = 0
            alpha[i] = exp2f(m[i] - mu[i]);
            m[i] = mn;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(sc[n][e] - mu[e >> 1]);
                sc[n][e] = p;
                l[e >> 1] += p;
            }
        }
        if (!STATS) {
#pragma unroll
            for (int n = 0; n < OT; ++n) {
                acc[n][0] *= alpha[0];
                acc[n][1] *= alpha[0];
                acc[n][2] *= alpha[1];
                acc[n][3] *= alpha[1];
            }
            const unsigned short* vt_s = vs + buf * BC * PITCH;
#pragma unroll
            for (int kk = 0; kk < BC / 16; ++kk) {
                unsigned pa[4];
                pa[0] = AttMma<T>::pack(sc[2 * kk][0], sc[2 * kk][1]);
                pa[1] = AttMma<T>::pack(sc[2 * kk][2], sc[2 * kk][3]);
                pa[2] = AttMma<T>::pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                pa[3] = AttMma<T>::pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
                for (int nj = 0; nj < OT / 2; ++nj) {
                    // Matrices: (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15).
                    unsigned r[4];
                    const int key = kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                    ldmatrix_x4_trans(r, vt_s + key * PITCH + nj * 16 + ((lane >> 4) << 3));
                    AttMma<T>::run(acc[2 * nj], pa, r);
                    AttMma<T>::run(acc[2 * nj + 1], pa, r + 2);
                }
            }
        }
        INSTAGEN_DROPPABLE(1) __syncthreads();  // every warp is done with `buf` before the next iteration refills it
    }
    cp_async_wait_all();
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
    if (STATS) {
        float* lse_row = stats + bh * 2 * s.tq;
        if (t4 == 0) {
            if (r0 < s.tq) lse_row[r0] = (m[0] + log2f(l[0])) * ATT_LN2;
            if (r1 < s.tq) lse_row[r1] = (m[1] + log2f(l[1])) * ATT_LN2;
        }
        // delta = sum_d dy * o: two lanes per row, 16 rows per warp.
        const long long row = q0 + warp * 16 + (lane >> 1);
        float dsum = 0.0f;
        if (row < s.tq) {
            const long long base = qrow_base + row * ld;
            for (long long c = lane & 1; c < s.d; c += 2) dsum += to_f32(o_in[base + c]) * to_f32(dy[base + c]);
        }
        dsum += __shfl_xor_sync(0xffffffffu, dsum, 1);
        if ((lane & 1) == 0 && row < s.tq) lse_row[s.tq + row] = dsum;
        return;
    }
    const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    unsigned* ou = reinterpret_cast<unsigned*>(o);
#pragma unroll
    for (int n = 0; n < OT; ++n) {
        const long long col = n * 8 + 2 * t4;
        if (col >= s.d) continue;
        if (r0 < s.tq) ou[(qrow_base + r0 * ld + col) >> 1] = AttMma<T>::pack(acc[n][0] * inv0, acc[n][1] * inv0);
        if (r1 < s.tq) ou[(qrow_base + r1 * ld + col) >> 1] = AttMma<T>::pack(acc[n][2] * inv1, acc[n][3] * inv1);
    }
}

// Entry points (INSTAGEN_KERNELS_* of common.cuh).
INSTAGEN_KERNELS_HALF(attention_fwd_d48, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* v, T* o, AttShape s, int causal, float scale),
                      att_fwd_tc<T, 48, 64, false>(q, k, v, nullptr, nullptr, o, nullptr, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_stats_fwd_d48, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* o, const T* dy, float* stats, AttShape s, int causal,
                       float scale),
                      att_fwd_tc<T, 48, 64, true>(q, k, nullptr, o, dy, nullptr, stats, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_fwd_d64, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* v, T* o, AttShape s, int causal, float scale),
                      att_fwd_tc<T, 64, 64, false>(q, k, v, nullptr, nullptr, o, nullptr, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_stats_fwd_d64, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* o, const T* dy, float* stats, AttShape s, int causal,
                       float scale),
                      att_fwd_tc<T, 64, 64, true>(q, k, nullptr, o, dy, nullptr, stats, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_fwd_d80, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* v, T* o, AttShape s, int causal, float scale),
                      att_fwd_tc<T, 80, 64, false>(q, k, v, nullptr, nullptr, o, nullptr, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_stats_fwd_d80, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* o, const T* dy, float* stats, AttShape s, int causal,
                       float scale),
                      att_fwd_tc<T, 80, 64, true>(q, k, nullptr, o, dy, nullptr, stats, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_fwd_d160, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* v, T* o, AttShape s, int causal, float scale),
                      att_fwd_tc<T, 160, 32, false>(q, k, v, nullptr, nullptr, o, nullptr, s, causal, scale))
INSTAGEN_KERNELS_HALF(attention_stats_fwd_d160, __launch_bounds__(ATT_THREADS),
                      (const T* q, const T* k, const T* o, const T* dy, float* stats, AttShape s, int causal,
                       float scale),
                      att_fwd_tc<T, 160, 32, true>(q, k, nullptr, o, dy, nullptr, stats, s, causal, scale))

// ---- CUDA cores (any D <= 512, any alignment, every dtype) ----------------------------------------------

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// a . x for a row `a` of d f32 values (shared memory) and x of T storage.
template <typename T> __device__ __forceinline__ float att_dot(const float* a, const T* x, long long d) {
    float r = 0.0f;
    for (long long c = 0; c < d; ++c) r = fmaf(a[c], to_f32(x[c]), r);
    return r;
}

// Forward (STATS = false) or statistics (STATS = true) for one query row per warp, grid-stride over rows
// (b, i, h) in the layout's order. Dynamic shared memory: D floats a warp.
template <typename T, bool STATS>
__device__ __forceinline__ void att_fwd_simt(const T* q, const T* k, const T* v, const T* o_in, const T* dy, T* o,
                                             float* stats, AttShape s, int causal, float scale) {
    INSTAGEN_DYNAMIC_SMEM(float, smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* qs = smem + warp * s.d;
    const float sl2 = scale * ATT_LOG2E;
    const long long rows = s.b * s.tq * s.h, ld = s.h * s.d;
    for (long long row = (long long)blockIdx.x * ATT_WARPS + warp; row < rows; row += (long long)gridDim.x * ATT_WARPS) {
        const long long h = row % s.h, i = (row / s.h) % s.tq, b = row / (s.h * s.tq);
        const T* qr = q + row * s.d;
        const T* kh = k + (b * s.tk * s.h + h) * s.d;
        const T* vh = v + (b * s.tk * s.h + h) * s.d;
        __syncwarp();
        for (long long c = lane; c < s.d; c += 32) qs[c] = to_f32(qr[c]);
        __syncwarp();
        float acc[SIMT_MAXR];
#pragma unroll
        for (int r = 0; r < SIMT_MAXR; ++r) acc[r] = 0.0f;
        float m = att_neg_inf(), l = 0.0f;
        const long long kend = causal ? (i + 1 < s.tk ? i + 1 : s.tk) : s.tk;
        for (long long j0 = 0; j0 < kend; j0 += 32) {
            const long long j = j0 + lane;
            const float x = j < kend ? att_dot(qs, kh + j * ld, s.d) * sl2 : att_neg_inf();
            const float mn = fmaxf(m, warp_max(x));  // finite: key j0 is unmasked
            const float alpha = exp2f(m - mn), p = exp2f(x - mn);
            l = l * alpha + warp_sum(p);
            m = mn;
            if (!STATS) {
                const int nk = kend - j0 < 32 ? (int)(kend - j0) : 32;
#pragma unroll
                for (int r = 0; r < SIMT_MAXR; ++r) acc[r] *= alpha;
                for (int jj = 0; jj < nk; ++jj) {
                    const float pj = __shfl_sync(0xffffffffu, p, jj);
                    const T* vr = vh + (j0 + jj) * ld;
#pragma unroll
                    for (int r = 0; r < SIMT_MAXR; ++r) {
                        const long long c = lane + 32 * r;
                        if (c < s.d) acc[r] = fmaf(pj, to_f32(vr[c]), acc[r]);
                    }
                }
            }
        }
        if (STATS) {
            const T* orow = o_in + row * s.d;
            const T* grow = dy + row * s.d;
            float dsum = 0.0f;
            for (long long c = lane; c < s.d; c += 32) dsum += to_f32(orow[c]) * to_f32(grow[c]);
            dsum = warp_sum(dsum);
            if (lane == 0) {
                float* st = stats + (b * s.h + h) * 2 * s.tq;
                st[i] = (m + log2f(l)) * ATT_LN2;
                st[s.tq + i] = dsum;
            }
        } else {
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // Tk = 0: zeros, as the CPU reference
            T* orow = o + row * s.d;
#pragma unroll
            for (int r = 0; r < SIMT_MAXR; ++r) {
                const long long c = lane + 32 * r;
                if (c < s.d) orow[c] = from_f32<T>(acc[r] * inv);
            }
        }
    }
}

// dq rows: one query row per warp. Dynamic shared memory: 2 D floats a warp (q and dy rows).
template <typename T>
__device__ __forceinline__ void att_bwd_dq_simt(const T* q, const T* k, const T* v, const T* dy, const float* stats,
                                                T* out, AttShape s, int causal, float scale) {
    INSTAGEN_DYNAMIC_SMEM(float, smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* qs = smem + warp * 2 * s.d;
    float* gs = qs + s.d;
    const float sl2 = scale * ATT_LOG2E;
    const long long rows = s.b * s.tq * s.h, ld = s.h * s.d, tout = s.tq + 2 * s.tk;
    for (long long row = (long long)blockIdx.x * ATT_WARPS + warp; row < rows; row += (long long)gridDim.x * ATT_WARPS) {
        const long long h = row % s.h, i = (row / s.h) % s.tq, b = row / (s.h * s.tq);
        const T* kh = k + (b * s.tk * s.h + h) * s.d;
        const T* vh = v + (b * s.tk * s.h + h) * s.d;
        __syncwarp();
        for (long long c = lane; c < s.d; c += 32) {
            qs[c] = to_f32(q[row * s.d + c]);
            gs[c] = to_f32(dy[row * s.d + c]);
        }
        __syncwarp();
        const float* st = stats + (b * s.h + h) * 2 * s.tq;
        const float lse2 = st[i] * ATT_LOG2E, delta = st[s.tq + i];
        float acc[SIMT_MAXR];
#pragma unroll
        for (int r = 0; r < SIMT_MAXR; ++r) acc[r] = 0.0f;
        const long long kend = causal ? (i + 1 < s.tk ? i + 1 : s.tk) : s.tk;
        for (long long j0 = 0; j0 < kend; j0 += 32) {
            const long long j = j0 + lane;
            float ds = 0.0f;
            if (j < kend) {
                const float p = exp2f(att_dot(qs, kh + j * ld, s.d) * sl2 - lse2);
                ds = p * (att_dot(gs, vh + j * ld, s.d) - delta);
            }
            const int nk = kend - j0 < 32 ? (int)(kend - j0) : 32;
            for (int jj = 0; jj < nk; ++jj) {
                const float dj = __shfl_sync(0xffffffffu, ds, jj);
                const T* kr = kh + (j0 + jj) * ld;
#pragma unroll
                for (int r = 0; r < SIMT_MAXR; ++r) {
                    const long long c = lane + 32 * r;
                    if (c < s.d) acc[r] = fmaf(dj, to_f32(kr[c]), acc[r]);
                }
            }
        }
        T* orow = out + ((b * tout + i) * s.h + h) * s.d;
#pragma unroll
        for (int r = 0; r < SIMT_MAXR; ++r) {
            const long long c = lane + 32 * r;
            if (c < s.d) orow[c] = from_f32<T>(acc[r] * scale);
        }
    }
}

// dk and dv rows: one key row per warp. Dynamic shared memory: 2 D floats a warp (k and v rows).
template <typename T>
__device__ __forceinline__ void att_bwd_dkv_simt(const T* q, const T* k, const T* v, const T* dy, const float* stats,
                                                 T* out, AttShape s, int causal, float scale) {
    INSTAGEN_DYNAMIC_SMEM(float, smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* ksm = smem + warp * 2 * s.d;
    float* vsm = ksm + s.d;
    const float sl2 = scale * ATT_LOG2E;
    const long long rows = s.b * s.tk * s.h, ld = s.h * s.d, tout = s.tq + 2 * s.tk;
    for (long long row = (long long)blockIdx.x * ATT_WARPS + warp; row < rows; row += (long long)gridDim.x * ATT_WARPS) {
        const long long h = row % s.h, j = (row / s.h) % s.tk, b = row / (s.h * s.tk);
        const T* qh = q + (b * s.tq * s.h + h) * s.d;
        const T* gh = dy + (b * s.tq * s.h + h) * s.d;
        __syncwarp();
        for (long long c = lane; c < s.d; c += 32) {
            ksm[c] = to_f32(k[row * s.d + c]);
            vsm[c] = to_f32(v[row * s.d + c]);
        }
        __syncwarp();
        const float* st = stats + (b * s.h + h) * 2 * s.tq;
        float ak[SIMT_MAXR], av[SIMT_MAXR];
#pragma unroll
        for (int r = 0; r < SIMT_MAXR; ++r) ak[r] = av[r] = 0.0f;
        for (long long i0 = causal ? j : 0; i0 < s.tq; i0 += 32) {
            const long long i = i0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (i < s.tq) {
                p = exp2f(att_dot(ksm, qh + i * ld, s.d) * sl2 - st[i] * ATT_LOG2E);
                ds = p * (att_dot(vsm, gh + i * ld, s.d) - st[s.tq + i]);
            }
            const int nq = s.tq - i0 < 32 ? (int)(s.tq - i0) : 32;
            for (int ii = 0; ii < nq; ++ii) {
                const float pi = __shfl_sync(0xffffffffu, p, ii), di = __shfl_sync(0xffffffffu, ds, ii);
                const T* qr = qh + (i0 + ii) * ld;
                const T* gr = gh + (i0 + ii) * ld;
#pragma unroll
                for (int r = 0; r < SIMT_MAXR; ++r) {
                    const long long c = lane + 32 * r;
                    if (c < s.d) {
                        av[r] = fmaf(pi, to_f32(gr[c]), av[r]);
                        ak[r] = fmaf(di, to_f32(qr[c]), ak[r]);
                    }
                }
            }
        }
        T* dk = out + ((b * tout + s.tq + j) * s.h + h) * s.d;
        T* dv = out + ((b * tout + s.tq + s.tk + j) * s.h + h) * s.d;
#pragma unroll
        for (int r = 0; r < SIMT_MAXR; ++r) {
            const long long c = lane + 32 * r;
            if (c < s.d) {
                dk[c] = from_f32<T>(ak[r] * scale);
                dv[c] = from_f32<T>(av[r]);
            }
        }
    }
}

INSTAGEN_KERNELS_FLOAT(attention_fwd_simt, __launch_bounds__(ATT_THREADS),
                       (const T* q, const T* k, const T* v, T* o, AttShape s, int causal, float scale),
                       att_fwd_simt<T, false>(q, k, v, nullptr, nullptr, o, nullptr, s, causal, scale))
INSTAGEN_KERNELS_FLOAT(attention_stats_fwd_simt, __launch_bounds__(ATT_THREADS),
                       (const T* q, const T* k, const T* o, const T* dy, float* stats, AttShape s, int causal,
                        float scale),
                       att_fwd_simt<T, true>(q, k, nullptr, o, dy, nullptr, stats, s, causal, scale))
INSTAGEN_KERNELS_FLOAT(attention_bwd_dq_simt, __launch_bounds__(ATT_THREADS),
                       (const T* q, const T* k, const T* v, const T* dy, const float* stats, T* out, AttShape s,
                        int causal, float scale),
                       att_bwd_dq_simt<T>(q, k, v, dy, stats, out, s, causal, scale))
INSTAGEN_KERNELS_FLOAT(attention_bwd_dkv_simt, __launch_bounds__(ATT_THREADS),
                       (const T* q, const T* k, const T* v, const T* dy, const float* stats, T* out, AttShape s,
                        int causal, float scale),
                       att_bwd_dkv_simt<T>(q, k, v, dy, stats, out, s, causal, scale))
