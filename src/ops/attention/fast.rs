//! The CPU engine's attention (`CpuBackend`): flash attention in f32 on all cores. The exact reference is
//! `cpu.rs` (layouts and the flash-attention-2 backward are described there).
//!
//! Work is cut into tasks of one (batch, head) and a range of query rows (forward, statistics) or key rows
//! (backward). The number of ranges depends on B * H and the sequence length only, never on the thread count,
//! and every sum runs in a fixed order, so results are the same bits for any number of threads.
//!
//! - Forward and statistics: a block of `BQ` queries against blocks of `BK` keys, computed transposed with the
//!   queries along the vector lanes: `S^T = K Q^T` (Q^T pre-scaled by `scale * log2 e`), an online softmax per
//!   query (running max `m` and sum `l`, base 2, `exp2`), rescaling the accumulator when the max grows,
//!   `O^T += V^T P^T`; scores are only ever held for one `BK x BQ` block. The statistics pass is the same
//!   without `V` (it needs only `m` and `l`: logsumexp = ln 2 (m + log2 l)). Causal blocks wholly above the
//!   diagonal are skipped.
//! - Backward (one pass, flash attention 2): a task owns a range of keys; per key block and query block it
//!   recomputes `P = exp2(S scale log2 e - lse log2 e)` from the saved logsumexp, `dP = dY V^T`,
//!   `dS = P (dP - delta)`, and accumulates `dV += P^T dY`, `dK += dS^T Q` in the task's own rows and
//!   `dQ += dS K` in a per-task partial; the partials of a head's key ranges are added in range order when the
//!   output is written, and dq, dk are multiplied by `scale` there.
//!
//! Products go through one register-tiled kernel ([`matmul`]: a scalar of A broadcast against vectors of a
//! row-major B), written as plain loops over `[f32; 16]` that the compiler vectorises. The forward reads K and V
//! in place; the backward packs the operands it reads as rows (K^T, V^T, K, Q, dY) per task into contiguous f32
//! buffers with the head dimension padded to a multiple of 16 (zeros). Each task is compiled three times: for AVX-512, for AVX2 + FMA (both chosen at run time
//! when the CPU has them) and plain (`mul_add` only where it is a native instruction), see [`multiversion!`].
//! f16/bf16 storage is decoded to f32 whole tensors at a time (vectorised) before, and the output encoded once after.

use rayon::prelude::*;

use crate::backend::cpu::kernels::{COST_COPY, View, floats, par_chunks_unit, with_f32_out, worth_parallel};
use crate::error::Result;
use crate::ops::Op;

/// f32 lanes of the kernels' vectors (one AVX-512 register, two AVX2 registers).
const L: usize = 16;
/// Query rows and key rows per block.
const BQ: usize = 64;
const BK: usize = 64;
/// Tasks a call is cut into at least, where the rows allow it: a constant (not the thread count), so the
/// backward's dq summation order, which follows the key ranges, is the same on every machine.
const MIN_TASKS: usize = 32;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const NEG_INF: f32 = f32::NEG_INFINITY;

/// Runs `op` if it is one of this family's ops and the shapes are ones this path takes (`None` otherwise: the
/// reference runs). Inputs, output shape and byte counts are already checked (`backend::cpu::run_op_mode`).
pub(crate) fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    run_isa(Isa::detect(), op, ins, out, out_bytes)
}

fn run_isa(isa: Isa, op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    let (causal, scale) = match op {
        Op::Attention { causal, scale } | Op::AttentionStats { causal, scale } | Op::AttentionBwd { causal, scale } => {
            (*causal, *scale)
        }
        _ => return None,
    };
    let sh = Shape::new(ins[0].shape, ins[1].shape, causal, scale)?;
    Some(with_f32_out(out.dtype, out_bytes, |o| {
        match op {
            Op::Attention { .. } => {
                let (q, k, v) = (floats(&ins[0]), floats(&ins[1]), floats(&ins[2]));
                forward(isa, &sh, &q, &k, &v, o);
            }
            Op::AttentionStats { .. } => {
                let (q, k, o_in, dy) = (floats(&ins[0]), floats(&ins[1]), floats(&ins[2]), floats(&ins[3]));
                stats(isa, &sh, &q, &k, &o_in, &dy, o);
            }
            _ => {
                let (q, k, v, dy) = (floats(&ins[0]), floats(&ins[1]), floats(&ins[2]), floats(&ins[3]));
                backward(isa, &sh, &q, &k, &v, &dy, &floats(&ins[4]), o);
            }
        }
        Ok(())
    }))
}

