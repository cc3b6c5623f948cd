// Reductions (Op::Reduce): sum, mean and max over any set of axes, f32 accumulation (a compensated sum for
// sum and mean, so long and cancelling sums stay close to the f64 reference).
//
// The launcher describes the input without moving it: output element o walks the kept axes (row-major,
// `kdim`/`kstr`, the order of the output), reduced element q walks the reduced axes (`rdim`/`rstr`), and
// the input element is x[kept_offset(o) + reduced_offset(q)]. Adjacent axes are merged on the host, size-1
// axes dropped; there is always at least one kept and one reduced axis (size 1, stride 0 when none).
// An empty reduction (count == 0) gives sum 0, mean NaN (0 / 0) and max -inf, as the CPU reference.
//
// Two kernels per op and dtype:
//  - reduce_<op>_<dt>: row groups (reduce_util.cuh) of blockDim.x threads per output; consecutive threads
//    read consecutive reduced elements (coalesced when the innermost reduced axis is contiguous; in 16-byte
//    packs when it is the only reduced axis and every row is 16-byte aligned).
//  - reduce_<op>_col_<dt>: blocks of (32, ny) threads; the 32 x-threads take 32 consecutive outputs
//    (coalesced when the innermost kept axis is contiguous), the ny y-threads split the reduced elements.
// and a two-pass path for few outputs over long rows (one block per output would leave most SMs idle):
//  - reduce_<sum|max>_part_<dt>: block j reduces chunk (j % splits) of output (j / splits) into the
//    workspace (a KSum or a float per chunk); mean uses the sum's partials.
//  - reduce_<op>_fin_<dt>: one warp per output combines its `splits` partials in a fixed order.
#include "reduce_util.cuh"

#define RED_DIMS 8

struct ReduceDesc {
    long long n_out;  // outputs
    long long count;  // reduced elements per output
    long long nk;     // kept axes, 1..RED_DIMS
    long long nr;     // reduced axes, 1..RED_DIMS
    long long kdim[RED_DIMS], kstr[RED_DIMS];
    long long rdim[RED_DIMS], rstr[RED_DIMS];
    long long vec;  // 1: one contiguous reduced axis read in 16-byte packs (every row 16-byte aligned)
};

// Input offset of output o. Unrolled so the descriptor is read with constant indices.
__device__ __forceinline__ long long kept_offset(const ReduceDesc& d, long long o) {
    long long off = 0;
#pragma unroll
    for (int i = RED_DIMS - 1; i >= 0; --i) {
        if (i < d.nk) {
            long long n = d.kdim[i];
            long long q = o / n;
            off += (o - q * n) * d.kstr[i];
            o = q;
        }
    }
    return off;
}

// Input offset of index r over the reduced axes except the innermost one (axes 0 .. nr-2).
__device__ __forceinline__ long long reduced_outer_offset(const ReduceDesc& d, long long r) {
    if (d.nr <= 1) return 0;
    if (d.nr == 2) return r * d.rstr[0];
    long long off = 0;
#pragma unroll
    for (int i = RED_DIMS - 2; i >= 0; --i) {
        if (i < d.nr - 1) {
            long long n = d.rdim[i];
            long long q = r / n;
            off += (r - q * n) * d.rstr[i];
            r = q;
        }
    }
    return off;
}

// Walks reduced elements q0, q0 + step, ... of one output: the innermost reduced axis (length L, stride S)
// advances incrementally, the outer reduced axes are recomputed when their index changes.
struct ReducedWalk {
    long long r, t, dr, dt, L, S, outer;
    __device__ __forceinline__ ReducedWalk(const ReduceDesc& d, long long q0, long long step) {
        L = d.rdim[d.nr - 1];
        S = d.rstr[d.nr - 1];
        r = q0 / L;
        t = q0 - r * L;
        dr = step / L;
        dt = step - dr * L;
        outer = reduced_outer_offset(d, r);
    }
    __device__ __forceinline__ long long offset() const { return outer + t * S; }
    __device__ __forceinline__ void advance(const ReduceDesc& d) {
        long long r0 = r;
        t += dt;
        r += dr;
        if (t >= L) {
            t -= L;
            ++r;
        }
        if (r != r0) outer = reduced_outer_offset(d, r);
    }
};

