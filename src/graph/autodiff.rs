//! Reverse-mode automatic differentiation: extends a graph with the nodes of its backward pass, so forward
//! and backward are planned and run as one graph.

use super::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use super::{Graph, NodeId};
use crate::error::{Error, Result};

/// Add the gradient of scalar `loss` with respect to each of `wrt` to the graph. A node that `loss` does not
/// depend on gets a zero gradient. Gradients have the shape and dtype of the node they belong to.
pub fn backward(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>> {
    if g.node(loss).numel() != 1 {
        return Err(Error::graph("backward", format!("loss must have one element, has shape {:?}", g.shape(loss))));
    }
    let n = loss.0 + 1;
    // Nodes on a path from some `wrt` to the loss.
    let mut from_wrt = vec![false; n];
    for w in wrt {
        if w.0 < n {
            from_wrt[w.0] = true;
        }
    }
    for i in 0..n {
        if !from_wrt[i] && g.nodes()[i].inputs.iter().any(|x| from_wrt[x.0]) {
            from_wrt[i] = true;
        }
    }
    let mut grads: Vec<Option<NodeId>> = vec![None; n];
    let (ls, ld) = (g.shape(loss).to_vec(), g.dtype(loss));
    grads[loss.0] = Some(g.fill(1.0, &ls, ld));
    for i in (0..n).rev() {
        let Some(dy) = grads[i] else { continue };
        if !from_wrt[i] {
            continue;
        }
        let node = g.node(NodeId(i)).clone();
        let needs: Vec<bool> = node.inputs.iter().map(|x| from_wrt[x.0]).collect();
        let dins = input_grads(g, NodeId(i), dy, &needs)?;
        for ((inp, need), d) in node.inputs.iter().zip(&needs).zip(dins) {
            if let (true, Some(d)) = (need, d) {
                grads[inp.0] = Some(match grads[inp.0] {
                    Some(acc) => g.add(acc, d)?,
                    None => d,
                });
            }
        }
    }
    wrt.iter()
        .map(|w| match grads.get(w.0).copied().flatten() {
            Some(d) => Ok(d),
            None => {
                let (s, d) = (g.shape(*w).to_vec(), g.dtype(*w));
                Ok(g.fill(0.0, &s, d))
            }
        })
        .collect()
}

/// Gradients of every parameter of the graph w.r.t. `loss`, as (name, node); the loss and the gradients are
/// marked as outputs so they survive the run.
pub fn param_grads(g: &mut Graph, loss: NodeId) -> Result<Vec<(String, NodeId)>> {
    let params: Vec<(NodeId, String)> = g.params().into_iter().map(|(id, n)| (id, n.to_string())).collect();
    let ids: Vec<NodeId> = params.iter().map(|p| p.0).collect();
    let gs = backward(g, loss, &ids)?;
    g.mark_output(loss);
    for d in &gs {
        g.mark_output(*d);
    }
    Ok(params.into_iter().map(|p| p.1).zip(gs).collect())
}

/// Sum `grad` (shaped like a broadcast result) down to `shape`: the gradient of a broadcast.
pub fn sum_to_shape(g: &mut Graph, grad: NodeId, shape: &[usize]) -> Result<NodeId> {
    let gs = g.shape(grad).to_vec();
    if gs == shape {
        return Ok(grad);
    }
    let pad = gs.len() - shape.len().min(gs.len());
    let axes: Vec<usize> = (0..gs.len()).filter(|&a| a < pad || (shape[a - pad] == 1 && gs[a] != 1)).collect();
    let summed = if axes.is_empty() { grad } else { g.sum(grad, &axes, true)? };
    g.reshape(summed, shape)
}

/// Gradients of node `id`'s inputs given the gradient `dy` of its output (`None` where not needed).
fn input_grads(g: &mut Graph, id: NodeId, dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
    let node = g.node(id).clone();
    let ins = node.inputs.clone();
    let shape_of = |g: &Graph, i: usize| g.shape(ins[i]).to_vec();
    let out: Vec<Option<NodeId>> = match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Fill { .. } => vec![],
        Op::Unary(u) => vec![Some(match u {
            UnaryOp::Neg => g.unary(UnaryOp::Neg, dy)?,
            UnaryOp::Affine { mul, .. } => g.scale(dy, *mul)?,
            _ => g.push(Op::UnaryBwd(*u), &[ins[0], dy])?,
        })],
        Op::Binary(b) => {
            let (a, bb) = (ins[0], ins[1]);
            let (sa, sb) = (shape_of(g, 0), shape_of(g, 1));
            let (da, db) = match b {
                BinaryOp::Add => (dy, dy),
                BinaryOp::Sub => (dy, g.unary(UnaryOp::Neg, dy)?),
                BinaryOp::Mul => (g.mul(dy, bb)?, g.mul(dy, a)?),
                BinaryOp::Div => {
                    let da = g.div(dy, bb)?;
                    // d(a/b)/db = -a/b^2 = -(a/b)/b, with a/b the forward output.
                    let t = g.div(id, bb)?;
                    let t = g.mul(dy, t)?;
                    (da, g.unary(UnaryOp::Neg, t)?)
                }
                BinaryOp::Max | BinaryOp::Min => {
                    // Ties go to `a`.
                    let (ma, mb) = if *b == BinaryOp::Max {
                        (g.binary(BinaryOp::Ge, a, bb)?, g.binary(BinaryOp::Gt, bb, a)?)
                    } else {
                        (g.binary(BinaryOp::Ge, bb, a)?, g.binary(BinaryOp::Gt, a, bb)?)
                    };
                    (g.mul(dy, ma)?, g.mul(dy, mb)?)
                }
                BinaryOp::Eq | BinaryOp::Gt | BinaryOp::Ge => return Ok(vec![None, None]),
            };
            let da = if needs[0] { Some(sum_to_shape(g, da, &sa)?) } else { None };
            let db = if needs[1] { Some(sum_to_shape(g, db, &sb)?) } else { None };
            vec![da, db]
        }
        Op::Reduce { op, axes, keepdim } => {
            let xs = shape_of(g, 0);
            let mut kept = xs.clone();
            for &a in axes {
                kept[a] = 1;
            }
            let dyk = if *keepdim { dy } else { g.reshape(dy, &kept)? };
            let dx = match op {
                ReduceOp::Sum => g.broadcast_to(dyk, &xs)?,
                ReduceOp::Mean => {
                    let count: usize = axes.iter().map(|&a| xs[a]).product();
                    let s = g.scale(dyk, 1.0 / count.max(1) as f32)?;
                    g.broadcast_to(s, &xs)?
                }
                ReduceOp::Max => {
                    // Split the gradient evenly among the maxima (PyTorch's amax rule).
                    let m = if *keepdim { id } else { g.reshape(id, &kept)? };
                    let mask = g.binary(BinaryOp::Eq, ins[0], m)?;
                    let count = g.sum(mask, axes, true)?;
                    let share = g.div(dyk, count)?;
                    g.mul(mask, share)?
                }
            };
            vec![Some(dx)]
        }
        Op::MatMul { ta, tb } => {
            let (a, b) = (ins[0], ins[1]);
            let (da, db) = match (ta, tb) {
                (false, false) => (g.matmul_t(dy, b, false, true)?, g.matmul_t(a, dy, true, false)?),
                (false, true) => (g.matmul_t(dy, b, false, false)?, g.matmul_t(dy, a, true, false)?),
                (true, false) => (g.matmul_t(b, dy, false, true)?, g.matmul_t(a, dy, false, false)?),
                (true, true) => (g.matmul_t(b, dy, true, true)?, g.matmul_t(dy, a, true, true)?),
            };
            let (sa, sb) = (shape_of(g, 0), shape_of(g, 1));
            vec![Some(sum_to_shape(g, da, &sa)?), Some(sum_to_shape(g, db, &sb)?)]
        }
        Op::Softmax { axis } => vec![Some(g.push(Op::SoftmaxBwd { axis: *axis }, &[id, dy])?)],
        Op::LayerNorm { eps, affine } => {
            if !affine {
                vec![Some(g.push(Op::LayerNormBwd { eps: *eps, affine: false }, &[ins[0], dy])?)]
            } else {
                let dx = g.push(Op::LayerNormBwd { eps: *eps, affine: true }, &[ins[0], ins[1], dy])?;
                let xs = shape_of(g, 0);
                let lead: Vec<usize> = (0..xs.len() - 1).collect();
                let (dw, db) = if needs[1] || needs[2] {
                    let xhat = g.layer_norm(ins[0], None, *eps)?;
                    let t = g.mul(dy, xhat)?;
                    let dw = if lead.is_empty() { t } else { g.sum(t, &lead, false)? };
                    let db = if lead.is_empty() { dy } else { g.sum(dy, &lead, false)? };
                    (Some(dw), Some(db))
                } else {
                    (None, None)
                };
                vec![Some(dx), dw, db]
            }
        }
        Op::Reshape { .. } => {
            let s = shape_of(g, 0);
            vec![Some(g.reshape(dy, &s)?)]
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.permute(dy, &inv)?)]
        }
        Op::BroadcastTo { .. } => {
            let s = shape_of(g, 0);
            vec![Some(sum_to_shape(g, dy, &s)?)]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut v = Vec::with_capacity(ins.len());
            for i in 0..ins.len() {
                let len = g.shape(ins[i])[*axis];
                v.push(if needs[i] { Some(g.slice(dy, *axis, start, start + len)?) } else { None });
                start += len;
            }
            v
        }
        Op::Slice { axis, start, end } => {
            let dim = g.shape(ins[0])[*axis];
            vec![Some(g.pad(dy, *axis, *start, dim - end)?)]
        }
        Op::Pad { axis, before, .. } => {
            let dim = g.shape(ins[0])[*axis];
            vec![Some(g.slice(dy, *axis, *before, before + dim)?)]
        }
        Op::Cast { .. } => {
            let d = g.dtype(ins[0]);
            if !d.is_float() {
                return Ok(vec![None]);
            }
            vec![Some(g.cast(dy, d)?)]
        }
        Op::Conv2d { stride, padding, bias } => {
            let (x, w) = (ins[0], ins[1]);
            let (xs, ws) = (shape_of(g, 0), shape_of(g, 1));
            let (stride, padding) = (*stride, *padding);
            let dx = if needs[0] {
                Some(g.push(Op::Conv2dBwdData { stride, padding, h: xs[1], w: xs[2] }, &[dy, w])?)
            } else {
                None
            };
            let dw = if needs[1] {
                Some(g.push(Op::Conv2dBwdWeight { stride, padding, kh: ws[2], kw: ws[3] }, &[x, dy])?)
            } else {
                None
            };
            let mut v = vec![dx, dw];
            if *bias {
                v.push(if needs[2] { Some(g.sum(dy, &[0, 1, 2], false)?) } else { None });
            }
            v
        }
        // Both backward ops are linear in each input, so their gradients are convolutions again.
        Op::Conv2dBwdData { stride, padding, .. } => {
            // dx = BwdData(dy, w): d dy = Conv2d(G, w), d w = BwdWeight(G, dy).
            let (dyin, w) = (ins[0], ins[1]);
            let ws = shape_of(g, 1);
            let (stride, padding) = (*stride, *padding);
            let a = if needs[0] { Some(g.push(Op::Conv2d { stride, padding, bias: false }, &[dy, w])?) } else { None };
            let b = if needs[1] {
                Some(g.push(Op::Conv2dBwdWeight { stride, padding, kh: ws[2], kw: ws[3] }, &[dy, dyin])?)
            } else {
                None
            };
            vec![a, b]
        }
        Op::Conv2dBwdWeight { stride, padding, .. } => {
            // dw = BwdWeight(x, dy): d x = BwdData(dy, G), d dy = Conv2d(x, G).
            let (x, dyin) = (ins[0], ins[1]);
            let xs = shape_of(g, 0);
            let (stride, padding) = (*stride, *padding);
            let a = if needs[0] {
                Some(g.push(Op::Conv2dBwdData { stride, padding, h: xs[1], w: xs[2] }, &[dyin, dy])?)
            } else {
                None
            };
            let b = if needs[1] { Some(g.push(Op::Conv2d { stride, padding, bias: false }, &[x, dy])?) } else { None };
            vec![a, b]
        }
        Op::GroupNorm { groups, eps, silu } => {
            let (groups, eps, silu) = (*groups, *eps, *silu);
            let (x, w, b) = (ins[0], ins[1], ins[2]);
            let dx = if needs[0] { Some(g.push(Op::GroupNormBwd { groups, eps, silu }, &[x, w, b, dy])?) } else { None };
            let (dw, db) = if needs[1] || needs[2] {
                // xhat = GroupNorm(x, 1, 0); gz = dy * silu'(xhat * w + b) (or dy);
                // dweight = sum(gz * xhat), dbias = sum(gz) over every axis but the channels.
                let xs = shape_of(g, 0);
                let c = xs[xs.len() - 1];
                let dt = g.dtype(x);
                let ones = g.fill(1.0, &[c], dt);
                let zeros = g.fill(0.0, &[c], dt);
                let xhat = g.push(Op::GroupNorm { groups, eps, silu: false }, &[x, ones, zeros])?;
                let gz = if silu {
                    let z = g.mul(xhat, w)?;
                    let z = g.add(z, b)?;
                    g.push(Op::UnaryBwd(UnaryOp::Silu), &[z, dy])?
                } else {
                    dy
                };
                let lead: Vec<usize> = (0..xs.len() - 1).collect();
                let t = g.mul(gz, xhat)?;
                let dw = if needs[1] { Some(g.sum(t, &lead, false)?) } else { None };
                let db = if needs[2] { Some(g.sum(gz, &lead, false)?) } else { None };
                (dw, db)
            } else {
                (None, None)
            };
            vec![dx, dw, db]
        }
        Op::GroupNormBwd { .. } => {
            return Err(Error::graph(node.op.describe(), "second-order gradients are not supported"));
        }

        Op::Attention { causal, scale } => {
            // Flash-attention 2 style: the backward recomputes P from q, k and the row logsumexp (a first pass
            // over the keys, `AttentionStats`, which also forms delta = rowsum(dy * o)), then one fused op.
            let (causal, scale) = (*causal, *scale);
            let (q, k, v) = (ins[0], ins[1], ins[2]);
            let (tq, tk) = (g.shape(q)[1], g.shape(k)[1]);
            let stats = g.push(Op::AttentionStats { causal, scale }, &[q, k, id, dy])?;
            let all = g.push(Op::AttentionBwd { causal, scale }, &[q, k, v, dy, stats])?;
            let mut v = Vec::with_capacity(3);
            for (i, (a, b)) in [(0, tq), (tq, tq + tk), (tq + tk, tq + 2 * tk)].into_iter().enumerate() {
                v.push(if needs[i] { Some(g.slice(all, 1, a, b)?) } else { None });
            }
            v
        }
        Op::Geglu => vec![Some(g.push(Op::GegluBwd, &[ins[0], dy])?)],
        Op::TimestepEmbedding { .. } => vec![None],
        Op::AttentionStats { .. } | Op::AttentionBwd { .. } | Op::GegluBwd => {
            return Err(Error::graph(node.op.describe(), "second-order gradients are not supported"));
        }

        Op::BoxIou { .. } | Op::BoxEncode { .. } | Op::BoxDecode { .. } => vec![None, None],
        Op::Nms { .. } => vec![None, None, None],
        Op::TopK { .. } => vec![None],
        Op::Gather { axis } => {
            // Scatter-add into x's size along the axis, then zero-pad the other axes where idx is smaller.
            let xs = shape_of(g, 0);
            let mut dx = g.push(Op::GatherBwd { axis: *axis, size: xs[*axis] }, &[ins[1], dy])?;
            for (d, &n) in xs.iter().enumerate() {
                let have = g.shape(dx)[d];
                if have < n {
                    dx = g.pad(dx, d, 0, n - have)?;
                }
            }
            vec![Some(dx), None]
        }
        Op::GatherBwd { .. } => {
            return Err(Error::graph(node.op.describe(), "second-order gradients are not supported"));
        }

        Op::RoiAlign { out_h, out_w, spatial_scale, sampling_ratio, aligned } => {
            // Linear in the features; the RoI coordinates get no gradient.
            let fs = shape_of(g, 0);
            let op = Op::RoiAlignBwd {
                out_h: *out_h,
                out_w: *out_w,
                spatial_scale: *spatial_scale,
                sampling_ratio: *sampling_ratio,
                aligned: *aligned,
                n: fs[0],
                h: fs[1],
                w: fs[2],
            };
            vec![if needs[0] { Some(g.push(op, &[ins[1], dy])?) } else { None }, None]
        }
        Op::FpnLevels { .. } => vec![None],
        Op::SigmoidFocalLoss { alpha, gamma } => {
            let op = Op::SigmoidFocalLossBwd { alpha: *alpha, gamma: *gamma };
            vec![if needs[0] { Some(g.push(op, &[ins[0], ins[1], dy])?) } else { None }, None]
        }
        Op::GiouLoss { eps } => {
            vec![if needs[0] { Some(g.push(Op::GiouLossBwd { eps: *eps }, &[ins[0], ins[1], dy])?) } else { None }, None]
        }
        Op::RoiAlignBwd { .. } | Op::SigmoidFocalLossBwd { .. } | Op::GiouLossBwd { .. } => {
            return Err(Error::graph(node.op.describe(), "second-order gradients are not supported"));
        }

        Op::UnaryBwd(_) | Op::SoftmaxBwd { .. } | Op::LayerNormBwd { .. } => {
            return Err(Error::graph(node.op.describe(), "second-order gradients are not supported"));
        }
    };
    Ok(out)
}
