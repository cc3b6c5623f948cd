//! The `Op` enum: the one source of truth for what a graph can compute, with shape and dtype rules.
//!
//! Adding an op touches: this enum and [`infer`], the CPU backend (`backend/cpu`), the `.cu` kernel and its
//! launcher, the backward rule (`graph/autodiff.rs`), a gradient check and parity test, and a bench line.

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Abs,
    Square,
    Tanh,
    Sigmoid,
    Relu,
    /// GELU with the exact erf form (PyTorch's default, used by SD's GEGLU).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    Silu,
    Sin,
    Cos,
    /// `y = mul * x + add`.
    Affine { mul: f32, add: f32 },
    /// `y = x ^ p` (x > 0 where p is not an integer).
    Powf(f32),
    /// `x * sigmoid(1.702 x)` (CLIP's quick GELU).
    QuickGelu,
}

impl UnaryOp {
    /// One instance of every unary op (parameterised ones with example parameters), for tests.
    pub const EXAMPLES: [UnaryOp; 19] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Abs,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Affine { mul: -1.5, add: 0.25 },
        UnaryOp::Powf(2.5),
        UnaryOp::QuickGelu,
    ];
}

/// Elementwise functions of two tensors with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// 1 where `a == b`, else 0 (not differentiable).
    Eq,
    /// 1 where `a > b`, else 0 (not differentiable).
    Gt,
    /// 1 where `a >= b`, else 0 (not differentiable).
    Ge,
}

impl BinaryOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Gt | BinaryOp::Ge)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

