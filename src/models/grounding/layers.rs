//! Building blocks of the grounding head's graph: attention modules, FFNs with dropout, deformable attention,
//! sine embeddings, box heads and the contrastive classifier. Parameter names are those of
//! `tools/grounding_ref.py`.

use crate::error::{Error, Result};
use crate::graph::{BinaryOp, Graph, NodeId, Op, UnaryOp};
use crate::nn;
use crate::tensor::{DType, HostTensor};

/// What a graph under construction needs besides nodes: host constants fed as inputs, dropout sites.
pub struct Ctx {
    /// Dropout probability, 0 when dropout is off (no dropout nodes at all).
    pub dropout: f32,
    /// Names of the `i64 [2]` key inputs of the dropout sites, in order.
    pub dropout_keys: Vec<String>,
    /// Inputs that are constants of the graph (fed with every run).
    pub consts: Vec<(String, HostTensor)>,
}

impl Ctx {
    pub fn new(dropout: f32) -> Ctx {
        Ctx { dropout, dropout_keys: Vec::new(), consts: Vec::new() }
    }

    /// A constant tensor as a graph input named `const.{name}` (the same name gives the same node).
    pub fn constant(&mut self, g: &mut Graph, name: &str, t: HostTensor) -> Result<NodeId> {
        let name = format!("const.{name}");
        if let Some(id) = g.find_input(&name) {
            return Ok(id);
        }
        let id = g.input(&name, &t.shape, t.dtype)?;
        self.consts.push((name, t));
        Ok(id)
    }

    /// Dropout of `x` with a fresh key input (nothing when dropout is off).
    pub fn dropout(&mut self, g: &mut Graph, x: NodeId) -> Result<NodeId> {
        if self.dropout <= 0.0 {
            return Ok(x);
        }
        let name = format!("dropout_key.{}", self.dropout_keys.len());
        let key = g.input(&name, &[2], DType::I64)?;
        self.dropout_keys.push(name);
        g.push(Op::Dropout { p: self.dropout }, &[x, key])
    }
}

pub fn lin(g: &mut Graph, name: &str, x: NodeId, out: usize) -> Result<NodeId> {
    nn::linear(g, name, x, out, true)
}

pub fn ln(g: &mut Graph, name: &str, x: NodeId) -> Result<NodeId> {
    nn::layer_norm(g, name, x, 1e-5)
}

pub fn relu(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    g.unary(UnaryOp::Relu, x)
}

/// Multi-head attention with `{name}.q/k/v/out` linears (all `hidden -> hidden`).
pub fn attention_module(g: &mut Graph, name: &str, q_in: NodeId, k_in: NodeId, v_in: NodeId, heads: usize) -> Result<NodeId> {
    let d = *g.shape(q_in).last().unwrap_or(&0);
    let q = lin(g, &format!("{name}.q"), q_in, d)?;
    let k = lin(g, &format!("{name}.k"), k_in, d)?;
    let v = lin(g, &format!("{name}.v"), v_in, d)?;
    let o = nn::attention::attention(g, q, k, v, heads, false)?;
    lin(g, &format!("{name}.out"), o, d)
}

/// `linear2(dropout(relu(linear1(x))))`.
pub fn ffn(g: &mut Graph, ctx: &mut Ctx, name1: &str, name2: &str, x: NodeId, width: usize) -> Result<NodeId> {
    let d = *g.shape(x).last().unwrap_or(&0);
    let h = lin(g, name1, x, width)?;
    let h = relu(g, h)?;
    let h = ctx.dropout(g, h)?;
    lin(g, name2, h, d)
}

/// Post-norm residual: `norm(x + dropout(y))`.
pub fn add_norm(g: &mut Graph, ctx: &mut Ctx, norm: &str, x: NodeId, y: NodeId) -> Result<NodeId> {
    let y = ctx.dropout(g, y)?;
    let s = g.add(x, y)?;
    ln(g, norm, s)
}

/// Three linears with ReLU between (`{name}.0/1/2`), the last to `out` channels.
pub fn mlp3(g: &mut Graph, name: &str, x: NodeId, out: usize) -> Result<NodeId> {
    let d = *g.shape(x).last().unwrap_or(&0);
    let h = lin(g, &format!("{name}.0"), x, d)?;
    let h = relu(g, h)?;
    let h = lin(g, &format!("{name}.1"), h, d)?;
    let h = relu(g, h)?;
    lin(g, &format!("{name}.2"), h, out)
}

