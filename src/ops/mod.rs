//! Ops: what a graph can compute, one folder per op family.
//!
//! The table below ([`op_table!`]) is the one list of ops: each line gives a variant of [`Op`], its kind name
//! (in [`OP_KINDS`]) and its arity (a number, an expression of the op's fields, or [`Arity::AtLeast`]), under
//! the family that holds it. Everything that depends on the op is generated from it: `Op::kind`, `Op::family`,
//! `Op::arity`, and the dispatch of [`infer`], of the backward rules (`graph::autodiff`), of the CPU reference
//! (`backend::cpu`), of the kernel launchers (`backend::launch`) and of the parity and gradient-check cases.
//!
//! A family folder `ops/<family>/` (named after its `kernels/<family>.cu` where there is one) holds:
//! - `mod.rs`: the spec, `infer` (shape and dtype rule) and `backward` (the gradients of the inputs, as graph
//!   nodes) of each of its ops;
//! - `cpu.rs`: the CPU reference, `run` (computed in f32/f64, see `backend::cpu`);
//! - `launch.rs`: `launches`, how a node maps onto the `.cu` entry points (`None` for an unsupported dtype);
//! - `parity.rs`: `cases` (parity cases against the CPU reference, and gradient-check cases flagged
//!   `gradcheck`) and `bench_cases`.

use crate::backend::cpu::View;
use crate::backend::launch::{Launch, NodeCtx};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::parity::{Case, Work};
use crate::tensor::DType;

pub mod attention;
pub mod boxes;
pub mod conv;
pub mod det_losses;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod groupnorm;
pub mod movement;
pub mod msda;
pub mod norm;
pub mod reduce;
pub mod roi;
pub mod sd_misc;

/// The CPU fast path of `op` (f32 accumulation, blocked, all cores), or `None` where its family has none for
/// this op, dtype or shape and the exact reference ([`run_cpu`]) runs instead. Called by
/// `backend::cpu::run_op_mode` after it has checked the call. A family's fast code lives in its `fast.rs` and is
/// checked against the reference by the parity suite run on the `cpu` backend (`tests/cpu_fast.rs`).
pub(crate) fn run_cpu_fast(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Option<Result<()>> {
    match op {
        Op::Conv2d { .. } | Op::Conv2dBwdData { .. } | Op::Conv2dBwdWeight { .. } => conv::fast::run(op, ins, out, out_bytes),
        Op::GroupNorm { .. } | Op::GroupNormBwd { .. } => groupnorm::fast::run(op, ins, out, out_bytes),
        Op::Softmax { .. } | Op::SoftmaxBwd { .. } | Op::LayerNorm { .. } | Op::LayerNormBwd { .. } => {
            norm::fast::run(op, ins, out, out_bytes)
        }
        Op::Geglu | Op::GegluBwd => sd_misc::fast::run(op, ins, out, out_bytes),
        Op::Unary(_) | Op::UnaryBwd(_) => elementwise::fast::run(op, ins, out, out_bytes),
        Op::Attention { .. } | Op::AttentionStats { .. } | Op::AttentionBwd { .. } => attention::fast::run(op, ins, out, out_bytes),
        Op::Msda { .. } | Op::MsdaBwdValue { .. } | Op::MsdaBwdLocAttn { .. } => msda::fast::run(op, ins, out, out_bytes),
        _ => None,
    }
}

/// Extra parity cases for the CPU fast paths only (run by `tests/cpu_fast.rs` with every parity case): shapes
/// large enough to cross a fast path's block and thread boundaries, too slow for the emulator.
pub fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(conv::parity::cpu_fast_cases());
    v.extend(groupnorm::parity::cpu_fast_cases());
    v.extend(norm::parity::cpu_fast_cases());
    v.extend(sd_misc::parity::cpu_fast_cases());
    v.extend(elementwise::parity::cpu_fast_cases());
    v.extend(attention::parity::cpu_fast_cases());
    v.extend(msda::parity::cpu_fast_cases());
    v
}

pub use elementwise::{BinaryOp, UnaryOp};
pub use reduce::ReduceOp;

