//! Dropout from a counter-based RNG (`kernels/dropout.cu`): `Op::Dropout { p }` on inputs `(x, key)`, key an
//! i64 `[2]` tensor (seed, step) fed at run time, so one graph draws a fresh mask every step. Element `i` is
//! kept when `mask_keep(seed, step, i, p)` (a SplitMix64-style hash of the three, compared as a 24-bit integer),
//! and scaled by `1 / (1 - p)`: a pure function of (seed, step, i), so the CPU reference and the kernel give the
//! same mask and emulated parity is exact. The gradient is the same op on `dy` with the same key.

pub mod cpu;
pub mod launch;
pub mod parity;

use super::{Op, require_float};
use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

/// Weyl increment of SplitMix64 (2^64 / golden ratio).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijection of u64 whose output bits all depend on every input bit.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-(seed, step) stream key.
pub const fn stream_key(seed: u64, step: u64) -> u64 {
    mix64(mix64(seed.wrapping_add(GOLDEN)) ^ step)
}

/// 24 random bits for element `i` of the stream `key` (kernels/dropout.cu computes the same).
pub const fn draw24(key: u64, i: u64) -> u32 {
    (mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN))) >> 40) as u32
}

/// Elements whose 24-bit draw is below this are dropped: `round(p * 2^24)`.
pub fn threshold(p: f32) -> u32 {
    (p as f64 * (1u64 << 24) as f64).round() as u32
}

/// The factor applied to kept elements, `1 / (1 - p)` rounded to f32 once.
pub fn keep_scale(p: f32) -> f32 {
    (1.0 / (1.0 - p as f64)) as f32
}

/// Shape and dtype of one of this family's ops (the arity is already checked by [`super::infer`]).
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let Op::Dropout { p } = op else { return super::err(op, "not a dropout op".into()) };
    if !(p.is_finite() && (0.0..1.0).contains(p)) {
        return super::err(op, format!("p must be in [0, 1), got {p}"));
    }
    require_float(op, &dtypes[..1])?;
    if dtypes[1] != DType::I64 || shapes[1] != [2] {
        return super::err(op, format!("key must be i64 [2] (seed, step), got {} {:?}", dtypes[1], shapes[1]));
    }
    Ok((shapes[0].to_vec(), dtypes[0]))
}

/// Gradients of the inputs `ins` of node `id` (this family's `op`) given the gradient `dy` of its output:
/// `dx = dy * mask / (1 - p)`, which is the same op applied to `dy` with the same key. The key gets none.
pub fn backward(g: &mut Graph, op: &Op, _id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let dx = if needs[0] { Some(g.push(op.clone(), &[dy, ins[1]])?) } else { None };
    Ok(vec![dx, None])
}