/// The reference of a deformable attention's queries.
pub enum Reference {
    /// `[1, Q, 1, 1, 1, 2]` (x, y) points shared by the batch (the encoder's token centres) with `[1, 1, 1, L, 1,
    /// 2]` = (1 / w_l, 1 / h_l): offsets are in pixels of each level.
    Points { points: NodeId, inv_size: NodeId },
    /// `[B, Q, 4]` boxes (cx, cy, w, h): offsets are in units of half the box over the number of points.
    Boxes(NodeId),
}

/// Multi-scale deformable attention (Deformable DETR's `MSDeformAttn`): `{name}.value_proj`, `.offsets`,
/// `.weights`, `.out_proj`; query `[B, Q, d]`, value_in `[B, S, d]` -> `[B, Q, d]`.
pub fn deform_attn(
    g: &mut Graph,
    name: &str,
    heads: usize,
    points: usize,
    levels: &[[usize; 2]],
    query: NodeId,
    reference: &Reference,
    value_in: NodeId,
) -> Result<NodeId> {
    let qs = g.shape(query).to_vec();
    let (b, q, d) = (qs[0], qs[1], qs[2]);
    let s = g.shape(value_in)[1];
    let l = levels.len();
    let value = lin(g, &format!("{name}.value_proj"), value_in, d)?;
    let value = g.reshape(value, &[b, s, heads, d / heads])?; // (B, S, H, D)
    let off = lin(g, &format!("{name}.offsets"), query, heads * l * points * 2)?;
    let off = g.reshape(off, &[b, q, heads, l, points, 2])?; // (B, Q, H, L, P, 2)
    let a = lin(g, &format!("{name}.weights"), query, heads * l * points)?;
    let a = g.reshape(a, &[b, q, heads, l * points])?;
    let a = g.softmax(a, 3)?;
    let a = g.reshape(a, &[b, q, heads, l, points])?; // (B, Q, H, L, P)
    let loc = match reference {
        Reference::Points { points: r, inv_size } => {
            let o = g.mul(off, *inv_size)?;
            g.add(*r, o)?
        }
        Reference::Boxes(boxes) => {
            let xy = g.slice(*boxes, 2, 0, 2)?;
            let xy = g.reshape(xy, &[b, q, 1, 1, 1, 2])?;
            let wh = g.slice(*boxes, 2, 2, 4)?;
            let wh = g.reshape(wh, &[b, q, 1, 1, 1, 2])?;
            let o = g.scale(off, 0.5 / points as f32)?;
            let o = g.mul(o, wh)?;
            g.add(xy, o)?
        }
    }; // (B, Q, H, L, P, 2)
    let out = nn::msda::msda(g, value, loc, a, levels)?; // (B, Q, H*D)
    lin(g, &format!("{name}.out_proj"), out, d)
}

/// DETR's normalised sine position embedding of every token (levels in order, row-major): `[S, d]` =
/// (pos_y, pos_x), each `d / 2` channels interleaving sin and cos, `temperature` as configured.
pub fn sine_pos_2d(levels: &[[usize; 2]], d: usize, temperature: f32) -> Result<HostTensor> {
    let npf = d / 2;
    let dim_t: Vec<f64> = (0..npf).map(|k| (temperature as f64).powf(2.0 * (k / 2) as f64 / npf as f64)).collect();
    let two_pi = 2.0 * std::f64::consts::PI;
    let embed = |v: f64, out: &mut Vec<f32>| {
        for k in 0..npf {
            let a = v / dim_t[k];
            out.push(if k % 2 == 0 { a.sin() } else { a.cos() } as f32);
        }
    };
    let mut out = Vec::new();
    for &[h, w] in levels {
        for i in 0..h {
            for j in 0..w {
                embed((i + 1) as f64 / (h as f64 + 1e-6) * two_pi, &mut out);
                embed((j + 1) as f64 / (w as f64 + 1e-6) * two_pi, &mut out);
            }
        }
    }
    let s: usize = levels.iter().map(|l| l[0] * l[1]).sum();
    HostTensor::from_f32(&[s, d], DType::F32, &out)
}

/// `[S, 2]` (x, y) token centres, normalised.
pub fn token_centres(levels: &[[usize; 2]]) -> Vec<[f64; 2]> {
    let mut out = Vec::new();
    for &[h, w] in levels {
        for i in 0..h {
            for j in 0..w {
                out.push([(j as f64 + 0.5) / w as f64, (i as f64 + 0.5) / h as f64]);
            }
        }
    }
    out
}