/// The instruction set the tasks are compiled for, chosen once per call from what the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Whether the portable build fuses multiply-adds: only where `mul_add` is one instruction of the base ISA
/// (elsewhere it would be a library call).
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

/// Defines `fn $name(isa, args) -> ret` that runs `$generic::<FMA, MR, NV>(args)` compiled for `isa`: AVX-512
/// (6 x 4 vector register tile), AVX2 + FMA (6 x 1: a 16-lane vector is two of its registers), or the base
/// instruction set (4 x 1). `$generic` and everything it calls are `#[inline(always)]`, so the whole task is
/// compiled with the wrapper's target features.
macro_rules! multiversion {
    ($name:ident => $generic:ident ($($a:ident: $t:ty),* $(,)?) -> $r:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(isa: Isa, $($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($a: $t),*) -> $r {
                    $generic::<true, 6, 4>($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($a: $t),*) -> $r {
                    $generic::<true, 6, 1>($($a),*)
                }
                match isa {
                    // SAFETY: `Isa::Avx512` and `Isa::Avx2` only come from `Isa::detect`, which found these
                    // features on this CPU (the tests pass only detected ones).
                    Isa::Avx512 => return unsafe { avx512($($a),*) },
                    Isa::Avx2 => return unsafe { avx2($($a),*) },
                    Isa::Portable => {}
                }
            }
            let _ = isa;
            $generic::<PORTABLE_FMA, 4, 1>($($a),*)
        }
    };
}

/// The dimensions of one call. q `[B, Tq, H, D]`, k and v `[B, Tk, H, D]`.
#[derive(Clone, Copy, Debug)]
struct Shape {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    d: usize,
    /// `d` rounded up to whole vectors: the row length of packed buffers.
    dp: usize,
    causal: bool,
    scale: f32,
}

impl Shape {
    /// `None` (the reference runs) for empty head dimensions or key sequences.
    fn new(q: &[usize], k: &[usize], causal: bool, scale: f32) -> Option<Shape> {
        let (&[b, tq, h, d], &[_, tk, _, _]) = (q, k) else { return None };
        if d == 0 || tk == 0 {
            return None;
        }
        Some(Shape { b, tq, tk, h, d, dp: d.div_ceil(L) * L, causal, scale })
    }

    /// Offset of row (b, t, head) of a `[B, T, H, D]` tensor with `t_len` rows per batch.
    fn at(&self, t_len: usize, b: usize, t: usize, head: usize) -> usize {
        ((b * t_len + t) * self.h + head) * self.d
    }

    /// Multiply-adds of one forward (for the parallel threshold).
    fn work(&self) -> usize {
        self.b * self.h * self.tq * self.tk * self.d
    }

    /// Keys query `i` sees among the `n` keys from `first`.
    fn visible(&self, i: usize, first: usize, n: usize) -> usize {
        if self.causal { n.min((i + 1).saturating_sub(first)) } else { n }
    }
}

/// Rows of a range task when `n` rows of each of `bh` heads are cut for at least [`MIN_TASKS`] tasks: a
/// multiple of `block`.
fn range_len(bh: usize, n: usize, block: usize) -> usize {
    let parts = MIN_TASKS.div_ceil(bh.max(1)).min(n.div_ceil(block)).max(1);
    n.div_ceil(parts).div_ceil(block).max(1) * block
}

/// `f(task)` for every task, in parallel when the call is large; results in task order.
fn run_tasks<T: Send>(n: usize, work: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if worth_parallel(work) { (0..n).into_par_iter().map(f).collect() } else { (0..n).map(f).collect() }
}

// ---- forward and statistics ----------------------------------------------------------------------------

