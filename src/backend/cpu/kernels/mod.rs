//! The CPU implementation of every op: the reference the other backends are compared with.
//!
//! Tensors are row-major, contiguous and little-endian. f16/bf16 are storage formats only: values are
//! decoded to f32, computed in f32 (transcendental functions and every accumulation in f64), and encoded
//! back with round-to-nearest-even. Large outputs are split into chunks that rayon runs in parallel;
//! reductions combine their partial results in a fixed order, so every result is deterministic.
//!
//! The code of each op lives with its family, in `ops/<family>/cpu.rs`; this file checks a call and
//! dispatches it ([`run_op`]), and holds what those files share: [`View`], decoding and encoding, the
//! parallel chunking, `walk` (strided iteration), `scratch` (reused buffers) and `fast` (what the fast paths share). `optim` is AdamW and the sum of
//! squares (not graph ops).

pub(crate) mod fast;
mod optim;
mod scratch;
pub(crate) mod walk;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ops::{self as op, Op};
use crate::tensor::{self, DType};

pub use optim::{accumulate, adamw_update, ema_update, sgd_update, sum_squares};
pub(crate) use scratch::{Buf, Floats};

/// A read-only tensor: shape, dtype and its row-major little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub shape: &'a [usize],
    pub dtype: DType,
    pub data: &'a [u8],
}

/// Work (elements times a per-element cost, 1 for a copy or an add) below which an op stays on the calling
/// thread: waking rayon's workers costs about as much as a few hundred thousand cheap element operations.
/// Measured on the 2-core build machine (f32 add, best of 5, machine shared with builds): one fork-join of 2
/// threads cost 1-8 us at 2^10-2^12 elements, 6.6x the serial time at 2^16-2^17, 1.15x at 2^18; compare
/// `RAYON_NUM_THREADS=1 instagen bench exec` with the default on an idle machine before moving it.
const PAR_WORK: usize = 1 << 18;
/// The least work handed to one rayon task.
const TASK_WORK: usize = 1 << 16;

/// Per-element costs for [`par_chunks`]: a copy or add, a few flops, a transcendental function.
pub(crate) const COST_COPY: usize = 1;
pub(crate) const COST_ARITH: usize = 4;
pub(crate) const COST_TRANSCENDENTAL: usize = 16;

pub(crate) fn cpu_err(msg: impl Into<String>) -> Error {
    Error::backend("cpu", msg)
}

/// Number of elements of `shape`, or `None` when the product overflows.
fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn check_bytes(what: &dyn Fn() -> String, shape: &[usize], dtype: DType, len: usize) -> Result<()> {
    let want = checked_numel(shape).and_then(|n| n.checked_mul(dtype.size()));
    if want != Some(len) {
        return Err(cpu_err(format!(
            "{}: {len} bytes for {dtype} shape {shape:?} (want {})",
            what(),
            want.map_or_else(|| "an overflowing size".to_string(), |w| w.to_string())
        )));
    }
    Ok(())
}

/// Which CPU code computes an op: the exact reference, or the fast engine (f32 accumulation, blocked and
/// vectorised, all cores) where an op family has one; ops without a fast path run the reference in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    Exact,
    Fast,
}

/// Compute `op` on inputs `ins` into `out_bytes` with the exact reference code (output shape/dtype in
/// `out.shape`/`out.dtype`; `out.data` is empty). Inputs never alias `out_bytes`. Shapes and dtypes are checked
/// again with [`op::infer`], so a bad call is an error, never a panic.
pub fn run_op(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    run_op_mode(CpuMode::Exact, op, ins, out, out_bytes)
}

/// [`run_op`] with the code `mode` picks.
pub fn run_op_mode(mode: CpuMode, op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    check_views(ins, out, out_bytes)?;
    if !matches!(op, Op::Input { .. } | Op::Param { .. } | Op::Fill { .. }) {
        let shapes: Vec<&[usize]> = ins.iter().map(|v| v.shape).collect();
        let dtypes: Vec<DType> = ins.iter().map(|v| v.dtype).collect();
        let (shape, dtype) = op::infer(op, &shapes, &dtypes)?;
        if shape != out.shape || dtype != out.dtype {
            return Err(cpu_err(format!(
                "{}: output declared as {} {:?}, but the inputs {shapes:?} {dtypes:?} give {dtype} {shape:?}",
                op.describe(),
                out.dtype,
                out.shape
            )));
        }
    }
    dispatch(mode, op, ins, out, out_bytes)
}