/// A graph operation. Leaves (`Input`, `Param`, `Fill`) have no inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Data fed at run time under `name`.
    Input { name: String },
    /// A named parameter (its name is the checkpoint key).
    Param { name: String },
    /// A tensor filled with one value.
    Fill { value: f32 },
    Unary(UnaryOp),
    /// `dx = dy * f'(x)`; inputs `(x, dy)`.
    UnaryBwd(UnaryOp),
    Binary(BinaryOp),
    Reduce { op: ReduceOp, axes: Vec<usize>, keepdim: bool },
    /// `op(a) @ op(b)` over the last two axes, batch axes broadcast; `ta`/`tb` transpose an operand.
    MatMul { ta: bool, tb: bool },
    /// Softmax along `axis` (f32 accumulation).
    Softmax { axis: usize },
    /// `dx = y * (dy - sum(dy * y))` along `axis`; inputs `(y, dy)`.
    SoftmaxBwd { axis: usize },
    /// Normalise the last axis; inputs `(x)` or `(x, weight, bias)` when `affine`.
    LayerNorm { eps: f32, affine: bool },
    /// Gradient of `LayerNorm` w.r.t. x; inputs `(x, dy)` or `(x, weight, dy)` when `affine`.
    LayerNormBwd { eps: f32, affine: bool },
    Reshape { shape: Vec<usize> },
    /// `out.shape[i] = in.shape[perm[i]]`.
    Permute { perm: Vec<usize> },
    /// Repeat size-1 axes (after left-padding the rank) up to `shape`.
    BroadcastTo { shape: Vec<usize> },
    Concat { axis: usize },
    /// `[start, end)` along `axis`.
    Slice { axis: usize, start: usize, end: usize },
    /// Zero padding along `axis`.
    Pad { axis: usize, before: usize, after: usize },
    Cast { dtype: DType },

    /// 2-D convolution, NHWC activations: inputs `(x [N,H,W,C], w [O,C,kh,kw][, bias [O]])` -> `[N,Ho,Wo,O]`,
    /// `Ho = (H + 2*padding - kh) / stride + 1` (zero padding; groups 1, dilation 1).
    Conv2d { stride: usize, padding: usize, bias: bool },
    /// Gradient of `Conv2d` w.r.t. x (a transposed convolution): inputs `(dy [N,Ho,Wo,O], w [O,C,kh,kw])` ->
    /// `dx [N,h,w,C]`.
    Conv2dBwdData { stride: usize, padding: usize, h: usize, w: usize },
    /// Gradient of `Conv2d` w.r.t. the weight: inputs `(x [N,H,W,C], dy [N,Ho,Wo,O])` -> `dw [O,C,kh,kw]`.
    Conv2dBwdWeight { stride: usize, padding: usize, kh: usize, kw: usize },
    /// Group norm over `x [N, ..., C]` (statistics per sample and group of `C/groups` channels, over every middle
    /// axis, biased variance), then `* weight[C] + bias[C]`, then SiLU when `silu`; inputs `(x, weight, bias)`.
    GroupNorm { groups: usize, eps: f32, silu: bool },
    /// Gradient of `GroupNorm` w.r.t. x; inputs `(x, weight, bias, dy)`.
    GroupNormBwd { groups: usize, eps: f32, silu: bool },

    /// Fused multi-head attention: inputs `(q [B,Tq,H,D], k [B,Tk,H,D], v [B,Tk,H,D])` -> `[B,Tq,H,D]` =
    /// `softmax(q k^T * scale) v` per (batch, head), f32 accumulation; `causal` masks key j > query i.
    Attention { causal: bool, scale: f32 },
    /// Per-row statistics for the attention backward: inputs `(q, k, o, dy)` (o the forward output) ->
    /// f32 `[B, H, 2, Tq]`: `[.., 0, i]` = logsumexp_j of the scaled (masked) logits of query i, `[.., 1, i]` =
    /// `sum_d dy[i,d] * o[i,d]`. Not differentiable.
    AttentionStats { causal: bool, scale: f32 },
    /// Attention gradients: inputs `(q, k, v, dy, stats)` (stats from `AttentionStats`) -> `[B, Tq + 2 Tk, H, D]`
    /// = (dq, dk, dv) concatenated along axis 1.
    AttentionBwd { causal: bool, scale: f32 },
    /// `x [..., 2C] -> [..., C] = x[..., :C] * gelu_erf(x[..., C:])` (diffusers GEGLU).
    Geglu,
    /// Gradient of `Geglu`: inputs `(x [..., 2C], dy [..., C])` -> dx `[..., 2C]`.
    GegluBwd,
    /// Sinusoidal timestep embedding, input t `[N]` -> f32 `[N, dim]`, as diffusers `get_timestep_embedding`
    /// (`shift` = `downscale_freq_shift`). Not differentiable.
    TimestepEmbedding { dim: usize, flip_sin_to_cos: bool, shift: f32, max_period: f32 },

    /// IoU (or GIoU when `giou`) of every pair: inputs (a [..., N, 4], b [..., M, 4]) xyxy boxes with the same
    /// leading axes -> [..., N, M] (torchvision `box_iou` / `generalized_box_iou`). Not differentiable.
    BoxIou { giou: bool },
    /// Faster R-CNN box deltas of `target` relative to `reference` (both [N, 4]) -> [N, 4] (torchvision
    /// `BoxCoder.encode_single(target, reference)`). Not differentiable.
    BoxEncode { weights: [f32; 4] },
    /// Boxes from deltas: inputs (reference [N, 4], deltas [N, 4K]) -> [N, 4K], dw/dh clamped to `clamp` from
    /// above (torchvision `BoxCoder.decode_single`). Not differentiable.
    BoxDecode { weights: [f32; 4], clamp: f32 },
    /// Batched (per-class) NMS: inputs (boxes [N, 4] f32, scores [N] float, classes [N] i32/i64) -> i64
    /// [max_out + 1]: kept indices by descending score, padded with -1, then the count kept.
    Nms { iou_threshold: f32, max_out: usize },
    /// Indices (i64) of the `k` largest along the last axis, descending, ties to the lower index, NaN largest.
    TopK { k: usize },
    /// torch.gather: inputs (x, idx i32/i64 of x's rank, idx.shape[d] <= x.shape[d] off `axis`) -> idx's shape.
    Gather { axis: usize },
    /// Scatter-add of `dy` at `idx` along `axis` into an output of `size` there: inputs (idx, dy) -> dx.
    GatherBwd { axis: usize, size: usize },

    /// RoI Align as torchvision.ops.roi_align on NHWC features; inputs (feat [N,H,W,C], rois [K,5] f32 =
    /// (batch_index, x1, y1, x2, y2) in input pixels) -> [K, out_h, out_w, C]. `sampling_ratio <= 0`: adaptive
    /// (ceil(roi_size / out_size) samples per bin and axis).
    RoiAlign { out_h: usize, out_w: usize, spatial_scale: f32, sampling_ratio: i32, aligned: bool },
    /// Gradient of `RoiAlign` w.r.t. the features; inputs (rois [K,5] f32, dy [K,out_h,out_w,C]) -> [n,h,w,C].
    RoiAlignBwd {
        out_h: usize,
        out_w: usize,
        spatial_scale: f32,
        sampling_ratio: i32,
        aligned: bool,
        n: usize,
        h: usize,
        w: usize,
    },
    /// FPN level of each RoI (torchvision LevelMapper): input rois [K,5] (or boxes [K,4]) -> i64 [K] =
    /// clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max) - k_min (eps added
    /// to the level as torchvision's code does). mmdet's `finest_scale = 56` mapper is canonical_scale 56,
    /// canonical_level = k_min (or equivalently 224 at level k_min + 2).
    FpnLevels { k_min: i32, k_max: i32, canonical_scale: f32, canonical_level: i32, eps: f32 },
    /// torchvision.ops.sigmoid_focal_loss, reduction none; inputs (logits, targets) same shape -> same shape.
    /// `alpha < 0` disables the alpha weighting.
    SigmoidFocalLoss { alpha: f32, gamma: f32 },
    /// Gradient of `SigmoidFocalLoss` w.r.t. the logits; inputs (logits, targets, dy) -> dlogits.
    SigmoidFocalLossBwd { alpha: f32, gamma: f32 },
    /// 1 - GIoU of matching boxes (torchvision generalized_box_iou_loss, reduction none); inputs
    /// (pred [..., 4], target [..., 4]) -> [...].
    GiouLoss { eps: f32 },
    /// Gradient of `GiouLoss` w.r.t. pred; inputs (pred, target, dy [...]) -> dpred [..., 4].
    GiouLossBwd { eps: f32 },
}