fn forward(isa: Isa, sh: &Shape, q: &[f32], k: &[f32], v: &[f32], o: &mut [f32]) {
    let (bh, d) = (sh.b * sh.h, sh.d);
    let len = range_len(bh, sh.tq, BQ);
    let nr = sh.tq.div_ceil(len);
    let parts = run_tasks(bh * nr, sh.work(), |t| {
        let (b, head, i0) = (t / nr / sh.h, t / nr % sh.h, t % nr * len);
        fwd_rows(isa, sh, q, k, v, true, b, head, i0, sh.tq.min(i0 + len))
    });
    // Rows (b, i) of the output hold every head's D values.
    par_chunks_unit(o, sh.h * d, COST_COPY, |start, chunk| {
        for (ri, row) in chunk.chunks_mut(sh.h * d).enumerate() {
            let r = start / (sh.h * d) + ri;
            let (b, i) = (r / sh.tq, r % sh.tq);
            for (head, dst) in row.chunks_mut(d).enumerate() {
                let part = &parts[(b * sh.h + head) * nr + i / len];
                dst.copy_from_slice(&part[(i % len) * d..][..d]);
            }
        }
    });
}

fn stats(isa: Isa, sh: &Shape, q: &[f32], k: &[f32], o_in: &[f32], dy: &[f32], st: &mut [f32]) {
    let (bh, tq) = (sh.b * sh.h, sh.tq);
    let len = range_len(bh, tq, BQ);
    let nr = tq.div_ceil(len);
    let parts = run_tasks(bh * nr, sh.work() / 2, |t| {
        let (b, head, i0) = (t / nr / sh.h, t / nr % sh.h, t % nr * len);
        let i1 = tq.min(i0 + len);
        let lse = fwd_rows(isa, sh, q, k, &[], false, b, head, i0, i1);
        let delta: Vec<f32> = (i0..i1)
            .map(|i| {
                let r = sh.at(tq, b, i, head);
                dot(&o_in[r..r + sh.d], &dy[r..r + sh.d])
            })
            .collect();
        (lse, delta)
    });
    // st [B, H, 2, Tq]: the logsumexps, then the deltas, of each (b, h).
    for (blk, head_parts) in st.chunks_mut(2 * tq).zip(parts.chunks(nr)) {
        let (lse, delta) = blk.split_at_mut(tq);
        for (r, (l, dl)) in head_parts.iter().enumerate() {
            lse[r * len..r * len + l.len()].copy_from_slice(l);
            delta[r * len..r * len + dl.len()].copy_from_slice(dl);
        }
    }
}

/// Query rows `[i0, i1)` of head (b, head): per row its output (`D` values) when `with_o`, else its
/// logsumexp (natural log, one value).
///
/// Computed transposed, with the queries of a block along the vector lanes: `S^T = K Q^T` (`[BK, BQ]`, Q^T packed
/// per block and pre-multiplied by `scale * log2 e`), so the running max, the rescaling and the row sums are
/// plain vector operations over 16 queries, and `O^T += V^T P^T` (`[D, BQ]`) needs no padding of D. K and V are
/// read in place (rows of one head are H * D apart).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fwd_rows_generic<const F: bool, const MR: usize, const NV: usize>(
    sh: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    with_o: bool,
    b: usize,
    head: usize,
    i0: usize,
    i1: usize,
) -> Vec<f32> {
    let (d, tk, ld) = (sh.d, sh.tk, sh.h * sh.d);
    let kv0 = sh.at(tk, b, 0, head);
    let c = sh.scale * LOG2E;
    let mut out = vec![0f32; (i1 - i0) * if with_o { d } else { 1 }];
    let mut qt = vec![0f32; d * BQ];
    let mut st = vec![0f32; BK * BQ];
    let mut ot = vec![0f32; if with_o { d * BQ } else { 0 }];
    let (mut m, mut l, mut mx, mut corr) = ([NEG_INF; BQ], [0f32; BQ], [0f32; BQ], [0f32; BQ]);
    for it in (i0..i1).step_by(BQ) {
        let nq = BQ.min(i1 - it);
        let w = nq.div_ceil(L) * L;
        qt.fill(0.0);
        for r in 0..nq {
            let src = &q[sh.at(sh.tq, b, it + r, head)..][..d];
            for (dd, &x) in src.iter().enumerate() {
                qt[dd * BQ + r] = x * c;
            }
        }
        m.fill(NEG_INF);
        l.fill(0.0);
        ot.fill(0.0);
        let kend = if sh.causal { tk.min(it + nq) } else { tk };
        for kb in (0..kend).step_by(BK) {
            let nb = BK.min(kend - kb);
            // S^T = K Q^T.
            matmul::<F, MR, NV>(nb, w / L, d, &k[kv0 + kb * ld..], ld, 1, &qt, BQ, &mut st, BQ, false);
            if sh.causal && kb + nb > it + 1 {
                // Key kb + j is masked for the queries before it.
                for (j, row) in st.chunks_mut(BQ).take(nb).enumerate() {
                    row[..(kb + j).saturating_sub(it).min(w)].fill(NEG_INF);
                }
            }
            mx.copy_from_slice(&m);
            for row in st.chunks(BQ).take(nb) {
                for (a, &x) in mx[..w].iter_mut().zip(row) {
                    *a = if x > *a { x } else { *a };
                }
            }
            // A query with every key so far masked keeps m = -inf; subtracting 0 leaves its p and corr 0.
            for r in 0..w {
                let sub = if mx[r] == NEG_INF { 0.0 } else { mx[r] };
                corr[r] = exp2::<F>(m[r] - sub);
                l[r] *= corr[r];
                m[r] = mx[r];
                mx[r] = sub;
            }
            for row in st.chunks_mut(BQ).take(nb) {
                for ((x, &sub), lr) in row[..w].iter_mut().zip(&mx).zip(&mut l) {
                    *x = exp2::<F>(*x - sub);
                    *lr += *x;
                }
            }
            if with_o {
                for row in ot.chunks_mut(BQ) {
                    for (x, &cr) in row[..w].iter_mut().zip(&corr) {
                        *x *= cr;
                    }
                }
                // O^T += V^T P^T.
                matmul::<F, MR, NV>(d, w / L, nb, &v[kv0 + kb * ld..], 1, ld, &st, BQ, &mut ot, BQ, true);
            }
        }
        // Every query sees key 0, so l >= 1.
        for r in 0..nq {
            if with_o {
                let inv = 1.0 / l[r];
                for (dd, x) in out[(it - i0 + r) * d..][..d].iter_mut().enumerate() {
                    *x = ot[dd * BQ + r] * inv;
                }
            } else {
                out[it - i0 + r] = (m[r] + l[r].log2()) * std::f32::consts::LN_2;
            }
        }
    }
    out
}