/// Errors unless every view's bytes (and the output's) hold its shape and dtype.
fn check_views(ins: &[View], out: &View, out_bytes: &[u8]) -> Result<()> {
    check_bytes(&|| "output".to_string(), out.shape, out.dtype, out_bytes.len())?;
    for (i, v) in ins.iter().enumerate() {
        check_bytes(&|| format!("input {i}"), v.shape, v.dtype, v.data.len())?;
    }
    Ok(())
}

/// [`run_op_mode`] without the shape inference: for callers whose shapes and dtypes already passed
/// [`op::infer`] (a graph's nodes, see `backend::cpu::exec_node`). Byte counts are still checked.
pub(crate) fn run_op_unchecked(mode: CpuMode, op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    check_views(ins, out, out_bytes)?;
    dispatch(mode, op, ins, out, out_bytes)
}

/// Runs `op` on views whose byte counts are checked (and shapes inferred, or known to be right).
fn dispatch(mode: CpuMode, op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::Input { .. } | Op::Param { .. } => {
            return Err(cpu_err(format!("{} has no kernel: the executor supplies its data", op.describe())));
        }
        Op::Fill { value } => {
            if !ins.is_empty() {
                return Err(cpu_err(format!("fill takes no inputs, got {}", ins.len())));
            }
            crate::ops::elementwise::cpu::fill(*value, out.dtype, out_bytes);
            return Ok(());
        }
        _ => {}
    }
    if out_bytes.is_empty() {
        return Ok(());
    }
    if mode == CpuMode::Fast {
        if let Some(done) = op::run_cpu_fast(op, ins, out, out_bytes) {
            return done;
        }
    }
    op::run_cpu(op, ins, out, out_bytes)
}

/// Whether work of this size is worth spreading over rayon's threads.
pub(crate) fn worth_parallel(work: usize) -> bool {
    work >= PAR_WORK && rayon::current_num_threads() > 1
}

/// Runs `f(start, chunk)` over pieces of `out` whose lengths are multiples of `unit` (except possibly the
/// last, when `out.len()` is not one), in parallel when the work (`out.len() * cost`) is large. `start` is the
/// chunk's offset in `out`. How `out` is split never changes what `f` computes for an element.
pub(crate) fn par_chunks_unit<T: Send>(out: &mut [T], unit: usize, cost: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = out.len();
    let unit = unit.max(1);
    let cost = cost.max(1);
    if !worth_parallel(n.saturating_mul(cost)) || n <= unit {
        f(0, out);
        return;
    }
    let want = (TASK_WORK / cost).max(n.div_ceil(rayon::current_num_threads() * 4));
    let chunk = want.div_ceil(unit) * unit;
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i * chunk, c));
}

/// [`par_chunks_unit`] with a unit of one element.
pub(crate) fn par_chunks<T: Send>(out: &mut [T], cost: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    par_chunks_unit(out, 1, cost, f)
}

/// Sum of f32 values in f64, with four independent accumulators (a fixed order, so deterministic).
pub(crate) fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let mut chunks = xs.chunks_exact(4);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Decodes `out.len()` elements of `dtype` from `bytes`, which need not be aligned. f16/bf16 go through
/// `half`'s vectorised slice conversions when the bytes are 2-byte aligned (the same values, faster).
pub(crate) fn decode_into(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len().min(bytes.len() / dtype.size());
    let (bytes, out) = (&bytes[..n * dtype.size()], &mut out[..n]);
    let little = cfg!(target_endian = "little");
    match dtype {
        DType::F32 => {
            // `tensor::decode_f32` casts f32 bytes in place, which requires 4-byte alignment.
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 if little => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(out),
            Err(_) => tensor::decode_f32(dtype, bytes, out),
        },
        DType::BF16 if little => match bytemuck::try_cast_slice::<u8, bf16>(bytes) {
            Ok(h) => h.convert_to_f32_slice(out),
            Err(_) => tensor::decode_f32(dtype, bytes, out),
        },
        _ => tensor::decode_f32(dtype, bytes, out),
    }
}