// ---- the ops ------------------------------------------------------------------------------------

struct SumR {
    typedef KSum Acc;
    typedef KSumF Merge;
    __device__ static Acc init() { return ksum_zero(); }
    __device__ static Acc add(Acc a, float v) { return ksum_add(a, v); }
    __device__ static float finish(Acc a, long long) { return ksum_value(a); }
};
struct MeanR : SumR {
    __device__ static float finish(Acc a, long long count) { return ksum_value(a) / (float)count; }
};
struct MaxR {
    typedef float Acc;
    typedef MaxF Merge;
    __device__ static Acc init() { return neg_inf_f32(); }
    __device__ static Acc add(Acc a, float v) { return max_nan(a, v); }
    __device__ static float finish(Acc a, long long) { return a; }
};

// ---- kernels ------------------------------------------------------------------------------------

// Row groups: blockDim.x threads per output (see reduce_util.cuh for the two layouts).
template <typename R, typename T>
__device__ __forceinline__ void reduce_rows(const T* x, T* y, const ReduceDesc& d, typename R::Acc* smem) {
    typedef typename R::Acc Acc;
    const long long tx = threadIdx.x, bx = blockDim.x;
    for (long long o = (long long)blockIdx.x * blockDim.y + threadIdx.y; o < d.n_out;
         o += (long long)gridDim.x * blockDim.y) {
        const T* xb = x + kept_offset(d, o);
        Acc acc = R::init();
        if (d.vec) {
            constexpr int P = 16 / sizeof(T);
            const long long np = d.count / P;
#pragma unroll 2
            for (long long j = tx; j < np; j += bx) {
                float v[P];
                load_pack<T, P>(xb, j, v);
#pragma unroll
                for (int i = 0; i < P; ++i) acc = R::add(acc, v[i]);
            }
        } else if (d.nr == 1) {
            const long long s = d.rstr[0];
#pragma unroll 4
            for (long long q = tx; q < d.count; q += bx) acc = R::add(acc, to_f32(xb[q * s]));
        } else {
            ReducedWalk w(d, tx, bx);
            for (long long q = tx; q < d.count; q += bx) {
                acc = R::add(acc, to_f32(xb[w.offset()]));
                w.advance(d);
            }
        }
        acc = group_allreduce(acc, typename R::Merge(), smem);
        if (tx == 0) y[o] = from_f32<T>(R::finish(acc, d.count));
    }
}

// Columns: blockDim = (32, ny); a block takes 32 consecutive outputs per step of its grid-stride loop.
template <typename R, typename T>
__device__ __forceinline__ void reduce_cols(const T* x, T* y, const ReduceDesc& d, typename R::Acc* smem) {
    typedef typename R::Acc Acc;
    const long long ny = blockDim.y;
    const long long tiles = (d.n_out + 31) / 32;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long o = tile * 32 + threadIdx.x;
        Acc acc = R::init();
        if (o < d.n_out) {
            const T* xb = x + kept_offset(d, o);
            ReducedWalk w(d, threadIdx.y, ny);
            for (long long q = threadIdx.y; q < d.count; q += ny) {
                acc = R::add(acc, to_f32(xb[w.offset()]));
                w.advance(d);
            }
        }
        acc = col_allreduce(acc, typename R::Merge(), smem);
        if (threadIdx.y == 0 && o < d.n_out) y[o] = from_f32<T>(R::finish(acc, d.count));
    }
}