multiversion!(fwd_rows => fwd_rows_generic(
    sh: &Shape, q: &[f32], k: &[f32], v: &[f32], with_o: bool, b: usize, head: usize, i0: usize, i1: usize,
) -> Vec<f32>);

// ---- backward ------------------------------------------------------------------------------------------

/// The gradients a key range contributes: dq over the queries from `q0` (`[Tq - q0, Dp]`, not yet scaled) and the
/// range's own dk (not yet scaled) and dv (`[n, Dp]`).
struct KeyGrads {
    q0: usize,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn backward(isa: Isa, sh: &Shape, q: &[f32], k: &[f32], v: &[f32], dy: &[f32], st: &[f32], o: &mut [f32]) {
    let (bh, d, dp, tq, tk) = (sh.b * sh.h, sh.d, sh.dp, sh.tq, sh.tk);
    let len = range_len(bh, tk, BK);
    let nr = tk.div_ceil(len);
    let parts = run_tasks(bh * nr, sh.work() * 3, |t| {
        let (b, head, j0) = (t / nr / sh.h, t / nr % sh.h, t % nr * len);
        bwd_keys(isa, sh, q, k, v, dy, st, b, head, j0, tk.min(j0 + len))
    });
    // Output rows (b, t) of [B, Tq + 2 Tk, H, D]: dq (the key ranges' partials added in range order), dk, dv.
    let tout = tq + 2 * tk;
    par_chunks_unit(o, sh.h * d, COST_COPY * nr, |start, chunk| {
        for (ri, row) in chunk.chunks_mut(sh.h * d).enumerate() {
            let r = start / (sh.h * d) + ri;
            let (b, t) = (r / tout, r % tout);
            for (head, dst) in row.chunks_mut(d).enumerate() {
                let ranges = &parts[(b * sh.h + head) * nr..][..nr];
                if t < tq {
                    dst.fill(0.0);
                    for g in ranges.iter().filter(|g| t >= g.q0) {
                        for (x, &y) in dst.iter_mut().zip(&g.dq[(t - g.q0) * dp..]) {
                            *x += y;
                        }
                    }
                    for x in dst.iter_mut() {
                        *x *= sh.scale;
                    }
                } else {
                    let (j, is_k) = if t < tq + tk { (t - tq, true) } else { (t - tq - tk, false) };
                    let g = &ranges[j / len];
                    let src = if is_k { &g.dk } else { &g.dv };
                    let c = if is_k { sh.scale } else { 1.0 };
                    for (x, &y) in dst.iter_mut().zip(&src[(j % len) * dp..]) {
                        *x = y * c;
                    }
                }
            }
        }
    });
}

/// Gradient contributions of the keys `[j0, j1)` of head (b, head).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_keys_generic<const F: bool, const MR: usize, const NV: usize>(
    sh: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dy: &[f32],
    st: &[f32],
    b: usize,
    head: usize,
    j0: usize,
    j1: usize,
) -> KeyGrads {
    let (d, dp, tq) = (sh.d, sh.dp, sh.tq);
    let nk = j1 - j0;
    let nkp = nk.div_ceil(L) * L;
    // Queries before j0 see none of these keys when causal.
    let q0 = if sh.causal { j0.min(tq) } else { 0 };
    let nq_all = tq - q0;
    let (kt, vt, kr) = (pack_t(sh, k, b, head, j0, nk, nkp), pack_t(sh, v, b, head, j0, nk, nkp), pack_rows(sh, k, sh.tk, b, head, j0, nk));
    let (qr, dyr) = (pack_rows(sh, q, tq, b, head, q0, nq_all), pack_rows(sh, dy, tq, b, head, q0, nq_all));
    let bh = (b * sh.h + head) * 2 * tq;
    let lse2: Vec<f32> = st[bh + q0..bh + tq].iter().map(|&x| x * LOG2E).collect();
    let delta = &st[bh + tq + q0..bh + 2 * tq];
    let mut g = KeyGrads { q0, dq: vec![0f32; nq_all * dp], dk: vec![0f32; nk * dp], dv: vec![0f32; nk * dp] };
    let (mut p, mut ds) = (vec![0f32; BQ * BK], vec![0f32; BQ * BK]);
    let c = sh.scale * LOG2E;
    for kb in (0..nk).step_by(BK) {
        let (nb, jg) = (BK.min(nk - kb), j0 + kb);
        let nbv = nb.div_ceil(L);
        let first = if sh.causal { jg } else { 0 };
        for it in (first..tq).step_by(BQ) {
            let (nq, li) = (BQ.min(tq - it), it - q0);
            // S = Q K^T and dP = dY V^T.
            matmul::<F, MR, NV>(nq, nbv, d, &qr[li * dp..], dp, 1, &kt[kb..], nkp, &mut p, BK, false);
            matmul::<F, MR, NV>(nq, nbv, d, &dyr[li * dp..], dp, 1, &vt[kb..], nkp, &mut ds, BK, false);
            for (r, (prow, drow)) in p.chunks_mut(BK).zip(ds.chunks_mut(BK)).take(nq).enumerate() {
                let valid = sh.visible(it + r, jg, nb);
                let (l2, dl) = (lse2[li + r], delta[li + r]);
                for (pv, dv) in prow[..valid].iter_mut().zip(&mut drow[..valid]) {
                    let pe = exp2::<F>(*pv * c - l2);
                    *pv = pe;
                    *dv = pe * (*dv - dl);
                }
                prow[valid..nbv * L].fill(0.0);
                drow[valid..nbv * L].fill(0.0);
            }
            // dV += P^T dY, dK += dS^T Q, dQ += dS K.
            matmul::<F, MR, NV>(nb, dp / L, nq, &p, 1, BK, &dyr[li * dp..], dp, &mut g.dv[kb * dp..], dp, true);
            matmul::<F, MR, NV>(nb, dp / L, nq, &ds, 1, BK, &qr[li * dp..], dp, &mut g.dk[kb * dp..], dp, true);
            matmul::<F, MR, NV>(nq, dp / L, nb, &ds, BK, 1, &kr[kb * dp..], dp, &mut g.dq[li * dp..], dp, true);
        }
    }
    g
}

