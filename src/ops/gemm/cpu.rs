//! `MatMul`: batched `op(a) @ op(b)` with numpy-broadcast batch axes, through the `gemm` crate in f32.
//!
//! Transposes cost nothing: they only swap the row and column strides handed to `gemm`. f16/bf16 operands
//! are decoded to f32 first and the result is rounded once at the end.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::backend::cpu::kernels::{View, broadcast_strides, cpu_err, floats, require_float, with_f32_out, worth_parallel};
use crate::ops::Op;
use crate::error::Result;
use crate::tensor::numel;

/// Products with fewer multiply-adds than this run on one thread inside `gemm`.
const GEMM_PAR_MIN: usize = 1 << 18;

/// A matrix operand: its values, where it starts, and its row and column strides in elements.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// Checks that every element of a `rows x cols` matrix lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| (cols - 1).checked_mul(self.cs).and_then(|c| r.checked_add(c)))
            .and_then(|l| l.checked_add(self.offset));
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// `dst = lhs @ rhs` for an `m x k` lhs and `k x n` rhs; `dst` is `m x n`, row-major and contiguous.
/// `allow_par` lets `gemm` use rayon threads for a large product.
fn gemm_into(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: Mat, rhs: Mat, allow_par: bool) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if dst.len() != m * n || !lhs.fits(m, k) || !rhs.fits(k, n) {
        return Err(cpu_err(format!("matmul: operand buffers too small for a {m}x{k} @ {k}x{n} product")));
    }
    if k == 0 {
        dst.fill(0.0);
        return Ok(());
    }
    let work = m.saturating_mul(n).saturating_mul(k);
    let par = if allow_par && work >= GEMM_PAR_MIN && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: `dst` holds exactly m*n elements written with row stride n and column stride 1, and `fits`
    // checked that every element read from `lhs` and `rhs` (at offset + i*rs + j*cs) is inside its slice.
    // `dst` is a unique borrow, so it aliases neither operand. With `read_dst == false`, gemm computes
    // dst = beta * lhs @ rhs (alpha is ignored), here with beta = 1.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// Offsets (in matrices) of the a and b operands of each output batch entry.