/// Encodes `vals` as `dtype` into `bytes` (round to nearest even; integers truncate, saturating).
pub(crate) fn encode_into(dtype: DType, vals: &[f32], bytes: &mut [u8]) {
    let n = vals.len().min(bytes.len() / dtype.size());
    let (vals, bytes) = (&vals[..n], &mut bytes[..n * dtype.size()]);
    let little = cfg!(target_endian = "little");
    match dtype {
        DType::F16 if little => match bytemuck::try_cast_slice_mut::<u8, f16>(bytes) {
            Ok(h) => h.convert_from_f32_slice(vals),
            Err(_) => tensor::encode_f32(dtype, vals, bytes),
        },
        DType::BF16 if little => match bytemuck::try_cast_slice_mut::<u8, bf16>(bytes) {
            Ok(h) => h.convert_from_f32_slice(vals),
            Err(_) => tensor::encode_f32(dtype, vals, bytes),
        },
        _ => tensor::encode_f32(dtype, vals, bytes),
    }
}

/// `bytes` (a whole number of `dtype` elements) decoded to f32.
pub(crate) fn decode(dtype: DType, bytes: &[u8]) -> Buf {
    let es = dtype.size();
    let mut v = Buf::new(bytes.len() / es);
    par_chunks(&mut v, COST_COPY, |s, c| decode_into(dtype, &bytes[s * es..(s + c.len()) * es], c));
    v
}

/// Encodes `vals` as `dtype` into `bytes` (which holds exactly `vals.len()` elements).
pub(crate) fn encode(dtype: DType, vals: &[f32], bytes: &mut [u8]) {
    let es = dtype.size();
    par_chunks_unit(bytes, es, COST_COPY, |s, c| {
        let i = s / es;
        encode_into(dtype, &vals[i..i + c.len() / es], c)
    });
}

/// The values of a float tensor as f32: borrowed when it is f32 storage that is 4-byte aligned.
pub(crate) fn floats<'a>(v: &View<'a>) -> Floats<'a> {
    if v.dtype == DType::F32
        && let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(v.data)
    {
        return Floats::Borrowed(s);
    }
    Floats::Decoded(decode(v.dtype, v.data))
}

/// Errors unless every view holds floats (the ops computed in f32).
pub(crate) fn require_float(what: &str, views: &[&View]) -> Result<()> {
    for v in views {
        if !v.dtype.is_float() {
            return Err(cpu_err(format!("{what} needs floating-point tensors, got {}", v.dtype)));
        }
    }
    Ok(())
}

/// Calls `f` with an f32 buffer for the output and stores it as `dtype` in `bytes`: the buffer is `bytes`
/// itself for aligned f32 outputs, else a temporary that is encoded afterwards.
pub(crate) fn with_f32_out(dtype: DType, bytes: &mut [u8], f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    if !dtype.is_float() {
        return Err(cpu_err(format!("cannot store a computed float result as {dtype}")));
    }
    if dtype == DType::F32
        && let Ok(o) = bytemuck::try_cast_slice_mut::<u8, f32>(bytes)
    {
        return f(o);
    }
    let mut v = Buf::new(bytes.len() / dtype.size());
    f(&mut v)?;
    encode(dtype, &v, bytes);
    Ok(())
}