multiversion!(bwd_keys => bwd_keys_generic(
    sh: &Shape, q: &[f32], k: &[f32], v: &[f32], dy: &[f32], st: &[f32], b: usize, head: usize, j0: usize, j1: usize,
) -> KeyGrads);

// ---- packing -------------------------------------------------------------------------------------------

/// Rows `[t0, t0 + n)` of head (b, head) of `x` (`t_len` rows per batch) as `[n, Dp]`, zero padded.
#[inline(always)]
fn pack_rows(sh: &Shape, x: &[f32], t_len: usize, b: usize, head: usize, t0: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * sh.dp];
    for (t, dst) in out.chunks_mut(sh.dp).enumerate() {
        let src = sh.at(t_len, b, t0 + t, head);
        dst[..sh.d].copy_from_slice(&x[src..src + sh.d]);
    }
    out
}

/// Key rows `[j0, j0 + n)` of head (b, head) of `x` transposed: `[D, np]`, keys beyond `n` zero.
#[inline(always)]
fn pack_t(sh: &Shape, x: &[f32], b: usize, head: usize, j0: usize, n: usize, np: usize) -> Vec<f32> {
    let mut out = vec![0f32; sh.d * np];
    // Blocks of 16 keys: each output row gets 16 consecutive values from 16 source rows.
    for jb in (0..n).step_by(L) {
        let je = n.min(jb + L);
        for dd in 0..sh.d {
            for j in jb..je {
                out[dd * np + j] = x[sh.at(sh.tk, b, j0 + j, head) + dd];
            }
        }
    }
    out
}