/// DINO's encoder output proposals: `[S, 4]` anchors (token centre, `min_wh * 2^level` square) in inverse-sigmoid
/// space, and `[S]` validity (every coordinate in (0.01, 0.99)); invalid proposals are 0 (they are never selected
/// while enough valid tokens exist, see DESIGN.md).
pub fn proposals(levels: &[[usize; 2]], min_wh: f32) -> (Vec<f32>, Vec<f32>) {
    let centres = token_centres(levels);
    let (mut unsig, mut valid) = (Vec::new(), Vec::new());
    let mut k = 0;
    for (l, &[h, w]) in levels.iter().enumerate() {
        let wh = min_wh as f64 * 2f64.powi(l as i32);
        for _ in 0..h * w {
            let a = [centres[k][0], centres[k][1], wh, wh];
            let ok = a.iter().all(|&v| v > 0.01 && v < 0.99);
            for v in a {
                unsig.push(if ok { (v / (1.0 - v)).ln() as f32 } else { 0.0 });
            }
            valid.push(if ok { 1.0 } else { 0.0 });
            k += 1;
        }
    }
    (unsig, valid)
}

/// DINO's `gen_sineembed_for_position` of `[B, Q, 4]` boxes -> `[B, Q, 2d]`: blocks (y, x, w, h) of `d / 2`
/// channels interleaving sin and cos of `v * 2 pi / 10000^(2k / (d/2))`.
pub fn sine_embed_box(g: &mut Graph, ctx: &mut Ctx, boxes: NodeId, d: usize) -> Result<NodeId> {
    let s = g.shape(boxes).to_vec();
    let (b, q) = (s[0], s[1]);
    let quarter = d / 4;
    let half = (d / 2) as f64;
    let freqs: Vec<f32> = (0..quarter)
        .map(|k| (2.0 * std::f64::consts::PI / 10000f64.powf((2 * k) as f64 / half)) as f32)
        .collect();
    let freqs = ctx.constant(g, &format!("box_sine_freqs_{d}"), HostTensor::from_f32(&[quarter], DType::F32, &freqs)?)?;
    let y = g.slice(boxes, 2, 1, 2)?;
    let x = g.slice(boxes, 2, 0, 1)?;
    let wh = g.slice(boxes, 2, 2, 4)?;
    let r = g.concat(&[y, x, wh], 2)?; // (B, Q, 4) as (y, x, w, h)
    let r = g.reshape(r, &[b, q, 4, 1])?;
    let u = g.mul(r, freqs)?; // (B, Q, 4, d/4)
    let sin = g.unary(UnaryOp::Sin, u)?;
    let cos = g.unary(UnaryOp::Cos, u)?;
    let sin = g.reshape(sin, &[b, q, 4, quarter, 1])?;
    let cos = g.reshape(cos, &[b, q, 4, quarter, 1])?;
    let e = g.concat(&[sin, cos], 4)?; // (B, Q, 4, d/4, 2)
    g.reshape(e, &[b, q, 2 * d])
}

/// `log(max(x, eps) / max(1 - x, eps))`.
pub fn inverse_sigmoid(g: &mut Graph, x: NodeId, eps: f32) -> Result<NodeId> {
    let e = g.fill(eps, &[1], g.dtype(x));
    let x1 = g.binary(BinaryOp::Max, x, e)?;
    let one_minus = g.affine(x, -1.0, 1.0)?;
    let x2 = g.binary(BinaryOp::Max, one_minus, e)?;
    let r = g.div(x1, x2)?;
    g.unary(UnaryOp::Log, r)
}

/// `x / sqrt(sum(x^2) + 1e-12)` over the last axis.
fn l2_normalize(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let r = g.shape(x).len();
    let sq = g.unary(UnaryOp::Square, x)?;
    let n = g.sum(sq, &[r - 1], true)?;
    let n = g.affine(n, 1.0, 1e-12)?;
    let inv = g.unary(UnaryOp::Rsqrt, n)?;
    g.mul(x, inv)
}

/// Contrastive classification: `class_scale * cos(q, text) + class_bias`, `[B, Q, d] x [B, T, d] -> [B, Q, T]`.
pub fn contrastive(g: &mut Graph, q: NodeId, text: NodeId) -> Result<NodeId> {
    let dt = g.dtype(q);
    let qn = l2_normalize(g, q)?;
    let tn = l2_normalize(g, text)?;
    let sim = g.matmul_t(qn, tn, false, true)?;
    let scale = g.param("class_scale", &[1], dt)?;
    let bias = g.param("class_bias", &[1], dt)?;
    let s = g.mul(sim, scale)?;
    g.add(s, bias)
}

/// A shape error of the head naming what was given.
pub fn shape_err(what: &str, msg: String) -> Error {
    Error::graph(format!("grounding head: {what}"), msg)
}