// Two-pass path, pass 1: block j reduces reduced elements [c * chunk, (c + 1) * chunk) of output o, where
// o = j / splits and c = j % splits, into ws[j]. Row-group layout (blockDim.x threads, blockDim.y == 1).
template <typename R, typename T>
__device__ __forceinline__ void reduce_part(const T* x, typename R::Acc* ws, const ReduceDesc& d, long long splits,
                                            typename R::Acc* smem) {
    typedef typename R::Acc Acc;
    const long long tx = threadIdx.x, bx = blockDim.x;
    const long long chunk = (d.count + splits - 1) / splits;
    for (long long j = blockIdx.x; j < d.n_out * splits; j += gridDim.x) {
        const long long o = j / splits, c = j - o * splits;
        const long long q0 = c * chunk, q1 = min(d.count, q0 + chunk);
        const T* xb = x + kept_offset(d, o);
        Acc acc = R::init();
        if (d.nr == 1) {
            const long long s = d.rstr[0];
#pragma unroll 4
            for (long long q = q0 + tx; q < q1; q += bx) acc = R::add(acc, to_f32(xb[q * s]));
        } else if (q0 + tx < q1) {
            ReducedWalk w(d, q0 + tx, bx);
            for (long long q = q0 + tx; q < q1; q += bx) {
                acc = R::add(acc, to_f32(xb[w.offset()]));
                w.advance(d);
            }
        }
        acc = group_allreduce(acc, typename R::Merge(), smem);
        if (tx == 0) ws[j] = acc;
    }
}

// Pass 2: one warp per output (blockDim = (32, ny)); lane l combines partials l, l + 32, ... in order, then
// the warp's butterfly combines the lanes.
template <typename R, typename T>
__device__ __forceinline__ void reduce_fin(const typename R::Acc* ws, T* y, const ReduceDesc& d, long long splits) {
    typedef typename R::Acc Acc;
    typename R::Merge merge;
    for (long long o = (long long)blockIdx.x * blockDim.y + threadIdx.y; o < d.n_out;
         o += (long long)gridDim.x * blockDim.y) {
        Acc acc = R::init();
        for (long long c = threadIdx.x; c < splits; c += 32) acc = merge(acc, ws[o * splits + c]);
        acc = warp_allreduce(acc, merge);
        if (threadIdx.x == 0) y[o] = from_f32<T>(R::finish(acc, d.count));
    }
}

// ---- entry points -------------------------------------------------------------------------------

// One block's shared scratch and the reduction, in an entry point whose storage type is T.
#define ROWS(R, ACC)                    \
    __shared__ ACC smem[32];            \
    reduce_rows<R, T>(x, y, d, smem)
#define COLS(R, ACC)                    \
    __shared__ ACC smem[32 * 32];       \
    reduce_cols<R, T>(x, y, d, smem)

INSTAGEN_KERNELS_FLOAT(reduce_sum, , (const T* x, T* y, ReduceDesc d), ROWS(SumR, KSum))
INSTAGEN_KERNELS_FLOAT(reduce_mean, , (const T* x, T* y, ReduceDesc d), ROWS(MeanR, KSum))
INSTAGEN_KERNELS_FLOAT(reduce_max, , (const T* x, T* y, ReduceDesc d), ROWS(MaxR, float))

INSTAGEN_KERNELS_FLOAT(reduce_sum_col, , (const T* x, T* y, ReduceDesc d), COLS(SumR, KSum))
INSTAGEN_KERNELS_FLOAT(reduce_mean_col, , (const T* x, T* y, ReduceDesc d), COLS(MeanR, KSum))
INSTAGEN_KERNELS_FLOAT(reduce_max_col, , (const T* x, T* y, ReduceDesc d), COLS(MaxR, float))

#define PART(R, ACC)                    \
    __shared__ ACC smem[32];            \
    reduce_part<R, T>(x, ws, d, splits, smem)

INSTAGEN_KERNELS_FLOAT(reduce_sum_part, , (const T* x, KSum* ws, ReduceDesc d, long long splits), PART(SumR, KSum))
INSTAGEN_KERNELS_FLOAT(reduce_max_part, , (const T* x, float* ws, ReduceDesc d, long long splits), PART(MaxR, float))

INSTAGEN_KERNELS_FLOAT(reduce_sum_fin, , (const KSum* ws, T* y, ReduceDesc d, long long splits),
                       reduce_fin<SumR, T>(ws, y, d, splits))
INSTAGEN_KERNELS_FLOAT(reduce_mean_fin, , (const KSum* ws, T* y, ReduceDesc d, long long splits),
                       reduce_fin<MeanR, T>(ws, y, d, splits))
INSTAGEN_KERNELS_FLOAT(reduce_max_fin, , (const float* ws, T* y, ReduceDesc d, long long splits),
                       reduce_fin<MaxR, T>(ws, y, d, splits))