/// Every op kind by name; the gradient-check coverage test walks this list.
pub const OP_KINDS: &[&str] = &[
    "input", "param", "fill", "unary", "unary_bwd", "binary", "reduce", "matmul", "softmax", "softmax_bwd",
    "layer_norm", "layer_norm_bwd", "reshape", "permute", "broadcast_to", "concat", "slice", "pad", "cast",

    "conv2d", "conv2d_bwd_data", "conv2d_bwd_weight", "group_norm", "group_norm_bwd",

    "attention", "attention_stats", "attention_bwd", "geglu", "geglu_bwd", "timestep_embedding",

    "box_iou", "box_encode", "box_decode", "nms", "topk", "gather", "gather_bwd",

    "roi_align", "roi_align_bwd", "fpn_levels", "sigmoid_focal_loss", "sigmoid_focal_loss_bwd", "giou_loss",
    "giou_loss_bwd",
];

impl Op {
    /// The op's kind, as listed in [`OP_KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Fill { .. } => "fill",
            Op::Unary(_) => "unary",
            Op::UnaryBwd(_) => "unary_bwd",
            Op::Binary(_) => "binary",
            Op::Reduce { .. } => "reduce",
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::SoftmaxBwd { .. } => "softmax_bwd",
            Op::LayerNorm { .. } => "layer_norm",
            Op::LayerNormBwd { .. } => "layer_norm_bwd",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::BroadcastTo { .. } => "broadcast_to",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Cast { .. } => "cast",

            Op::Conv2d { .. } => "conv2d",
            Op::Conv2dBwdData { .. } => "conv2d_bwd_data",
            Op::Conv2dBwdWeight { .. } => "conv2d_bwd_weight",
            Op::GroupNorm { .. } => "group_norm",
            Op::GroupNormBwd { .. } => "group_norm_bwd",

            Op::Attention { .. } => "attention",
            Op::AttentionStats { .. } => "attention_stats",
            Op::AttentionBwd { .. } => "attention_bwd",
            Op::Geglu => "geglu",
            Op::GegluBwd => "geglu_bwd",
            Op::TimestepEmbedding { .. } => "timestep_embedding",

            Op::BoxIou { .. } => "box_iou",
            Op::BoxEncode { .. } => "box_encode",
            Op::BoxDecode { .. } => "box_decode",
            Op::Nms { .. } => "nms",
            Op::TopK { .. } => "topk",
            Op::Gather { .. } => "gather",
            Op::GatherBwd { .. } => "gather_bwd",

            Op::RoiAlign { .. } => "roi_align",
            Op::RoiAlignBwd { .. } => "roi_align_bwd",
            Op::FpnLevels { .. } => "fpn_levels",
            Op::SigmoidFocalLoss { .. } => "sigmoid_focal_loss",
            Op::SigmoidFocalLossBwd { .. } => "sigmoid_focal_loss_bwd",
            Op::GiouLoss { .. } => "giou_loss",
            Op::GiouLossBwd { .. } => "giou_loss_bwd",
        }
    }

    /// A readable description for error messages, e.g. `binary Add`.
    pub fn describe(&self) -> String {
        match self {
            Op::Input { name } => format!("input '{name}'"),
            Op::Param { name } => format!("param '{name}'"),
            Op::Unary(u) => format!("unary {u:?}"),
            Op::UnaryBwd(u) => format!("unary_bwd {u:?}"),
            Op::Binary(b) => format!("binary {b:?}"),
            other => format!("{other:?}"),
        }
    }

    /// True for ops whose output element `i` depends only on input element `i` of same-shaped inputs, so
    /// the output may overwrite such an input in place.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::UnaryBwd(_) | Op::Binary(_) | Op::Reshape { .. })
    }
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