// ---- vector code ---------------------------------------------------------------------------------------

#[inline(always)]
fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// `C (+)= A B` for `m` rows and `nv` vectors of columns of C, over `kk`: `A[i][p] = a[i * ars + p * acs]`,
/// `B[p][j] = b[p * ldb + j]`, `C[i][j] = c[i * ldc + j]`. Each element is a sequential sum over `p` (added to
/// C's value when `acc`), so how rows and columns are tiled never changes a result.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn matmul<const F: bool, const MR: usize, const NV: usize>(
    m: usize,
    nv: usize,
    kk: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    if m == 0 || nv == 0 {
        return;
    }
    assert!((m - 1) * ldc + nv * L <= c.len(), "matmul: C too small");
    assert!(kk == 0 || ((m - 1) * ars + (kk - 1) * acs < a.len() && (kk - 1) * ldb + nv * L <= b.len()), "matmul: A or B too small");
    let mut v0 = 0;
    while v0 < nv {
        // Vectors per pass: up to NV, with 5 split as 3 + 2 rather than 4 + 1.
        let w = if nv - v0 == 5 && NV >= 3 { 3 } else { NV.min(nv - v0) };
        // SAFETY (every `tile` below): rows i < m, vectors below v0 + w <= nv and p < kk stay inside a, b and c
        // by the asserts above.
        unsafe {
            let (bp, cp) = (b.as_ptr().add(v0 * L), c.as_mut_ptr().add(v0 * L));
            match w {
                1 => rows::<F, MR, 1>(m, kk, a.as_ptr(), ars, acs, bp, ldb, cp, ldc, acc),
                2 => rows::<F, MR, 2>(m, kk, a.as_ptr(), ars, acs, bp, ldb, cp, ldc, acc),
                3 => rows::<F, MR, 3>(m, kk, a.as_ptr(), ars, acs, bp, ldb, cp, ldc, acc),
                _ => rows::<F, MR, 4>(m, kk, a.as_ptr(), ars, acs, bp, ldb, cp, ldc, acc),
            }
        }
        v0 += w;
    }
}

/// [`matmul`] over all `m` rows for `V` vectors of columns: tiles of `MR` rows, then the remaining rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows<const F: bool, const MR: usize, const V: usize>(
    m: usize,
    kk: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut i = 0;
    // SAFETY: the caller's bounds hold for rows i..i + R <= m.
    unsafe {
        while i + MR <= m {
            tile::<F, MR, V>(kk, a.add(i * ars), ars, acs, b, ldb, c.add(i * ldc), ldc, acc);
            i += MR;
        }
        let (a, c) = (a.add(i * ars), c.add(i * ldc));
        match m - i {
            0 => {}
            1 => tile::<F, 1, V>(kk, a, ars, acs, b, ldb, c, ldc, acc),
            2 => tile::<F, 2, V>(kk, a, ars, acs, b, ldb, c, ldc, acc),
            3 => tile::<F, 3, V>(kk, a, ars, acs, b, ldb, c, ldc, acc),
            4 => tile::<F, 4, V>(kk, a, ars, acs, b, ldb, c, ldc, acc),
            5 => tile::<F, 5, V>(kk, a, ars, acs, b, ldb, c, ldc, acc),
            _ => unreachable!("row tiles have at most 6 rows"),
        }
    }
}