/// Element strides of `shape` when broadcast (numpy style, rank left-padded with 1s) to `out`: size-1 axes
/// that are repeated get stride 0.
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = tensor::strides(shape);
    let pad = out.len().saturating_sub(shape.len());
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { st[i - pad] }).collect()
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::ops::{BinaryOp, ReduceOp, UnaryOp};

    /// An op and its f32 inputs.
    type Case<'a> = (Op, Vec<(&'a [usize], &'a [f32])>);

    /// Runs `op` on f32 inputs whose bytes start one byte into their buffers (so they are misaligned).
    fn run_misaligned(op: &Op, ins: &[(&[usize], &[f32])]) -> Vec<u8> {
        let bufs: Vec<Vec<u8>> = ins
            .iter()
            .map(|(_, v)| {
                let mut b = vec![0u8];
                b.extend(bytes_of(DType::F32, v));
                b
            })
            .collect();
        let views: Vec<View> =
            ins.iter().zip(&bufs).map(|((s, _), b)| View { shape: s, dtype: DType::F32, data: &b[1..] }).collect();
        let shapes: Vec<&[usize]> = ins.iter().map(|i| i.0).collect();
        let (shape, dtype) = op::infer(op, &shapes, &vec![DType::F32; ins.len()]).unwrap();
        let mut out = vec![0u8; tensor::numel(&shape) * dtype.size() + 1];
        run_op(op, &views, &View { shape: &shape, dtype, data: &[] }, &mut out[1..]).unwrap();
        out[1..].to_vec()
    }

    #[test]
    fn misaligned_f32_gives_the_same_bytes() {
        let a = rand_vals(6 * 8, 1);
        let b = rand_vals(8 * 5, 2);
        let w = rand_vals(8, 3);
        let cases: Vec<Case> = vec![
            (Op::Binary(BinaryOp::Mul), vec![(&[6, 8], &a), (&[8], &w)]),
            (Op::MatMul { ta: false, tb: false }, vec![(&[6, 8], &a), (&[8, 5], &b)]),
            (Op::LayerNorm { eps: 1e-5, affine: true }, vec![(&[6, 8], &a), (&[8], &w), (&[8], &w)]),
            (Op::Unary(UnaryOp::Tanh), vec![(&[6, 8], &a)]),
            (Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdim: false }, vec![(&[6, 8], &a)]),
            (Op::Permute { perm: vec![1, 0] }, vec![(&[6, 8], &a)]),
            (Op::Cast { dtype: DType::BF16 }, vec![(&[6, 8], &a)]),
        ];
        for (op, ins) in cases {
            let raw: Vec<Vec<u8>> = ins.iter().map(|(_, v)| bytes_of(DType::F32, v)).collect();
            let r: Vec<(&[usize], DType, &[u8])> =
                ins.iter().zip(&raw).map(|((s, _), b)| (*s, DType::F32, &b[..])).collect();
            let (_, _, aligned) = run_raw(&op, &r);
            assert_eq!(run_misaligned(&op, &ins), aligned, "{op:?}");
        }
    }

    #[test]
    fn bad_calls_are_errors() {
        let x = bytes_of(DType::F32, &[1.0, 2.0, 3.0]);
        let s3: &[usize] = &[3];
        let v = View { shape: s3, dtype: DType::F32, data: &x };
        let out = View { shape: s3, dtype: DType::F32, data: &[] };
        let mut o = vec![0u8; 12];
        assert!(run_op(&Op::Input { name: "x".into() }, &[], &out, &mut o).is_err());
        assert!(run_op(&Op::Param { name: "w".into() }, &[], &out, &mut o).is_err());
        // Wrong byte counts, arity, output shape, dtype.
        let short = View { shape: s3, dtype: DType::F32, data: &x[..8] };
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[short], &out, &mut o).is_err());
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[v], &out, &mut o[..8]).is_err());
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[v, v], &out, &mut o).is_err());
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[], &out, &mut o).is_err());
        let out2 = View { shape: &[1, 3], dtype: DType::F32, data: &[] };
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[v], &out2, &mut o).is_err());
        let iv = View { shape: s3, dtype: DType::I32, data: &x };
        let iout = View { shape: s3, dtype: DType::I32, data: &[] };
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[iv], &iout, &mut o).is_err());
        assert!(run_op(&Op::MatMul { ta: false, tb: false }, &[v, v], &out, &mut o).is_err());
        let huge = [usize::MAX, 2];
        let hv = View { shape: &huge, dtype: DType::F32, data: &x };
        assert!(run_op(&Op::Unary(UnaryOp::Exp), &[hv], &out, &mut o).is_err());
        // A good call still works.
        run_op(&Op::Unary(UnaryOp::Neg), &[v], &out, &mut o).unwrap();
        assert_eq!(o, bytes_of(DType::F32, &[-1.0, -2.0, -3.0]));
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let big: &[usize] = &[300, 700];
        let x = rand_vals(300 * 700, 9);
        let y = rand_vals(700 * 64, 10);
        let ops: Vec<Case> = vec![
            (Op::Reduce { op: ReduceOp::Mean, axes: vec![0, 1], keepdim: false }, vec![(big, &x)]),
            (Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdim: false }, vec![(big, &x)]),
            (Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: false }, vec![(big, &x)]),
            (Op::Softmax { axis: 1 }, vec![(big, &x)]),
            (Op::Unary(UnaryOp::Gelu), vec![(big, &x)]),
            (Op::MatMul { ta: false, tb: false }, vec![(big, &x), (&[700, 64], &y)]),
        ];
        let run_with = |threads: usize, op: &Op, ins: &[(&[usize], &[f32])]| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_f32(op, ins, DType::F32))
        };
        for (op, ins) in &ops {
            let one = run_with(1, op, ins);
            let three = run_with(3, op, ins);
            assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()), "{op:?}");
        }
        let ss = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| sum_squares(&bytes_of(DType::F32, &x), DType::F32))
        };
        assert_eq!(ss(1).to_bits(), ss(3).to_bits());
    }
}
