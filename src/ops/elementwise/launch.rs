//! Launchers for `kernels/elementwise.cu`: Unary, UnaryBwd, Binary (numpy broadcasting), Fill and Cast.
//!
//! Op codes are the `UNARY_*` / `BINARY_*` enums of the `.cu` file; [`unary_code`] and [`binary_code`] give
//! them for an op, and a test parses the `.cu` source so both sides stay in sync.

use bytemuck::{Pod, Zeroable};

use crate::ops::movement::launch::{MAX_DIMS, magic_div, merge_axes, wide_index};
use crate::backend::launch::{Arg, BLOCK, Launch, NodeCtx, grid_for, suffix};
use crate::error::{Error, Result};
use crate::ops::{BinaryOp, Op, UnaryOp};
use crate::tensor::{DType, strides};

const FILE: &str = "elementwise";

/// `(code, p0, p1)` of a unary op: the `UNARY_*` code of kernels/elementwise.cu and its float parameters.
pub(crate) fn unary_code(u: UnaryOp) -> (i32, f32, f32) {
    match u {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Rsqrt => (4, 0.0, 0.0),
        UnaryOp::Recip => (5, 0.0, 0.0),
        UnaryOp::Abs => (6, 0.0, 0.0),
        UnaryOp::Square => (7, 0.0, 0.0),
        UnaryOp::Tanh => (8, 0.0, 0.0),
        UnaryOp::Sigmoid => (9, 0.0, 0.0),
        UnaryOp::Relu => (10, 0.0, 0.0),
        UnaryOp::Gelu => (11, 0.0, 0.0),
        UnaryOp::GeluTanh => (12, 0.0, 0.0),
        UnaryOp::Silu => (13, 0.0, 0.0),
        UnaryOp::Sin => (14, 0.0, 0.0),
        UnaryOp::Cos => (15, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (16, mul, add),
        UnaryOp::Powf(p) => (17, p, 0.0),
        UnaryOp::QuickGelu => (18, 0.0, 0.0),
    }
}

/// The `BINARY_*` code of kernels/elementwise.cu.
pub(crate) fn binary_code(b: BinaryOp) -> i32 {
    match b {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
        BinaryOp::Eq => 6,
        BinaryOp::Gt => 7,
        BinaryOp::Ge => 8,
    }
}

/// Mirror of `BcastShape` in kernels/elementwise.cu (axes innermost first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct BcastShape {
    ndim: i64,
    wide: i64,
    vec: i64,
    pad_: i64,
    shape: [i64; MAX_DIMS],
    sa: [i64; MAX_DIMS],
    sb: [i64; MAX_DIMS],
    magic: [u32; MAX_DIMS],
    shift: [u32; MAX_DIMS],
}

/// Elements per 16-byte pack.
fn pack(d: DType) -> usize {
    16 / d.size()
}

/// Element strides of `shape` broadcast (rank left-padded) to `out`: 0 on repeated axes.
fn bcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let st = strides(shape);
    let pad = out.len().saturating_sub(shape.len());
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { st[i - pad] as i64 }).collect()
}

/// The broadcast description of `a op b -> out` for `dtype`, or an error when it needs too many axes.
fn bcast_shape(a: &[usize], b: &[usize], out: &[usize], dtype: DType) -> std::result::Result<BcastShape, String> {
    let (sa, sb) = (bcast_strides(a, out), bcast_strides(b, out));
    let (dims, [sa, sb], _) = merge_axes(out, [&sa, &sb], None);
    let nd = dims.len();
    if nd > MAX_DIMS {
        return Err(format!("{nd} axes after merging (the kernel takes {MAX_DIMS})"));
    }
    let n: usize = dims.iter().product();
    let v = pack(dtype);
    let inner_ok = matches!(sa[nd - 1], 0 | 1) && matches!(sb[nd - 1], 0 | 1);
    let vec = if inner_ok && (nd == 1 || dims[nd - 1] % v == 0) { v } else { 1 };
    let mut s = BcastShape {
        ndim: nd as i64,
        wide: wide_index(n) as i64,
        vec: vec as i64,
        pad_: 0,
        shape: [1; MAX_DIMS],
        sa: [0; MAX_DIMS],
        sb: [0; MAX_DIMS],
        magic: [0; MAX_DIMS],
        shift: [0; MAX_DIMS],
    };
    for j in 0..nd {
        let i = nd - 1 - j; // innermost first
        s.shape[j] = dims[i] as i64;
        s.sa[j] = sa[i];
        s.sb[j] = sb[i];
        (s.magic[j], s.shift[j]) = magic_div(dims[i] as u64);
    }
    Ok(s)
}