/// One register tile: `R` rows by `V` vectors of C, accumulated in registers over `kk`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const F: bool, const R: usize, const V: usize>(
    kk: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    let mut t = [[[0f32; L]; V]; R];
    // SAFETY: the caller guarantees R rows of A and C and V vectors of B's and C's rows below kk are in bounds.
    unsafe {
        if acc {
            for (r, tr) in t.iter_mut().enumerate() {
                for (v, tv) in tr.iter_mut().enumerate() {
                    *tv = c.add(r * ldc + v * L).cast::<[f32; L]>().read_unaligned();
                }
            }
        }
        for p in 0..kk {
            let mut bv = [[0f32; L]; V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = b.add(p * ldb + v * L).cast::<[f32; L]>().read_unaligned();
            }
            for (r, tr) in t.iter_mut().enumerate() {
                let x = *a.add(r * ars + p * acs);
                for (tv, bvv) in tr.iter_mut().zip(&bv) {
                    for (y, &z) in tv.iter_mut().zip(bvv) {
                        *y = fma::<F>(x, z, *y);
                    }
                }
            }
        }
        for (r, tr) in t.iter().enumerate() {
            for (v, tv) in tr.iter().enumerate() {
                c.add(r * ldc + v * L).cast::<[f32; L]>().write_unaligned(*tv);
            }
        }
    }
}

/// `2^x` to within about 2 ulp for `-126 <= x <= 126` (0 below, `2^126` above, NaN stays NaN), in operations that
/// vectorise: `x = n + f` with `n` an integer (rounded with the 1.5 * 2^23 trick, which leaves it in the low
/// mantissa bits) and `|f| <= 1/2`, `2^f` by its Taylor series to degree 7 (truncation error below 6e-9), `2^n`
/// built in the exponent bits. Below -126 (and at -inf) the integer part is garbage and the select returns 0.
#[inline(always)]
fn exp2<const F: bool>(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    // (ln 2)^k / k!
    const C: [f32; 8] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
        0.000_015_252_734,
    ];
    let xc = if x > 126.0 { 126.0 } else { x };
    let t = xc + SHIFT;
    let n = t - SHIFT;
    let f = xc - n;
    let mut p = C[7];
    for &ci in C[..7].iter().rev() {
        p = fma::<F>(p, f, ci);
    }
    let e = (t.to_bits().wrapping_sub(SHIFT.to_bits()) as i32).wrapping_add(127) as u32;
    let r = p * f32::from_bits(e << 23);
    if x < -126.0 { 0.0 } else { r }
}

/// Sum of 16 lanes in a fixed order (pairwise).
#[inline(always)]
fn sum_lanes(mut s: [f32; L]) -> f32 {
    let mut w = L / 2;
    while w > 0 {
        for i in 0..w {
            s[i] += s[i + w];
        }
        w /= 2;
    }
    s[0]
}