/// How many inputs an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl From<usize> for Arity {
    fn from(n: usize) -> Arity {
        Arity::Exactly(n)
    }
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl std::fmt::Display for Arity {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Arity::Exactly(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// Generates [`Op`], [`OP_KINDS`], [`FAMILIES`], `Op::{kind, family, arity}` and the per-family dispatch from
/// the op table. Line syntax: `Variant { field: Type, .. }` (or `Variant(Type)`, or `Variant`) `=> "kind",
/// arity;` where `arity` may use the fields by name (bound as references).
macro_rules! op_table {
    ($(
        $fam:ident {
            $(
                $(#[$doc:meta])*
                $V:ident $( { $( $(#[$fdoc:meta])* $f:ident : $t:ty ),* $(,)? } )? $( ( $tup:ty ) )?
                    => $kind:literal, $arity:expr;
            )*
        }
    )*) => {
        /// A graph operation. Leaves (`Input`, `Param`, `Fill`) have no inputs.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $($(
                $(#[$doc])*
                $V $( { $( $(#[$fdoc])* $f: $t ),* } )? $( ($tup) )?,
            )*)*
        }

        /// Every op kind by name; the gradient-check coverage test walks this list.
        pub const OP_KINDS: &[&str] = &[$($($kind,)*)*];

        /// Every op family (a folder `ops/<family>/`).
        pub const FAMILIES: &[&str] = &[$(stringify!($fam),)*];

        impl Op {
            /// The op's kind, as listed in [`OP_KINDS`].
            pub fn kind(&self) -> &'static str {
                match self {
                    $($(Op::$V { .. } => $kind,)*)*
                }
            }

            /// The family (folder under `ops/`) that holds the op.
            pub fn family(&self) -> &'static str {
                match self {
                    $($(Op::$V { .. } => stringify!($fam),)*)*
                }
            }

            /// How many inputs the op takes.
            #[allow(unused_variables)]
            pub fn arity(&self) -> Arity {
                match self {
                    $($(Op::$V { $($($f,)*)? .. } => Arity::from($arity),)*)*
                }
            }
        }

        /// The family's shape and dtype rule (the arity is already checked).
        fn infer_in_family(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
            match op {
                $($(Op::$V { .. } => $fam::infer(op, shapes, dtypes),)*)*
            }
        }

        /// The gradients of node `id`'s inputs `ins` given the gradient `dy` of its output (`None` where
        /// `needs` is false or the input gets no gradient).
        pub fn backward(g: &mut Graph, op: &Op, id: NodeId, ins: &[NodeId], dy: NodeId, needs: &[bool]) -> Result<Vec<Option<NodeId>>> {
            match op {
                $($(Op::$V { .. } => $fam::backward(g, op, id, ins, dy, needs),)*)*
            }
        }

        /// Runs `op` on the CPU reference (inputs, bytes and output shape already checked).
        pub(crate) fn run_cpu(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
            match op {
                $($(Op::$V { .. } => $fam::cpu::run(op, ins, out, out_bytes),)*)*
            }
        }

        /// The kernel launches of a node, or `None` where its family has no kernel for it.
        pub(crate) fn launches(ctx: &NodeCtx) -> Result<Option<Vec<Launch>>> {
            match &ctx.node.op {
                $($(Op::$V { .. } => $fam::launch::launches(ctx),)*)*
            }
        }

        /// Every family's cases (parity cases and gradient-check cases), by family.
        pub fn cases_by_family() -> Vec<(&'static str, Vec<Case>)> {
            vec![$((stringify!($fam), $fam::parity::cases()),)*]
        }

        /// Every family's bench cases.
        pub fn bench_cases() -> Vec<(Case, Work)> {
            let mut v = Vec::new();
            $(v.extend($fam::parity::bench_cases());)*
            v
        }
    };
}

op_table! {
    elementwise {
        /// A tensor filled with one value.
        Fill { value: f32 } => "fill", 0;
        Unary(UnaryOp) => "unary", 1;
        /// `dx = dy * f'(x)`; inputs `(x, dy)`.
        UnaryBwd(UnaryOp) => "unary_bwd", 2;
        Binary(BinaryOp) => "binary", 2;
        Cast { dtype: DType } => "cast", 1;
    }
    movement {
        /// Data fed at run time under `name`.
        Input { name: String } => "input", 0;
        /// A named parameter (its name is the checkpoint key).
        Param { name: String } => "param", 0;
        Reshape { shape: Vec<usize> } => "reshape", 1;
        /// `out.shape[i] = in.shape[perm[i]]`.
        Permute { perm: Vec<usize> } => "permute", 1;
        /// Repeat size-1 axes (after left-padding the rank) up to `shape`.
        BroadcastTo { shape: Vec<usize> } => "broadcast_to", 1;
        Concat { axis: usize } => "concat", Arity::AtLeast(1);
        /// `[start, end)` along `axis`.
        Slice { axis: usize, start: usize, end: usize } => "slice", 1;
        /// Zero padding along `axis`.
        Pad { axis: usize, before: usize, after: usize } => "pad", 1;
        /// The input unchanged, with no gradient (PyTorch's `detach`).
        StopGradient => "stop_gradient", 1;
    }
    reduce {
        Reduce { op: ReduceOp, axes: Vec<usize>, keepdim: bool } => "reduce", 1;
    }
    norm {
        /// Softmax along `axis` (f32 accumulation).
        Softmax { axis: usize } => "softmax", 1;
        /// `dx = y * (dy - sum(dy * y))` along `axis`; inputs `(y, dy)`.
        SoftmaxBwd { axis: usize } => "softmax_bwd", 2;
        /// Normalise the last axis; inputs `(x)` or `(x, weight, bias)` when `affine`.
        LayerNorm { eps: f32, affine: bool } => "layer_norm", if *affine { 3 } else { 1 };
        /// Gradient of `LayerNorm` w.r.t. x; inputs `(x, dy)` or `(x, weight, dy)` when `affine`.
        LayerNormBwd { eps: f32, affine: bool } => "layer_norm_bwd", if *affine { 3 } else { 2 };
    }
    gemm {
        /// `op(a) @ op(b)` over the last two axes, batch axes broadcast; `ta`/`tb` transpose an operand.
        MatMul { ta: bool, tb: bool } => "matmul", 2;
    }
    conv {
        /// 2-D convolution, NHWC activations: inputs `(x [N,H,W,C], w [O,C,kh,kw][, bias [O]])` -> `[N,Ho,Wo,O]`,
        /// `Ho = (H + 2*padding - kh) / stride + 1` (zero padding; groups 1, dilation 1).
        Conv2d { stride: usize, padding: usize, bias: bool } => "conv2d", if *bias { 3 } else { 2 };
        /// Gradient of `Conv2d` w.r.t. x (a transposed convolution): inputs `(dy [N,Ho,Wo,O], w [O,C,kh,kw])` ->
        /// `dx [N,h,w,C]`.
        Conv2dBwdData { stride: usize, padding: usize, h: usize, w: usize } => "conv2d_bwd_data", 2;
        /// Gradient of `Conv2d` w.r.t. the weight: inputs `(x [N,H,W,C], dy [N,Ho,Wo,O])` -> `dw [O,C,kh,kw]`.
        Conv2dBwdWeight { stride: usize, padding: usize, kh: usize, kw: usize } => "conv2d_bwd_weight", 2;
    }
    groupnorm {
        /// Group norm over `x [N, ..., C]` (statistics per sample and group of `C/groups` channels, over every
        /// middle axis, biased variance), then `* weight[C] + bias[C]`, then SiLU when `silu`; inputs
        /// `(x, weight, bias)`.
        GroupNorm { groups: usize, eps: f32, silu: bool } => "group_norm", 3;
        /// Gradient of `GroupNorm` w.r.t. x; inputs `(x, weight, bias, dy)`.
        GroupNormBwd { groups: usize, eps: f32, silu: bool } => "group_norm_bwd", 4;
    }
    attention {
        /// Fused multi-head attention: inputs `(q [B,Tq,H,D], k [B,Tk,H,D], v [B,Tk,H,D])` -> `[B,Tq,H,D]` =
        /// `softmax(q k^T * scale) v` per (batch, head), f32 accumulation; `causal` masks key j > query i.
        Attention { causal: bool, scale: f32 } => "attention", 3;
        /// Per-row statistics for the attention backward: inputs `(q, k, o, dy)` (o the forward output) ->
        /// f32 `[B, H, 2, Tq]`: `[.., 0, i]` = logsumexp_j of the scaled (masked) logits of query i, `[.., 1, i]` =
        /// `sum_d dy[i,d] * o[i,d]`. Not differentiable.
        AttentionStats { causal: bool, scale: f32 } => "attention_stats", 4;
        /// Attention gradients: inputs `(q, k, v, dy, stats)` (stats from `AttentionStats`) -> `[B, Tq + 2 Tk, H, D]`
        /// = (dq, dk, dv) concatenated along axis 1.
        AttentionBwd { causal: bool, scale: f32 } => "attention_bwd", 5;
    }
    sd_misc {
        /// `x [..., 2C] -> [..., C] = x[..., :C] * gelu_erf(x[..., C:])` (diffusers GEGLU).
        Geglu => "geglu", 1;
        /// Gradient of `Geglu`: inputs `(x [..., 2C], dy [..., C])` -> dx `[..., 2C]`.
        GegluBwd => "geglu_bwd", 2;
        /// Sinusoidal timestep embedding, input t `[N]` -> f32 `[N, dim]`, as diffusers `get_timestep_embedding`
        /// (`shift` = `downscale_freq_shift`). Not differentiable.
        TimestepEmbedding { dim: usize, flip_sin_to_cos: bool, shift: f32, max_period: f32 } => "timestep_embedding", 1;
    }
    boxes {
        /// IoU (or GIoU when `giou`) of every pair: inputs (a [..., N, 4], b [..., M, 4]) xyxy boxes with the same
        /// leading axes -> [..., N, M] (torchvision `box_iou` / `generalized_box_iou`). Not differentiable.
        BoxIou { giou: bool } => "box_iou", 2;
        /// Faster R-CNN box deltas of `target` relative to `reference` (both [N, 4]) -> [N, 4] (torchvision
        /// `BoxCoder.encode_single(target, reference)`). Not differentiable.
        BoxEncode { weights: [f32; 4] } => "box_encode", 2;
        /// Boxes from deltas: inputs (reference [N, 4], deltas [N, 4K]) -> [N, 4K], dw/dh clamped to `clamp` from
        /// above (torchvision `BoxCoder.decode_single`). Not differentiable.
        BoxDecode { weights: [f32; 4], clamp: f32 } => "box_decode", 2;
        /// Batched (per-class) NMS: inputs (boxes [N, 4] f32, scores [N] float, classes [N] i32/i64) -> i64
        /// [max_out + 1]: kept indices by descending score, padded with -1, then the count kept.
        Nms { iou_threshold: f32, max_out: usize } => "nms", 3;
        /// Indices (i64) of the `k` largest along the last axis, descending, ties to the lower index, NaN largest.
        TopK { k: usize } => "topk", 1;
        /// torch.gather: inputs (x, idx i32/i64 of x's rank, idx.shape[d] <= x.shape[d] off `axis`) -> idx's shape.
        Gather { axis: usize } => "gather", 2;
        /// Scatter-add of `dy` at `idx` along `axis` into an output of `size` there: inputs (idx, dy) -> dx.
        GatherBwd { axis: usize, size: usize } => "gather_bwd", 2;
    }
    roi {
        /// RoI Align as torchvision.ops.roi_align on NHWC features; inputs (feat [N,H,W,C], rois [K,5] f32 =
        /// (batch_index, x1, y1, x2, y2) in input pixels) -> [K, out_h, out_w, C]. `sampling_ratio <= 0`: adaptive
        /// (ceil(roi_size / out_size) samples per bin and axis).
        RoiAlign { out_h: usize, out_w: usize, spatial_scale: f32, sampling_ratio: i32, aligned: bool } => "roi_align", 2;
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
        } => "roi_align_bwd", 2;
        /// FPN level of each RoI (torchvision LevelMapper): input rois [K,5] (or boxes [K,4]) -> i64 [K] =
        /// clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max) - k_min (eps added
        /// to the level as torchvision's code does). mmdet's `finest_scale = 56` mapper is canonical_scale 56,
        /// canonical_level = k_min (or equivalently 224 at level k_min + 2).
        FpnLevels { k_min: i32, k_max: i32, canonical_scale: f32, canonical_level: i32, eps: f32 } => "fpn_levels", 1;
    }
    det_losses {
        /// torchvision.ops.sigmoid_focal_loss, reduction none; inputs (logits, targets) same shape -> same shape.
        /// `alpha < 0` disables the alpha weighting.
        SigmoidFocalLoss { alpha: f32, gamma: f32 } => "sigmoid_focal_loss", 2;
        /// Gradient of `SigmoidFocalLoss` w.r.t. the logits; inputs (logits, targets, dy) -> dlogits.
        SigmoidFocalLossBwd { alpha: f32, gamma: f32 } => "sigmoid_focal_loss_bwd", 3;
        /// 1 - GIoU of matching boxes (torchvision generalized_box_iou_loss, reduction none); inputs
        /// (pred [..., 4], target [..., 4]) -> [...].
        GiouLoss { eps: f32 } => "giou_loss", 2;
        /// Gradient of `GiouLoss` w.r.t. pred; inputs (pred, target, dy [...]) -> dpred [..., 4].
        GiouLossBwd { eps: f32 } => "giou_loss_bwd", 3;
    }
    dropout {
        /// Inverted dropout with a counter-based mask: inputs `(x, key i64 [2] = (seed, step))` -> x's shape;
        /// element i kept when the hash of (seed, step, i) clears `p`, then scaled by `1 / (1 - p)`.
        Dropout { p: f32 } => "dropout", 2;
    }
    msda {
        /// Multi-scale deformable attention (`multi_scale_deformable_attn_pytorch`: bilinear `grid_sample`,
        /// zero padding, align_corners=False): inputs `(value [B,S,H,D], loc f32 [B,Q,H,L,P,2] (x, y) in [0, 1],
        /// attn [B,Q,H,L,P])` -> `[B,Q,H*D]`; `levels` = (h, w) of each level, S = sum h*w.
        Msda { levels: Vec<[usize; 2]> } => "msda", 3;
        /// Gradient of `Msda` w.r.t. value: inputs `(loc, attn, dy [B,Q,H*D])` -> `[B,S,H,D]`.
        MsdaBwdValue { levels: Vec<[usize; 2]> } => "msda_bwd_value", 3;
        /// Gradient of `Msda` w.r.t. loc and attn: inputs `(value, loc, attn, dy)` -> f32 `[B,Q,H,L,P,3]` =
        /// (d loc_x, d loc_y, d attn).
        MsdaBwdLocAttn { levels: Vec<[usize; 2]> } => "msda_bwd_loc_attn", 4;
    }
}

/// Every family's cases (parity cases and gradient-check cases).
pub fn cases() -> Vec<Case> {
    cases_by_family().into_iter().flat_map(|(_, c)| c).collect()
}

impl Op {
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

/// Scratch bytes node `id`'s kernels need (0 for most ops): the planner places them like a buffer alive only
/// during the node, and the backends hand them to the launcher (`NodeCtx::ws`). A function of shapes and dtypes
/// only, so every backend's plan is the same (the CPU backend does not use it).
pub fn workspace_bytes(graph: &Graph, id: NodeId) -> usize {
    let node = graph.node(id);
    let inputs: Vec<&crate::graph::Node> = node.inputs.iter().map(|i| graph.node(*i)).collect();
    match &node.op {
        Op::Reduce { .. } => reduce::launch::workspace(node, &inputs),
        Op::Conv2dBwdWeight { .. } => conv::launch::workspace(node, &inputs),
        Op::GroupNorm { .. } | Op::GroupNormBwd { .. } => groupnorm::launch::workspace(node, &inputs),
        Op::MsdaBwdValue { .. } => msda::launch::workspace(node, &inputs),
        _ => 0,
    }
}

/// Shape and dtype of `op` applied to inputs of the given shapes and dtypes, or an error naming the op and shapes.
pub fn infer(op: &Op, shapes: &[&[usize]], dtypes: &[DType]) -> Result<(Vec<usize>, DType)> {
    let arity = op.arity();
    if !arity.accepts(shapes.len()) || dtypes.len() != shapes.len() {
        return Err(Error::graph(op.describe(), format!("takes {arity} inputs, got {}", shapes.len())));
    }
    infer_in_family(op, shapes, dtypes)
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

// ---- helpers for the families' shape rules and backward rules ----------------------------------------------

/// The error of a shape or dtype rule.
fn err<T>(op: &Op, msg: String) -> Result<T> {
    Err(Error::graph(op.describe(), msg))
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

/// The backward rule of the ops that have none (the `*_bwd` ops).
fn no_second_order<T>(op: &Op) -> Result<T> {
    Err(Error::graph(op.describe(), "second-order gradients are not supported"))
}