fn batch_offsets(a_batch: &[usize], b_batch: &[usize], out_batch: &[usize]) -> Vec<(usize, usize)> {
    let sa = broadcast_strides(a_batch, out_batch);
    let sb = broadcast_strides(b_batch, out_batch);
    let nb = numel(out_batch);
    let mut res = Vec::with_capacity(nb);
    let mut idx = vec![0usize; out_batch.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    for _ in 0..nb {
        res.push((oa, ob));
        for d in (0..out_batch.len()).rev() {
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < out_batch[d] {
                break;
            }
            idx[d] = 0;
            oa -= sa[d] * out_batch[d];
            ob -= sb[d] * out_batch[d];
        }
    }
    res
}

pub(super) fn matmul(ta: bool, tb: bool, a: &View, b: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    require_float("matmul", &[a, b, out])?;
    let (ash, bsh, osh) = (a.shape, b.shape, out.shape);
    if ash.len() < 2 || bsh.len() < 2 || osh.len() < 2 {
        return Err(cpu_err(format!("matmul needs rank >= 2, got {ash:?} x {bsh:?}")));
    }
    let (ra, rb) = (ash.len(), bsh.len());
    let (m, k) = if ta { (ash[ra - 1], ash[ra - 2]) } else { (ash[ra - 2], ash[ra - 1]) };
    let n = if tb { bsh[rb - 2] } else { bsh[rb - 1] };
    let (a_batch, b_batch, o_batch) = (&ash[..ra - 2], &bsh[..rb - 2], &osh[..osh.len() - 2]);
    let xa = floats(a);
    let xb = floats(b);
    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
    let nb = numel(o_batch);
    let mat_a = |off: usize| Mat { data: &xa, offset: off * m * k, rs: a_rs, cs: a_cs };
    let mat_b = |off: usize| Mat { data: &xb, offset: off * k * n, rs: b_rs, cs: b_cs };
    with_f32_out(out.dtype, out_bytes, |o| {
        if nb == 1 {
            return gemm_into(m, n, k, o, mat_a(0), mat_b(0), true);
        }
        if !ta && numel(b_batch) == 1 && numel(a_batch) == nb {
            // [.., M, K] x [K, N]: one product with all the batch rows stacked.
            return gemm_into(nb * m, n, k, o, mat_a(0), mat_b(0), true);
        }
        let offs = batch_offsets(a_batch, b_batch, o_batch);
        let per = m * n;
        if per == 0 {
            return Ok(());
        }
        let work = m.saturating_mul(n).saturating_mul(k);
        // Large products are parallel inside gemm; many small ones are parallel over the batch.
        if work >= GEMM_PAR_MIN * 4 || !worth_parallel(work.saturating_mul(nb)) {
            for (dst, &(oa, ob)) in o.chunks_mut(per).zip(&offs) {
                gemm_into(m, n, k, dst, mat_a(oa), mat_b(ob), true)?;
            }
            Ok(())
        } else {
            o.par_chunks_mut(per)
                .zip(offs.par_iter())
                .try_for_each(|(dst, &(oa, ob))| gemm_into(m, n, k, dst, mat_a(oa), mat_b(ob), false))
        }
    })
}


/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::MatMul { ta, tb } => matmul(*ta, *tb, &ins[0], &ins[1], out, out_bytes),
        _ => Err(cpu_err(format!("{} is not a gemm op", op.describe()))),
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::kernels::test_util::*;
    use crate::ops::Op;
    use crate::tensor::{DType, numel, strides};

    /// Naive batched matmul with broadcast batch axes, in f64.
    fn naive(ta: bool, tb: bool, ash: &[usize], a: &[f32], bsh: &[usize], b: &[f32], osh: &[usize]) -> Vec<f32> {
        let (ra, ro) = (ash.len(), osh.len());
        let (m, n) = (osh[ro - 2], osh[ro - 1]);
        let k = if ta { ash[ra - 2] } else { ash[ra - 1] };
        let ob = &osh[..ro - 2];
        let ost = strides(ob);
        let mut out = vec![0f32; numel(osh)];
        for bi in 0..numel(ob) {
            let idx: Vec<usize> = ob.iter().zip(&ost).map(|(d, s)| (bi / s) % d).collect();
            let base = |sh: &[usize]| {
                let bs = &sh[..sh.len() - 2];
                let pad = ob.len() - bs.len();
                let mut off = 0;
                for (i, &d) in bs.iter().enumerate() {
                    off = off * d + if d == 1 { 0 } else { idx[i + pad] };
                }
                off * sh[sh.len() - 2] * sh[sh.len() - 1]
            };
            let (ba, bb) = (base(ash), base(bsh));
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f64;
                    for p in 0..k {
                        let av = if ta { a[ba + p * m + i] } else { a[ba + i * k + p] };
                        let bv = if tb { b[bb + j * k + p] } else { b[bb + p * n + j] };
                        acc += av as f64 * bv as f64;
                    }
                    out[bi * m * n + i * n + j] = acc as f32;
                }
            }
        }
        out
    }

    fn check(ash: &[usize], bsh: &[usize], dtype: DType, seed: u64) {
        for ta in [false, true] {
            for tb in [false, true] {
                let mut ash = ash.to_vec();
                let mut bsh = bsh.to_vec();
                let (la, lb) = (ash.len(), bsh.len());
                if ta {
                    ash.swap(la - 1, la - 2);
                }
                if tb {
                    bsh.swap(lb - 1, lb - 2);
                }
                let a = round_to(dtype, &rand_vals(numel(&ash), seed));
                let b = round_to(dtype, &rand_vals(numel(&bsh), seed + 1));
                let op = Op::MatMul { ta, tb };
                let (osh, _) = crate::ops::infer(&op, &[&ash, &bsh], &[dtype, dtype]).unwrap();
                let got = run_f32(&op, &[(&ash, &a), (&bsh, &b)], dtype);
                let want = round_to(dtype, &naive(ta, tb, &ash, &a, &bsh, &b, &osh));
                let k = if ta { ash[la - 2] } else { ash[la - 1] };
                let tol = match dtype {
                    DType::F32 => 1e-5 * (k as f32).sqrt(),
                    _ => 1e-2,
                };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= tol * w.abs().max(1.0),
                        "{ash:?} x {bsh:?} ta={ta} tb={tb} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_all_transposes_and_broadcasts() {
        check(&[5, 7], &[7, 3], DType::F32, 1);
        check(&[2, 6, 4], &[4, 5], DType::F32, 2);
        check(&[4, 6], &[3, 6, 5], DType::F32, 3);
        check(&[2, 3, 6, 4], &[2, 3, 4, 6], DType::F32, 4);
        check(&[2, 1, 5, 4], &[3, 4, 6], DType::F32, 5);
        check(&[1, 3, 5, 4], &[2, 1, 4, 2], DType::F32, 6);
        check(&[3, 70, 90], &[3, 90, 80], DType::F32, 7);
        check(&[2, 130, 200], &[200, 150], DType::F32, 8);
        check(&[2, 1, 6, 4], &[3, 4, 5], DType::F16, 9);
        check(&[2, 3, 9, 8], &[2, 3, 8, 9], DType::BF16, 10);
    }

    #[test]
    fn matmul_empty_inner_gives_zeros() {
        let op = Op::MatMul { ta: false, tb: false };
        let got = run_f32(&op, &[(&[2, 0], &[]), (&[0, 3], &[])], DType::F32);
        assert_eq!(got, vec![0.0; 6]);
    }
}