fn require_float(op: &Op, dtypes: &[DType]) -> Result<()> {
    for d in dtypes {
        if !d.is_float() {
            return Err(Error::graph(op.describe(), format!("needs floating-point inputs, got {d}")));
        }
    }
    Ok(())
}

fn same_dtype(op: &Op, dtypes: &[DType]) -> Result<DType> {
    let d0 = dtypes[0];
    if let Some(d) = dtypes.iter().find(|d| **d != d0) {
        return Err(Error::graph(op.describe(), format!("dtype mismatch: {d0} vs {d} (inputs {dtypes:?})")));
    }
    Ok(d0)
}

fn check_axis(op: &Op, axis: usize, rank: usize, shape: &[usize]) -> Result<()> {
    if axis >= rank {
        return Err(Error::graph(op.describe(), format!("axis {axis} out of range for shape {shape:?}")));
    }
    Ok(())
}

/// Shape and dtype of `op` applied to inputs of the given shapes and dtypes, or an error naming the op and shapes.
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let arity = match op {
        Op::Input { .. } | Op::Param { .. } | Op::Fill { .. } => Some(0),
        Op::Unary(_) | Op::Reduce { .. } | Op::Softmax { .. } | Op::Reshape { .. } | Op::Permute { .. } => Some(1),
        Op::BroadcastTo { .. } | Op::Slice { .. } | Op::Pad { .. } | Op::Cast { .. } => Some(1),
        Op::UnaryBwd(_) | Op::Binary(_) | Op::MatMul { .. } | Op::SoftmaxBwd { .. } => Some(2),
        Op::LayerNorm { affine, .. } => Some(if *affine { 3 } else { 1 }),
        Op::LayerNormBwd { affine, .. } => Some(if *affine { 3 } else { 2 }),
        Op::Concat { .. } => None,

        Op::Conv2d { bias, .. } => Some(if *bias { 3 } else { 2 }),
        Op::Conv2dBwdData { .. } | Op::Conv2dBwdWeight { .. } => Some(2),
        Op::GroupNorm { .. } => Some(3),
        Op::GroupNormBwd { .. } => Some(4),

        Op::Attention { .. } => Some(3),
        Op::AttentionStats { .. } => Some(4),
        Op::AttentionBwd { .. } => Some(5),
        Op::Geglu | Op::TimestepEmbedding { .. } => Some(1),
        Op::GegluBwd => Some(2),

        Op::TopK { .. } => Some(1),
        Op::BoxIou { .. } | Op::BoxEncode { .. } | Op::BoxDecode { .. } => Some(2),
        Op::Gather { .. } | Op::GatherBwd { .. } => Some(2),
        Op::Nms { .. } => Some(3),

        Op::FpnLevels { .. } => Some(1),
        Op::RoiAlign { .. } | Op::RoiAlignBwd { .. } | Op::SigmoidFocalLoss { .. } | Op::GiouLoss { .. } => Some(2),
        Op::SigmoidFocalLossBwd { .. } | Op::GiouLossBwd { .. } => Some(3),
    };
    if let Some(n) = arity {
        if shapes.len() != n {
            return Err(Error::graph(op.describe(), format!("takes {n} inputs, got {}", shapes.len())));
        }
    }
    let err = |msg: String| Err(Error::graph(op.describe(), msg));
    match op {
        Op::Input { .. } | Op::Param { .. } | Op::Fill { .. } => err("leaf ops are made by Graph::input/param/fill".into()),
        Op::Unary(_) => {
            require_float(op, dtypes)?;
            Ok((shapes[0].to_vec(), dtypes[0]))
        }
        Op::UnaryBwd(_) | Op::SoftmaxBwd { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if shapes[0] != shapes[1] {
                return err(format!("shape mismatch: {:?} vs {:?}", shapes[0], shapes[1]));
            }
            if let Op::SoftmaxBwd { axis } = op {
                check_axis(op, *axis, shapes[0].len(), shapes[0])?;
            }
            Ok((shapes[0].to_vec(), d))
        }
        Op::Binary(_) => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            match broadcast_shapes(shapes[0], shapes[1]) {
                Some(s) => Ok((s, d)),
                None => err(format!("shapes {:?} and {:?} do not broadcast", shapes[0], shapes[1])),
            }
        }
        Op::Reduce { axes, keepdim, .. } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            let mut seen = vec![false; s.len()];
            for &a in axes {
                check_axis(op, a, s.len(), s)?;
                if seen[a] {
                    return err(format!("axis {a} repeated in {axes:?}"));
                }
                seen[a] = true;
            }
            let out = if *keepdim {
                s.iter().enumerate().map(|(i, &d)| if seen[i] { 1 } else { d }).collect()
            } else {
                s.iter().enumerate().filter(|(i, _)| !seen[*i]).map(|(_, &d)| d).collect()
            };
            Ok((out, dtypes[0]))
        }
        Op::MatMul { ta, tb } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            if a.len() < 2 || b.len() < 2 {
                return err(format!("needs rank >= 2, got {a:?} and {b:?}"));
            }
            let (m, ka) = if *ta { (a[a.len() - 1], a[a.len() - 2]) } else { (a[a.len() - 2], a[a.len() - 1]) };
            let (kb, n) = if *tb { (b[b.len() - 1], b[b.len() - 2]) } else { (b[b.len() - 2], b[b.len() - 1]) };
            if ka != kb {
                return err(format!("inner dimensions differ: {a:?} (ta={ta}) x {b:?} (tb={tb}): {ka} vs {kb}"));
            }
            let Some(mut batch) = broadcast_shapes(&a[..a.len() - 2], &b[..b.len() - 2]) else {
                return err(format!("batch dimensions of {a:?} and {b:?} do not broadcast"));
            };
            batch.push(m);
            batch.push(n);
            Ok((batch, d))
        }
        Op::Softmax { axis } => {
            require_float(op, dtypes)?;
            check_axis(op, *axis, shapes[0].len(), shapes[0])?;
            Ok((shapes[0].to_vec(), dtypes[0]))
        }
        Op::LayerNorm { affine, .. } | Op::LayerNormBwd { affine, .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            let Some(&dim) = x.last() else { return err("needs rank >= 1".into()) };
            let is_bwd = matches!(op, Op::LayerNormBwd { .. });
            // Forward: (x, [weight, bias]); backward: (x, [weight], dy).
            let n_affine = match (*affine, is_bwd) {
                (false, _) => 0,
                (true, false) => 2,
                (true, true) => 1,
            };
            for s in &shapes[1..1 + n_affine] {
                if *s != [dim] {
                    return err(format!("weight/bias shape {s:?} does not match the last axis of x {x:?}"));
                }
            }
            if is_bwd && shapes[shapes.len() - 1] != x {
                return err(format!("dy shape {:?} differs from x shape {x:?}", shapes[shapes.len() - 1]));
            }
            Ok((x.to_vec(), d))
        }
        Op::Reshape { shape } => {
            let (a, b) = (crate::tensor::numel(shapes[0]), crate::tensor::numel(shape));
            if a != b {
                return err(format!("cannot reshape {:?} ({a} elements) to {shape:?} ({b} elements)", shapes[0]));
            }
            Ok((shape.clone(), dtypes[0]))
        }
        Op::Permute { perm } => {
            let s = shapes[0];
            let mut seen = vec![false; s.len()];
            if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len() || std::mem::replace(&mut seen[p], true)) {
                return err(format!("{perm:?} is not a permutation of the axes of {s:?}"));
            }
            Ok((perm.iter().map(|&p| s[p]).collect(), dtypes[0]))
        }
        Op::BroadcastTo { shape } => match broadcast_shapes(shapes[0], shape) {
            Some(s) if &s == shape => Ok((shape.clone(), dtypes[0])),
            _ => err(format!("cannot broadcast {:?} to {shape:?}", shapes[0])),
        },
        Op::Concat { axis } => {
            if shapes.is_empty() {
                return err("needs at least one input".into());
            }
            let d = same_dtype(op, dtypes)?;
            let s0 = shapes[0];
            check_axis(op, *axis, s0.len(), s0)?;
            let mut out = s0.to_vec();
            for s in &shapes[1..] {
                let ok = s.len() == s0.len() && s.iter().zip(s0).enumerate().all(|(i, (a, b))| i == *axis || a == b);
                if !ok {
                    return err(format!("input shapes {shapes:?} differ off axis {axis}"));
                }
                out[*axis] += s[*axis];
            }
            Ok((out, d))
        }
        Op::Slice { axis, start, end } => {
            let s = shapes[0];
            check_axis(op, *axis, s.len(), s)?;
            if start > end || *end > s[*axis] {
                return err(format!("range {start}..{end} out of bounds for axis {axis} of {s:?}"));
            }
            let mut out = s.to_vec();
            out[*axis] = end - start;
            Ok((out, dtypes[0]))
        }
        Op::Pad { axis, before, after } => {
            let s = shapes[0];
            check_axis(op, *axis, s.len(), s)?;
            let mut out = s.to_vec();
            out[*axis] += before + after;
            Ok((out, dtypes[0]))
        }
        Op::Cast { dtype } => Ok((shapes[0].to_vec(), *dtype)),

        Op::Conv2d { .. } | Op::Conv2dBwdData { .. } | Op::Conv2dBwdWeight { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            if a.len() != 4 || b.len() != 4 {
                return err(format!("needs rank-4 inputs, got {a:?} and {b:?}"));
            }
            // Output size along one axis: (size + 2*padding - k) / stride + 1.
            let out = |size: usize, k: usize, stride: usize, padding: usize| -> Result<usize> {
                if stride == 0 || k == 0 || size + 2 * padding < k {
                    return Err(Error::graph(
                        op.describe(),
                        format!("a {k}-wide kernel (stride {stride}, padding {padding}) does not fit size {size}"),
                    ));
                }
                Ok((size + 2 * padding - k) / stride + 1)
            };
            match *op {
                Op::Conv2d { stride, padding, bias } => {
                    // (x [N,H,W,C], w [O,C,kh,kw][, bias [O]])
                    if a[3] != b[1] {
                        return err(format!("x {a:?} has {} channels but w {b:?} expects {}", a[3], b[1]));
                    }
                    if bias && shapes[2] != [b[0]] {
                        return err(format!("bias shape {:?} is not [{}]", shapes[2], b[0]));
                    }
                    Ok((vec![a[0], out(a[1], b[2], stride, padding)?, out(a[2], b[3], stride, padding)?, b[0]], d))
                }
                Op::Conv2dBwdData { stride, padding, h, w } => {
                    // (dy [N,Ho,Wo,O], w [O,C,kh,kw])
                    let (ho, wo) = (out(h, b[2], stride, padding)?, out(w, b[3], stride, padding)?);
                    if a[1..] != [ho, wo, b[0]] {
                        return err(format!("dy {a:?} does not match a {h}x{w} input convolved with w {b:?}"));
                    }
                    Ok((vec![a[0], h, w, b[1]], d))
                }
                Op::Conv2dBwdWeight { stride, padding, kh, kw } => {
                    // (x [N,H,W,C], dy [N,Ho,Wo,O])
                    let (ho, wo) = (out(a[1], kh, stride, padding)?, out(a[2], kw, stride, padding)?);
                    if a[0] != b[0] || b[1] != ho || b[2] != wo {
                        return err(format!("dy {b:?} does not match x {a:?} convolved with a {kh}x{kw} kernel"));
                    }
                    Ok((vec![b[3], a[3], kh, kw], d))
                }
                _ => unreachable!(),
            }
        }
        Op::GroupNorm { groups, .. } | Op::GroupNormBwd { groups, .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            if x.len() < 2 {
                return err(format!("needs x [N, ..., C] of rank >= 2, got {x:?}"));
            }
            let c = x[x.len() - 1];
            if *groups == 0 || c % groups != 0 {
                return err(format!("{c} channels do not split into {groups} groups"));
            }
            if shapes[1] != [c] || shapes[2] != [c] {
                return err(format!("weight/bias shapes {:?}/{:?} are not [{c}]", shapes[1], shapes[2]));
            }
            if shapes.len() == 4 && shapes[3] != x {
                return err(format!("dy shape {:?} differs from x shape {x:?}", shapes[3]));
            }
            Ok((x.to_vec(), d))
        }

        // q [B,Tq,H,D], k and v [B,Tk,H,D], o and dy like q, stats [B,H,2,Tq] f32.
        Op::Attention { .. } | Op::AttentionStats { .. } | Op::AttentionBwd { .. } => {
            // Every input but the f32 stats shares the storage dtype.
            let n_same = if matches!(op, Op::AttentionBwd { .. }) { 4 } else { shapes.len() };
            require_float(op, &dtypes[..n_same])?;
            let d = same_dtype(op, &dtypes[..n_same])?;
            let (q, k) = (shapes[0], shapes[1]);
            if q.len() != 4 || k.len() != 4 || q[0] != k[0] || q[2] != k[2] || q[3] != k[3] {
                return err(format!("q {q:?} and k {k:?} must be [B, T, H, D] with equal B, H and D"));
            }
            let (b, tq, h, hd, tk) = (q[0], q[1], q[2], q[3], k[1]);
            match op {
                Op::Attention { .. } => {
                    if shapes[2] != k {
                        return err(format!("v {:?} must have k's shape {k:?}", shapes[2]));
                    }
                    Ok((q.to_vec(), d))
                }
                Op::AttentionStats { .. } => {
                    if shapes[2] != q || shapes[3] != q {
                        return err(format!("o {:?} and dy {:?} must have q's shape {q:?}", shapes[2], shapes[3]));
                    }
                    Ok((vec![b, h, 2, tq], DType::F32))
                }
                _ => {
                    if shapes[2] != k || shapes[3] != q {
                        return err(format!("v {:?} must be k's shape {k:?} and dy {:?} q's shape {q:?}", shapes[2], shapes[3]));
                    }
                    if shapes[4] != [b, h, 2, tq] || dtypes[4] != DType::F32 {
                        return err(format!("stats must be f32 {:?}, got {} {:?}", [b, h, 2, tq], dtypes[4], shapes[4]));
                    }
                    Ok((vec![b, tq + 2 * tk, h, hd], d))
                }
            }
        }
        Op::Geglu | Op::GegluBwd => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let x = shapes[0];
            let Some(&c2) = x.last() else { return err("needs rank >= 1".into()) };
            if c2 % 2 != 0 {
                return err(format!("last axis of {x:?} must be even (hidden and gate halves)"));
            }
            let mut half = x.to_vec();
            *half.last_mut().unwrap() = c2 / 2;
            if matches!(op, Op::GegluBwd) {
                if shapes[1] != half.as_slice() {
                    return err(format!("dy shape {:?} must be {half:?} for x {x:?}", shapes[1]));
                }
                return Ok((x.to_vec(), d));
            }
            Ok((half, d))
        }
        Op::TimestepEmbedding { dim, shift, .. } => {
            // Float timesteps (cast integer ones first); the embedding is computed in f32 as diffusers does.
            require_float(op, dtypes)?;
            let t = shapes[0];
            if t.len() != 1 {
                return err(format!("timesteps must have shape [N], got {t:?}"));
            }
            if *dim < 2 || (dim / 2) as f32 - shift == 0.0 {
                return err(format!("dim {dim} with shift {shift} gives no frequencies"));
            }
            Ok((vec![t[0], *dim], DType::F32))
        }

        Op::BoxIou { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (a, b) = (shapes[0], shapes[1]);
            let (ra, rb) = (a.len(), b.len());
            if ra < 2 || ra != rb || a[ra - 1] != 4 || b[rb - 1] != 4 || a[..ra - 2] != b[..rb - 2] {
                return err(format!("needs boxes [..., N, 4] and [..., M, 4] with the same leading axes, got {a:?} and {b:?}"));
            }
            let mut out = a[..ra - 1].to_vec();
            out.push(b[rb - 2]);
            Ok((out, d))
        }
        Op::BoxEncode { .. } | Op::BoxDecode { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (r, t) = (shapes[0], shapes[1]);
            let enc = matches!(op, Op::BoxEncode { .. });
            let ok = r.len() == 2
                && r[1] == 4
                && t.len() == 2
                && t[0] == r[0]
                && if enc { t[1] == 4 } else { t[1] % 4 == 0 };
            if !ok {
                let want = if enc { "[N, 4] and [N, 4]" } else { "[N, 4] and [N, 4K]" };
                return err(format!("needs {want}, got {r:?} and {t:?}"));
            }
            Ok((t.to_vec(), d))
        }
        Op::Nms { .. } => {
            let (b, s, c) = (shapes[0], shapes[1], shapes[2]);
            if dtypes[0] != DType::F32 || !dtypes[1].is_float() || !matches!(dtypes[2], DType::I32 | DType::I64) {
                return err(format!("needs f32 boxes, float scores and i32/i64 classes, got {dtypes:?}"));
            }
            if b.len() != 2 || b[1] != 4 || s != [b[0]] || c != [b[0]] {
                return err(format!("needs boxes [N, 4], scores [N], classes [N], got {b:?}, {s:?}, {c:?}"));
            }
            let Op::Nms { max_out, .. } = op else { unreachable!() };
            Ok((vec![max_out + 1], DType::I64))
        }
        Op::TopK { k } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            match s.last() {
                Some(&n) if *k <= n => {
                    let mut out = s.to_vec();
                    *out.last_mut().unwrap() = *k;
                    Ok((out, DType::I64))
                }
                _ => err(format!("k = {k} needs a last axis of at least k, got {s:?}")),
            }
        }
        Op::Gather { axis } => {
            let (x, idx) = (shapes[0], shapes[1]);
            if !matches!(dtypes[1], DType::I32 | DType::I64) {
                return err(format!("indices must be i32 or i64, got {}", dtypes[1]));
            }
            check_axis(op, *axis, x.len(), x)?;
            if idx.len() != x.len() || idx.iter().zip(x).enumerate().any(|(d, (i, s))| d != *axis && i > s) {
                return err(format!("indices {idx:?} must have the rank of {x:?} and no larger size off axis {axis}"));
            }
            Ok((idx.to_vec(), dtypes[0]))
        }
        Op::GatherBwd { axis, size } => {
            let (idx, dy) = (shapes[0], shapes[1]);
            if !matches!(dtypes[0], DType::I32 | DType::I64) {
                return err(format!("indices must be i32 or i64, got {}", dtypes[0]));
            }
            require_float(op, &dtypes[1..])?;
            check_axis(op, *axis, dy.len(), dy)?;
            if idx != dy {
                return err(format!("indices {idx:?} and dy {dy:?} differ in shape"));
            }
            let mut out = dy.to_vec();
            out[*axis] = *size;
            Ok((out, dtypes[1]))
        }

        Op::RoiAlign { out_h, out_w, .. } | Op::RoiAlignBwd { out_h, out_w, .. } => {
            let bwd = matches!(op, Op::RoiAlignBwd { .. });
            let (ri, di) = if bwd { (0, 1) } else { (1, 0) };
            let (rois, data) = (shapes[ri], shapes[di]);
            if dtypes[ri] != DType::F32 {
                return err(format!("rois must be f32 (box coordinates in f16/bf16 are too coarse), got {}", dtypes[ri]));
            }
            require_float(op, &dtypes[di..di + 1])?;
            if rois.len() != 2 || rois[1] != 5 {
                return err(format!("rois must be [K, 5], got {rois:?}"));
            }
            if *out_h == 0 || *out_w == 0 {
                return err("out_h and out_w must be positive".into());
            }
            if data.len() != 4 {
                return err(format!("{} must be rank 4, got {data:?}", if bwd { "dy" } else { "feat [N,H,W,C]" }));
            }
            if let Op::RoiAlignBwd { n, h, w, .. } = op {
                if data[..3] != [rois[0], *out_h, *out_w] {
                    return err(format!("dy {data:?} must be [K={}, {out_h}, {out_w}, C]", rois[0]));
                }
                Ok((vec![*n, *h, *w, data[3]], dtypes[di]))
            } else {
                Ok((vec![rois[0], *out_h, *out_w, data[3]], dtypes[di]))
            }
        }
        Op::FpnLevels { k_min, k_max, .. } => {
            require_float(op, dtypes)?;
            let s = shapes[0];
            if s.len() != 2 || (s[1] != 5 && s[1] != 4) {
                return err(format!("needs rois [K, 5] or boxes [K, 4], got {s:?}"));
            }
            if k_min > k_max {
                return err(format!("k_min {k_min} > k_max {k_max}"));
            }
            Ok((vec![s[0]], DType::I64))
        }
        Op::SigmoidFocalLoss { .. } | Op::SigmoidFocalLossBwd { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            if shapes.iter().any(|s| *s != shapes[0]) {
                return err(format!("inputs must have the same shape, got {shapes:?}"));
            }
            Ok((shapes[0].to_vec(), d))
        }
        Op::GiouLoss { .. } | Op::GiouLossBwd { .. } => {
            require_float(op, dtypes)?;
            let d = same_dtype(op, dtypes)?;
            let (p, t) = (shapes[0], shapes[1]);
            if p.last() != Some(&4) || p != t {
                return err(format!("pred and target must be the same shape [..., 4], got {p:?} and {t:?}"));
            }
            let lead = p[..p.len() - 1].to_vec();
            if let Op::GiouLossBwd { .. } = op {
                if shapes[2] != lead.as_slice() {
                    return err(format!("dy {:?} must be {lead:?}", shapes[2]));
                }
                return Ok((p.to_vec(), d));
            }
            Ok((lead, d))
        }
    }
}