/// `sum a_i b_i` in f32, 16 lanes then a fixed-order reduction.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            s[l] += x[l] * y[l];
        }
    }
    sum_lanes(s) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::test_util::*;
    use crate::backend::cpu::kernels::{View, run_op};
    use crate::ops::infer;
    use crate::tensor::{DType, numel};

    /// The instruction sets this CPU can run.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    /// `op` on f32 inputs by the fast path with `isa` (`None`: the reference), as f32.
    fn run_with(isa: Option<Isa>, op: &Op, ins: &[(&[usize], &[f32])]) -> Vec<f32> {
        let bytes: Vec<Vec<u8>> = ins.iter().map(|(_, v)| bytes_of(DType::F32, v)).collect();
        let views: Vec<View> = ins.iter().zip(&bytes).map(|((s, _), b)| View { shape: s, dtype: DType::F32, data: b }).collect();
        let shapes: Vec<&[usize]> = ins.iter().map(|i| i.0).collect();
        let (shape, dtype) = infer(op, &shapes, &vec![DType::F32; ins.len()]).unwrap();
        let mut out = vec![0u8; numel(&shape) * 4];
        let ov = View { shape: &shape, dtype, data: &[] };
        match isa {
            Some(isa) => run_isa(isa, op, &views, &ov, &mut out).expect("fast path taken").unwrap(),
            None => run_op(op, &views, &ov, &mut out).unwrap(),
        }
        out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// Every compiled instruction set, forward, statistics and backward, against the reference: odd head
    /// dimension and lengths that are not multiples of the blocks, causal with more queries than keys.
    #[test]
    fn every_instruction_set_matches_the_reference() {
        for (tq, tk, d, causal) in [(70, 83, 20, false), (90, 67, 7, true), (5, 1, 1, false), (1, 130, 33, true)] {
            let (b, h) = (2, 3);
            let (qs, ks) = ([b, tq, h, d], [b, tk, h, d]);
            let q = rand_vals(b * tq * h * d, 1);
            let k = rand_vals(b * tk * h * d, 2);
            let v = rand_vals(b * tk * h * d, 3);
            let dy = rand_vals(b * tq * h * d, 4);
            let scale = 0.3;
            let fwd = Op::Attention { causal, scale };
            let o = run_with(None, &fwd, &[(&qs, &q), (&ks, &k), (&ks, &v)]);
            let st_op = Op::AttentionStats { causal, scale };
            let st = run_with(None, &st_op, &[(&qs, &q), (&ks, &k), (&qs, &o), (&qs, &dy)]);
            let bwd = Op::AttentionBwd { causal, scale };
            let ss = [b, h, 2, tq];
            let cases: [(&Op, Vec<(&[usize], &[f32])>); 3] = [
                (&fwd, vec![(&qs, &q), (&ks, &k), (&ks, &v)]),
                (&st_op, vec![(&qs, &q), (&ks, &k), (&qs, &o), (&qs, &dy)]),
                (&bwd, vec![(&qs, &q), (&ks, &k), (&ks, &v), (&qs, &dy), (&ss, &st)]),
            ];
            for (op, ins) in &cases {
                let want = run_with(None, op, ins);
                for isa in isas() {
                    let got = run_with(Some(isa), op, ins);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{isa:?} {op:?} Tq{tq} Tk{tk} D{d} [{i}]: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// The same bits on 1 and 3 threads (the task partition does not depend on the thread count).
    #[test]
    fn results_do_not_depend_on_thread_count() {
        let (b, tq, tk, h, d) = (1, 300, 260, 2, 24);
        let (qs, ks) = ([b, tq, h, d], [b, tk, h, d]);
        let q = rand_vals(b * tq * h * d, 5);
        let k = rand_vals(b * tk * h * d, 6);
        let v = rand_vals(b * tk * h * d, 7);
        let dy = rand_vals(b * tq * h * d, 8);
        let o = rand_vals(b * tq * h * d, 9);
        let ss = [b, h, 2, tq];
        let st = run_with(None, &Op::AttentionStats { causal: false, scale: 0.2 }, &[(&qs, &q), (&ks, &k), (&qs, &o), (&qs, &dy)]);
        let ops: [(Op, Vec<(&[usize], &[f32])>); 2] = [
            (Op::Attention { causal: false, scale: 0.2 }, vec![(&qs, &q), (&ks, &k), (&ks, &v)]),
            (Op::AttentionBwd { causal: false, scale: 0.2 }, vec![(&qs, &q), (&ks, &k), (&ks, &v), (&qs, &dy), (&ss, &st)]),
        ];
        for (op, ins) in &ops {
            let with = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| run_with(Some(Isa::detect()), op, ins))
            };
            let (one, three) = (with(1), with(3));
            assert!(one.iter().zip(&three).all(|(x, y)| x.to_bits() == y.to_bits()), "{op:?}");
        }
    }

    #[test]
    fn exp2_is_accurate() {
        for isa_fma in [false, true] {
            let mut worst = 0f64;
            for i in 0..200_000 {
                let x = -125.0 + 250.0 * i as f32 / 200_000.0;
                let got = if isa_fma { exp2::<true>(x) } else { exp2::<false>(x) } as f64;
                let want = (x as f64).exp2();
                worst = worst.max((got - want).abs() / want);
            }
            assert!(worst < 3e-7, "relative error {worst}");
        }
        assert_eq!(exp2::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2::<false>(-200.0), 0.0);
        assert_eq!(exp2::<false>(0.0), 1.0);
        assert_eq!(exp2::<false>(-1e30), 0.0);
        assert_eq!(exp2::<false>(1e30), 126f32.exp2());
        assert!(exp2::<false>(f32::NAN).is_nan());
    }
}