fn err(ctx: &NodeCtx, msg: impl std::fmt::Display) -> Error {
    Error::backend("kernels", format!("node {} ({}): {msg}", ctx.id.0, ctx.node.op.describe()))
}

fn launch(kernel: String, threads: usize, args: Vec<Arg>) -> Launch {
    Launch { file: FILE, kernel, grid: grid_for(threads), block: [BLOCK, 1, 1], smem: 0, args }
}

pub fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
    let dt = ctx.node.dtype;
    let n = ctx.node.numel();
    let arity = ctx.node.op.arity();
    if !arity.accepts(ctx.inputs.len()) || ctx.ins.len() != ctx.inputs.len() {
        return Err(err(
            ctx,
            format!("expects {arity} inputs, got {} ({} locations)", ctx.inputs.len(), ctx.ins.len()),
        ));
    }
    let floating = |ds: &[DType]| ds.iter().all(|d| d.is_float() && *d == dt);
    if n == 0 {
        return Ok(Some(vec![]));
    }
    let sfx = suffix(dt);
    let l = match ctx.node.op {
        Op::Unary(u) => {
            if !floating(&[ctx.inputs[0].dtype]) {
                return Ok(None);
            }
            let (code, p0, p1) = unary_code(u);
            let args = vec![
                Arg::Ptr(ctx.ins[0]),
                Arg::Ptr(ctx.out),
                Arg::I32(code),
                Arg::F32(p0),
                Arg::F32(p1),
                Arg::I64(n as i64),
            ];
            launch(format!("unary_fwd_{sfx}"), n.div_ceil(pack(dt)), args)
        }
        Op::UnaryBwd(u) => {
            if !floating(&[ctx.inputs[0].dtype, ctx.inputs[1].dtype]) {
                return Ok(None);
            }
            if ctx.inputs[0].shape != ctx.node.shape || ctx.inputs[1].shape != ctx.node.shape {
                return Err(err(ctx, "x, dy and dx must have one shape"));
            }
            let (code, p0, p1) = unary_code(u);
            let (x, dy) = (ctx.ins[0], ctx.ins[1]);
            let args = vec![
                Arg::Ptr(x),
                Arg::Ptr(dy),
                Arg::Ptr(ctx.out),
                Arg::I32(code),
                Arg::F32(p0),
                Arg::F32(p1),
                Arg::I64(n as i64),
            ];
            launch(format!("unary_bwd_{sfx}"), n.div_ceil(pack(dt)), args)
        }
        Op::Binary(b) => {
            if !floating(&[ctx.inputs[0].dtype, ctx.inputs[1].dtype]) {
                return Ok(None);
            }
            let s = bcast_shape(&ctx.inputs[0].shape, &ctx.inputs[1].shape, &ctx.node.shape, dt)
                .map_err(|m| err(ctx, m))?;
            let threads = n.div_ceil(s.vec as usize);
            let args = vec![
                Arg::Ptr(ctx.ins[0]),
                Arg::Ptr(ctx.ins[1]),
                Arg::Ptr(ctx.out),
                Arg::I32(binary_code(b)),
                Arg::Bytes(bytemuck::bytes_of(&s).to_vec()),
                Arg::I64(n as i64),
            ];
            launch(format!("binary_fwd_{sfx}"), threads, args)
        }
        Op::Fill { value } => launch(
            format!("fill_{sfx}"),
            n.div_ceil(pack(dt)),
            vec![Arg::Ptr(ctx.out), Arg::F32(value), Arg::I64(n as i64)],
        ),
        Op::Cast { dtype } => {
            let src = ctx.inputs[0].dtype;
            if dtype != dt || ctx.inputs[0].numel() != n {
                return Err(err(
                    ctx,
                    format!("casts {src} {:?} to {dtype}, output {dt} {:?}", ctx.inputs[0].shape, ctx.node.shape),
                ));
            }
            let args = vec![Arg::Ptr(ctx.ins[0]), Arg::Ptr(ctx.out), Arg::I64(n as i64)];
            launch(format!("cast_{}_{}", suffix(src), sfx), n.div_ceil(4), args)
        }
        _ => return Ok(None),
    };
    Ok(Some(vec![l]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = include_str!("../../../kernels/elementwise.cu");

    /// `NAME = value` entries of `enum <name> { ... }` in the `.cu` source.
    fn cu_enum(name: &str) -> Vec<(String, i32)> {
        let start = SOURCE.find(&format!("enum {name} {{")).expect("enum in elementwise.cu");
        let body = &SOURCE[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
        body.lines()
            .map(|l| l.split("//").next().unwrap().trim().trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("explicit values");
                (k.trim().to_string(), v.trim().parse().expect("integer"))
            })
            .collect()
    }

    /// `GeluTanh` -> `GELU_TANH`.
    fn screaming(name: &str) -> String {
        let mut s = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_uppercase());
        }
        s
    }

    #[test]
    fn op_codes_match_the_cu_source() {
        let unary = UnaryOp::EXAMPLES;
        let cu = cu_enum("UnaryCode");
        assert_eq!(cu.len(), unary.len(), "{cu:?}");
        for u in unary {
            let name = format!("UNARY_{}", screaming(format!("{u:?}").split([' ', '(']).next().unwrap()));
            let want = cu.iter().find(|(k, _)| *k == name).unwrap_or_else(|| panic!("{name} not in the .cu enum"));
            assert_eq!(unary_code(u).0, want.1, "{name}");
        }
        assert_eq!(unary_code(UnaryOp::Affine { mul: 2.0, add: 3.0 }), (16, 2.0, 3.0));
        assert_eq!(unary_code(UnaryOp::Powf(1.5)).1, 1.5);
        let binary = [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
            BinaryOp::Eq,
            BinaryOp::Gt,
            BinaryOp::Ge,
        ];
        let cu = cu_enum("BinaryCode");
        assert_eq!(cu.len(), binary.len(), "{cu:?}");
        for b in binary {
            let name = format!("BINARY_{}", screaming(&format!("{b:?}")));
            let want = cu.iter().find(|(k, _)| *k == name).unwrap_or_else(|| panic!("{name} not in the .cu enum"));
            assert_eq!(binary_code(b), want.1, "{name}");
        }
    }

    #[test]
    fn broadcast_shapes_merge_and_pick_packs() {
        // Bias add [8192, 1280] + [1280]: two axes, packed (1280 % 8 == 0), b repeats along the outer axis.
        let s = bcast_shape(&[8192, 1280], &[1280], &[8192, 1280], DType::F16).unwrap();
        assert_eq!((s.ndim, s.vec), (2, 8));
        assert_eq!((&s.shape[..2], &s.sa[..2], &s.sb[..2]), (&[1280, 8192][..], &[1, 1280][..], &[1, 0][..]));
        // Same shape: one axis, packed even when n is not a multiple of the pack.
        let s = bcast_shape(&[3, 37], &[3, 37], &[3, 37], DType::F32).unwrap();
        assert_eq!((s.ndim, s.vec, s.shape[0]), (1, 4, 111));
        // [37, 1] vs [1, 29]: an outer product, one element per step.
        let s = bcast_shape(&[37, 1], &[1, 29], &[37, 29], DType::F32).unwrap();
        assert_eq!((s.ndim, s.vec), (2, 1));
        assert_eq!((&s.sa[..2], &s.sb[..2]), (&[0, 1][..], &[1, 0][..]));
        // A scalar-shaped operand.
        let s = bcast_shape(&[5, 67], &[1], &[5, 67], DType::BF16).unwrap();
        assert_eq!((s.ndim, s.vec, s.sb[0]), (1, 8, 0));
        // Too many axes after merging.
        let a = [2, 1, 2, 1, 2, 1, 2, 1, 2, 1];
        let b = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2];
        assert!(bcast_shape(&a, &b, &[2; 10], DType::F32).is_err());
    }
}
