//! Finite-difference gradient checks of every op's backward rule on the CPU backend.
//!
//! Each case builds `loss = sum(op(inputs) * r)` for a fixed random `r`, takes the analytic gradient with
//! respect to every input (and parameter) from the autodiff graph, and compares it with central differences.
//! The `*_bwd` ops have no backward of their own: they are checked here as the gradients of their forward ops
//! (the coverage test asserts they appear in the backward graphs).
//!
//! Tolerance: the CPU backend computes in f32, so a central difference with step h = 1e-2 carries a rounding
//! error of about 1e-6 * sum|terms| / h (~1e-4 here) plus a truncation error of order h^2 (~1e-4): we accept
//! |analytic - numeric| <= 1e-3 * (1 + |numeric|) (the worst case seen is 3.6e-4). Inputs of non-smooth ops stay at least 0.1 from the kinks.

mod common;

use std::collections::BTreeSet;

use instagen::graph::{autodiff, BinaryOp, Graph, NodeId, ReduceOp, UnaryOp};
use instagen::nn;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

const H: f32 = 1e-2;

#[derive(Clone, Copy)]
enum Gen {
    Normal,
    /// In [0.5, 2]: for log, sqrt, rsqrt, recip, powf.
    Positive,
    /// |x| in [0.2, 1.5]: away from the kinks of relu and abs.
    AwayFromZero,
    /// Multiples of 1/64 in [-2, 2]: exact in f16, so a cast round trip is exact under perturbation by h.
    F16Grid,
    /// Odd multiples of 1/8 in [-2, 2]; never within 1/8 of an [`Gen::GridB`] value (no ties in max/min).
    GridA,
    /// Multiples of 1/4 in [-2, 2].
    GridB,
    /// Distinct values 0.07 apart, shuffled: no two within 2h (no ties in a reduce-max).
    Distinct,
}

fn generate(rng: &mut Rng, g: Gen, n: usize) -> Vec<f32> {
    if let Gen::Distinct = g {
        let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.07 - 0.035 * n as f32).collect();
        for i in (1..n).rev() {
            v.swap(i, rng.below(i + 1));
        }
        return v;
    }
    (0..n)
        .map(|_| match g {
            Gen::Positive => rng.range(0.5, 2.0),
            Gen::AwayFromZero => rng.range(0.2, 1.5) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 },
            Gen::F16Grid => (rng.range(-2.0, 2.0) * 64.0).round() / 64.0,
            Gen::GridA => (rng.range(-2.0, 2.0) * 4.0).floor() / 4.0 + 0.125,
            Gen::GridB => (rng.range(-2.0, 2.0) * 4.0).round() / 4.0,
            Gen::Normal | Gen::Distinct => rng.normal(),
        })
        .collect()
}

thread_local! {
    /// When set, `check` records the op kinds of its graphs and returns without running anything.
    static DRY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Kinds of ops that appeared in checked graphs (forward and backward).
static SEEN: std::sync::Mutex<BTreeSet<&'static str>> = std::sync::Mutex::new(BTreeSet::new());

fn loss_of(g: &Graph, loss: NodeId, store: &ParamStore, feed: &[(String, HostTensor)]) -> f32 {
    let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    common::run_cpu(g, store, &feed, &[loss])[0].to_f32()[0]
}

/// Check the gradients of `build(inputs)` w.r.t. every input and parameter.
fn check(name: &str, inputs: &[(&[usize], Gen)], build: impl Fn(&mut Graph, &[NodeId]) -> instagen::Result<NodeId>) {
    check_with(name, inputs, &mut Rng::new(name.len() as u64 * 7919 + 17), build)
}

fn check_with(
    name: &str,
    inputs: &[(&[usize], Gen)],
    rng: &mut Rng,
    build: impl Fn(&mut Graph, &[NodeId]) -> instagen::Result<NodeId>,
) {
    let mut g = Graph::new();
    let xs: Vec<NodeId> =
        inputs.iter().enumerate().map(|(i, (s, _))| g.input(&format!("x{i}"), s, DType::F32).unwrap()).collect();
    let out = build(&mut g, &xs).unwrap_or_else(|e| panic!("{name}: build failed: {e}"));
    let oshape = g.shape(out).to_vec();
    let r = g.input("r", &oshape, DType::F32).unwrap();
    let prod = g.mul(out, r).unwrap();
    let loss = g.sum_all(prod).unwrap();
    let params: Vec<(NodeId, String)> = g.params().into_iter().map(|(i, n)| (i, n.to_string())).collect();
    let mut wrt = xs.clone();
    wrt.extend(params.iter().map(|p| p.0));
    let n_fwd = g.len();
    let grads = autodiff::backward(&mut g, loss, &wrt).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    g.mark_output(loss);
    for d in &grads {
        g.mark_output(*d);
    }
    {
        let mut seen = SEEN.lock().unwrap();
        for n in g.nodes() {
            seen.insert(n.op.kind());
        }
    }
    let _ = n_fwd;
    if DRY.with(|d| d.get()) {
        return;
    }
    // Random inputs, parameters (non-trivial values, not the ones/zeros of init), and r.
    let mut feed: Vec<(String, HostTensor)> = inputs
        .iter()
        .enumerate()
        .map(|(i, (s, gk))| {
            let n: usize = s.iter().product();
            (format!("x{i}"), HostTensor::from_f32(s, DType::F32, &generate(rng, *gk, n)).unwrap())
        })
        .collect();
    let rn: usize = oshape.iter().product();
    feed.push(("r".into(), HostTensor::from_f32(&oshape, DType::F32, &rng.normal_vec(rn, 1.0)).unwrap()));
    let mut store = ParamStore::new();
    for (id, pname) in &params {
        let s = g.shape(*id).to_vec();
        let n: usize = s.iter().product();
        store.insert(pname, HostTensor::from_f32(&s, DType::F32, &rng.normal_vec(n, 0.5)).unwrap());
    }
    let feed_ref: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let analytic = common::run_cpu(&g, &store, &feed_ref, &grads);

    // On the f16 grid the step must keep x +- h exact in f16: 1/64.
    let h = if inputs.iter().any(|(_, g)| matches!(g, Gen::F16Grid)) { 1.0 / 64.0 } else { H };
    let mut worst = 0.0f32;
    for (k, w) in wrt.iter().enumerate() {
        let a = analytic[k].to_f32();
        let is_param = k >= xs.len();
        for j in 0..a.len() {
            let eval = |delta: f32| {
                let mut f = feed.clone();
                let mut s = store.clone();
                let t: &mut HostTensor = if is_param {
                    let pname = &params[k - xs.len()].1;
                    let mut t = s.get(pname).unwrap().clone();
                    let mut v = t.to_f32();
                    v[j] += delta;
                    t = HostTensor::from_f32(&t.shape, DType::F32, &v).unwrap();
                    s.insert(pname, t);
                    return loss_of(&g, loss, &s, &f);
                } else {
                    &mut f[k].1
                };
                let mut v = t.to_f32();
                v[j] += delta;
                *t = HostTensor::from_f32(&t.shape.clone(), DType::F32, &v).unwrap();
                loss_of(&g, loss, &s, &f)
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            let err = (a[j] - numeric).abs() / (1.0 + numeric.abs());
            worst = worst.max(err);
            assert!(
                err <= 1e-3,
                "{name}: d loss / d {} [{j}] analytic {} vs numeric {numeric} (node {})",
                if is_param { params[k - xs.len()].1.clone() } else { format!("x{k}") },
                a[j],
                w.0
            );
        }
    }
    eprintln!("{name}: ok (worst scaled error {worst:.2e})");
}

#[test]
fn unary_ops() {
    use UnaryOp::*;
    let cases: Vec<(UnaryOp, Gen)> = vec![
        (Neg, Gen::Normal),
        (Exp, Gen::Normal),
        (Log, Gen::Positive),
        (Sqrt, Gen::Positive),
        (Rsqrt, Gen::Positive),
        (Recip, Gen::Positive),
        (Abs, Gen::AwayFromZero),
        (Square, Gen::Normal),
        (Tanh, Gen::Normal),
        (Sigmoid, Gen::Normal),
        (Relu, Gen::AwayFromZero),
        (Gelu, Gen::Normal),
        (GeluTanh, Gen::Normal),
        (Silu, Gen::Normal),
        (Sin, Gen::Normal),
        (Cos, Gen::Normal),
        (Affine { mul: -1.5, add: 0.25 }, Gen::Normal),
        (Powf(1.7), Gen::Positive),
    ];
    for (u, gk) in cases {
        check(&format!("unary {u:?}"), &[(&[3, 5], gk)], |g, x| g.unary(u, x[0]));
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    use BinaryOp::*;
    let shapes: [(&[usize], &[usize]); 3] = [(&[3, 4], &[3, 4]), (&[2, 3, 4], &[4]), (&[3, 1], &[1, 4])];
    for op in [Add, Sub, Mul, Div, Max, Min, Eq, Gt, Ge] {
        for (sa, sb) in shapes {
            // Max/Min/comparisons draw a and b from interleaved grids, so no pair is within h of a tie.
            let (ga, gb) = match op {
                Div => (Gen::Normal, Gen::Positive),
                Max | Min | Eq | Gt | Ge => (Gen::GridA, Gen::GridB),
                _ => (Gen::Normal, Gen::Normal),
            };
            check(&format!("binary {op:?} {sa:?} {sb:?}"), &[(sa, ga), (sb, gb)], |g, x| g.binary(op, x[0], x[1]));
        }
    }
}

#[test]
fn reductions() {
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
        for (axes, keep) in [(&[1usize][..], false), (&[0, 2][..], true), (&[2][..], true), (&[0, 1, 2][..], false)] {
            check(&format!("reduce {op:?} {axes:?} keep={keep}"), &[(&[2, 3, 4], Gen::Distinct)], |g, x| {
                g.reduce(op, x[0], axes, keep)
            });
        }
    }
}

#[test]
fn matmul_all_transposes_and_batch_broadcast() {
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a: &[usize] = if ta { &[2, 4, 3] } else { &[2, 3, 4] };
        let b: &[usize] = if tb { &[5, 4] } else { &[4, 5] };
        check(&format!("matmul ta={ta} tb={tb}"), &[(a, Gen::Normal), (b, Gen::Normal)], |g, x| {
            g.matmul_t(x[0], x[1], ta, tb)
        });
    }
    check("batched matmul broadcast", &[(&[2, 1, 3, 4], Gen::Normal), (&[3, 4, 2], Gen::Normal)], |g, x| {
        g.matmul(x[0], x[1])
    });
}

#[test]
fn softmax_and_layer_norm() {
    for axis in [0, 1, 2] {
        check(&format!("softmax axis {axis}"), &[(&[2, 3, 4], Gen::Normal)], |g, x| g.softmax(x[0], axis));
    }
    check("layer_norm", &[(&[3, 6], Gen::Normal)], |g, x| g.layer_norm(x[0], None, 1e-5));
    check("layer_norm affine (params)", &[(&[2, 3, 6], Gen::Normal)], |g, x| nn::layer_norm(g, "ln", x[0], 1e-5));
}

#[test]
fn data_movement() {
    check("reshape", &[(&[2, 6], Gen::Normal)], |g, x| g.reshape(x[0], &[3, 4]));
    check("permute", &[(&[2, 3, 4], Gen::Normal)], |g, x| g.permute(x[0], &[2, 0, 1]));
    check("broadcast_to", &[(&[3, 1], Gen::Normal)], |g, x| g.broadcast_to(x[0], &[2, 3, 4]));
    check("concat", &[(&[2, 1, 3], Gen::Normal), (&[2, 2, 3], Gen::Normal), (&[2, 3, 3], Gen::Normal)], |g, x| {
        g.concat(x, 1)
    });
    check("slice", &[(&[3, 7], Gen::Normal)], |g, x| g.slice(x[0], 1, 2, 5));
    check("pad", &[(&[3, 2], Gen::Normal)], |g, x| g.pad(x[0], 0, 1, 2));
    check("cast f32->f16->f32", &[(&[4, 3], Gen::F16Grid)], |g, x| {
        let h = g.cast(x[0], DType::F16)?;
        g.cast(h, DType::F32)
    });
    check("fill (constant operand)", &[(&[2, 3], Gen::Normal)], |g, x| {
        let c = g.fill(2.5, &[3], DType::F32);
        g.mul(x[0], c)
    });
}

#[test]
fn linear_and_attention_params() {
    check("linear (params)", &[(&[2, 3, 4], Gen::Normal)], |g, x| nn::linear(g, "fc", x[0], 5, true));
    check("self-attention block (params)", &[(&[1, 3, 4], Gen::Normal)], |g, x| {
        nn::self_attention(g, "attn", x[0], 2, None)
    });
}

/// Every kind in `OP_KINDS` appears in some checked graph (forward or backward). Runs the case builders in
/// dry mode: graphs are built and recorded, nothing is run.
#[test]
fn every_op_kind_is_gradient_checked() {
    DRY.with(|d| d.set(true));
    unary_ops();
    binary_ops_with_broadcasting();
    reductions();
    matmul_all_transposes_and_batch_broadcast();
    softmax_and_layer_norm();
    data_movement();
    linear_and_attention_params();

    conv2d_cases();
    group_norm_cases();
    upsample_nearest2x_case();

    attention_ops();
    sd_misc_ops();

    gather_and_box_ops();

    roi_align_levels_and_detection_losses();

    DRY.with(|d| d.set(false));
    let seen = SEEN.lock().unwrap();
    let missing: Vec<&&str> = instagen::graph::op::OP_KINDS.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(missing.is_empty(), "op kinds without a gradient check: {missing:?}");
}

#[test]
fn conv2d_cases() {
    use instagen::graph::Op;
    // (x shape, cout, k, stride, padding): 3x3 and 1x1, stride 1 and 2, padding 0 and 1, odd sizes.
    let cases: [(&[usize], usize, usize, usize, usize); 5] = [
        (&[2, 4, 5, 3], 2, 3, 1, 1),
        (&[1, 5, 5, 2], 3, 3, 2, 1),
        (&[1, 6, 5, 2], 2, 3, 2, 0),
        (&[2, 3, 4, 3], 2, 1, 1, 0),
        (&[1, 5, 4, 2], 3, 1, 2, 0),
    ];
    for (xs, cout, k, s, p) in cases {
        check(&format!("conv2d {xs:?} -> {cout} k{k} s{s} p{p} (params)"), &[(xs, Gen::Normal)], |g, x| {
            nn::spatial::conv2d(g, x[0], "conv", xs[3], cout, k, s, p)
        });
    }
    check("conv2d no bias, weight as input", &[(&[1, 4, 4, 2], Gen::Normal), (&[3, 2, 3, 3], Gen::Normal)], |g, x| {
        g.push(Op::Conv2d { stride: 1, padding: 1, bias: false }, &[x[0], x[1]])
    });
    // The backward ops are linear in each input; their own gradients are convolutions again.
    check("conv2d_bwd_data as a forward op", &[(&[1, 3, 3, 2], Gen::Normal), (&[2, 3, 3, 3], Gen::Normal)], |g, x| {
        g.push(Op::Conv2dBwdData { stride: 2, padding: 1, h: 6, w: 5 }, &[x[0], x[1]])
    });
    check("conv2d_bwd_weight as a forward op", &[(&[1, 5, 4, 2], Gen::Normal), (&[1, 3, 2, 3], Gen::Normal)], |g, x| {
        g.push(Op::Conv2dBwdWeight { stride: 2, padding: 1, kh: 3, kw: 3 }, &[x[0], x[1]])
    });
}

#[test]
fn group_norm_cases() {
    for (silu, eps) in [(false, 1e-5), (true, 1e-6)] {
        check(&format!("group_norm silu={silu} (params)"), &[(&[2, 3, 2, 6], Gen::Normal)], |g, x| {
            nn::spatial::group_norm(g, x[0], "norm", 3, eps, silu)
        });
    }
    check("group_norm rank 3, one group (params)", &[(&[2, 5, 4], Gen::Normal)], |g, x| {
        nn::spatial::group_norm(g, x[0], "norm", 1, 1e-5, true)
    });
}

#[test]
fn upsample_nearest2x_case() {
    check("upsample_nearest2x", &[(&[2, 2, 3, 2], Gen::Normal)], |g, x| nn::spatial::upsample_nearest2x(g, x[0]));
}

#[test]
fn attention_ops() {
    use instagen::graph::Op;
    // Cross-attention shape (Tk != Tq, several heads and batches), then causal self-attention.
    let (q, kv): (&[usize], &[usize]) = (&[2, 3, 2, 4], &[2, 5, 2, 4]);
    check("attention", &[(q, Gen::Normal), (kv, Gen::Normal), (kv, Gen::Normal)], |g, x| {
        g.push(Op::Attention { causal: false, scale: 0.6 }, &[x[0], x[1], x[2]])
    });
    let s: &[usize] = &[1, 4, 2, 3];
    check("attention causal", &[(s, Gen::Normal), (s, Gen::Normal), (s, Gen::Normal)], |g, x| {
        g.push(Op::Attention { causal: true, scale: 0.8 }, &[x[0], x[1], x[2]])
    });
    // Only some inputs on the path to the loss (dq and dv slices alone), and the nn wrapper over [B, T, C].
    check("attention q and v only", &[(q, Gen::Normal), (kv, Gen::Normal)], |g, x| {
        let k = g.fill(0.3, kv, DType::F32);
        g.push(Op::Attention { causal: false, scale: 1.0 }, &[x[0], k, x[1]])
    });
    check("nn::attention (causal, 2 heads)", &[(&[2, 4, 6], Gen::Normal), (&[2, 4, 6], Gen::Normal), (&[2, 4, 6], Gen::Normal)], |g, x| {
        nn::attention::attention(g, x[0], x[1], x[2], 2, true)
    });
}

#[test]
fn sd_misc_ops() {
    use instagen::graph::Op;
    check("geglu", &[(&[2, 3, 8], Gen::Normal)], |g, x| g.push(Op::Geglu, &[x[0]]));
    check("unary QuickGelu", &[(&[3, 5], Gen::Normal)], |g, x| g.unary(UnaryOp::QuickGelu, x[0]));
    // The embedding is not differentiable in t: t is a constant here, the gradient flows to the other factor.
    check("timestep_embedding (constant t)", &[(&[3, 9], Gen::Normal)], |g, x| {
        let t = g.fill(17.0, &[3], DType::F32);
        let e = g.push(Op::TimestepEmbedding { dim: 9, flip_sin_to_cos: true, shift: 0.0, max_period: 10000.0 }, &[t])?;
        g.mul(e, x[0])
    });
}

/// A constant f32 tensor built from fills (the non-differentiable box ops get fixed boxes, so the finite
/// differences see only the differentiable path).
fn constant(g: &mut Graph, vals: &[f32], shape: &[usize]) -> NodeId {
    let parts: Vec<NodeId> = vals.iter().map(|&v| g.fill(v, &[1], DType::F32)).collect();
    let c = g.concat(&parts, 0).unwrap();
    g.reshape(c, shape).unwrap()
}

#[test]
fn gather_and_box_ops() {
    use instagen::graph::Op;
    // Reading the top-k values: gather along the last axis at TopK's indices (values 0.07 apart, so +-h never
    // changes which are the top 3; TopK itself has no gradient).
    check("gather of topk", &[(&[3, 8], Gen::Distinct)], |g, x| {
        let idx = g.push(Op::TopK { k: 3 }, &[x[0]])?;
        g.push(Op::Gather { axis: 1 }, &[x[0], idx])
    });
    // Axis 0, indices smaller than x off the axis (the gradient is padded back), repeated indices summed.
    check("gather axis 0, smaller idx", &[(&[4, 6], Gen::Normal), (&[5, 4], Gen::Distinct)], |g, x| {
        let idx = g.push(Op::TopK { k: 2 }, &[x[1]])?; // [5, 2], values in 0..4
        let idx = g.permute(idx, &[1, 0])?; // [2, 5]
        let twice = g.concat(&[idx, idx], 0)?; // [4, 5]: every index twice
        g.push(Op::Gather { axis: 0 }, &[x[0], twice])
    });
    // The box ops are not differentiable: they run on constant boxes and scale a differentiable input.
    let a = [0.0, 0.0, 10.0, 10.0, 5.0, 5.0, 15.0, 20.0, 2.0, 1.0, 9.0, 12.0];
    let b = [1.0, 1.0, 11.0, 9.0, 30.0, 30.0, 40.0, 45.0];
    check("box_iou / giou on constant boxes", &[(&[3, 2], Gen::Normal)], move |g, x| {
        let (ca, cb) = (constant(g, &a, &[3, 4]), constant(g, &b, &[2, 4]));
        let iou = g.push(Op::BoxIou { giou: false }, &[ca, cb])?;
        let giou = g.push(Op::BoxIou { giou: true }, &[ca, cb])?;
        let y = g.mul(x[0], iou)?;
        g.add(y, giou)
    });
    check("box_encode / decode on constant boxes", &[(&[3, 4], Gen::Normal)], move |g, x| {
        let (r, t) = (constant(g, &a, &[3, 4]), constant(g, &[&b[..], &b[..4]].concat(), &[3, 4]));
        let d = g.push(Op::BoxEncode { weights: [10.0, 10.0, 5.0, 5.0] }, &[r, t])?;
        let back = g.push(Op::BoxDecode { weights: [10.0, 10.0, 5.0, 5.0], clamp: 4.135 }, &[r, d])?;
        let y = g.mul(x[0], d)?;
        g.add(y, back)
    });
    check("nms on constant boxes", &[(&[4], Gen::Normal)], move |g, x| {
        let bx = constant(g, &a, &[3, 4]);
        let s = constant(g, &[0.9, 0.8, 0.7], &[3]);
        let c = constant(g, &[0.0, 0.0, 1.0], &[3]);
        let c = g.cast(c, DType::I64)?;
        let keep = g.push(Op::Nms { iou_threshold: 0.3, max_out: 3 }, &[bx, s, c])?;
        let keep = g.cast(keep, DType::F32)?;
        g.mul(x[0], keep)
    });
}

/// `x` (values on the 1/4 grid of [`Gen::GridB`]) times 4, through an i32 cast: the same values, but constant
/// under the finite-difference steps and without a gradient (for inputs the ops do not differentiate).
fn frozen(g: &mut Graph, x: NodeId) -> instagen::Result<NodeId> {
    let s = g.affine(x, 4.0, 64.5)?;
    let i = g.cast(s, DType::I32)?;
    let f = g.cast(i, DType::F32)?;
    g.affine(f, 1.0, -64.0)
}

/// RoIs [K,5] from frozen grid values: batch index 0/1, boxes of 0.3 to 7.5 pixels starting in [0.4, 11.6]
/// (partly off a 10x12 map), times `scale` (so that `scale * spatial_scale` maps them onto the map).
fn frozen_rois(g: &mut Graph, x: NodeId, scale: f32) -> instagen::Result<NodeId> {
    let t = frozen(g, x)?;
    let col = |g: &mut Graph, i: usize| g.slice(t, 1, i, i + 1);
    let (c0, c1, c2, c3, c4) = (col(g, 0)?, col(g, 1)?, col(g, 2)?, col(g, 3)?, col(g, 4)?);
    let zero = g.fill(0.0, &[1], DType::F32);
    let b = g.binary(BinaryOp::Gt, c0, zero)?;
    let x1 = g.affine(c1, 0.7 * scale, 6.0 * scale)?;
    let y1 = g.affine(c2, 0.7 * scale, 6.0 * scale)?;
    let w = g.unary(UnaryOp::Abs, c3)?;
    let w = g.affine(w, 0.9 * scale, 0.3 * scale)?;
    let h = g.unary(UnaryOp::Abs, c4)?;
    let h = g.affine(h, 0.9 * scale, 0.3 * scale)?;
    let x2 = g.add(x1, w)?;
    let y2 = g.add(y1, h)?;
    g.concat(&[b, x1, y1, x2, y2], 1)
}

#[test]
fn roi_align_levels_and_detection_losses() {
    use instagen::graph::Op;
    // RoI Align is linear in the features (the bilinear kinks are in the RoI coordinates, which are frozen).
    for (aligned, sr, scale) in [(false, 2, 1.0), (true, 0, 0.5), (true, -1, 0.25), (false, 0, 1.0)] {
        let name = format!("roi_align aligned={aligned} sampling_ratio={sr} spatial_scale={scale}");
        check(&name, &[(&[2, 10, 12, 3], Gen::Normal), (&[4, 5], Gen::GridB)], |g, x| {
            let rois = frozen_rois(g, x[1], 1.0 / scale)?;
            let op = Op::RoiAlign { out_h: 2, out_w: 3, spatial_scale: scale, sampling_ratio: sr, aligned };
            g.push(op, &[x[0], rois])
        });
    }
    // The level of each RoI, used as a (non-differentiable) weight: levels 0..3 of canonical 224 at level 4.
    check("fpn_levels (as a constant factor)", &[(&[6, 3], Gen::Normal), (&[6, 5], Gen::GridB)], |g, x| {
        let r = frozen(g, x[1])?;
        let r = g.unary(UnaryOp::Abs, r)?;
        let r = g.affine(r, 30.0, 1.0)?;
        let lo = g.slice(r, 1, 0, 3)?;
        let wh = g.slice(r, 1, 3, 5)?;
        let xy = g.slice(lo, 1, 1, 3)?;
        let hi = g.add(xy, wh)?;
        let rois = g.concat(&[lo, hi], 1)?;
        let op = Op::FpnLevels { k_min: 2, k_max: 5, canonical_scale: 224.0, canonical_level: 4, eps: 1e-6 };
        let lv = g.push(op, &[rois])?;
        let lv = g.cast(lv, DType::F32)?;
        let lv = g.affine(lv, 0.5, 1.0)?;
        let lv = g.reshape(lv, &[6, 1])?;
        g.mul(x[0], lv)
    });
    // Focal loss w.r.t. the logits; 0/1 targets from a comparison (no gradient).
    for (alpha, gamma) in [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)] {
        let name = format!("sigmoid_focal_loss alpha={alpha} gamma={gamma}");
        check(&name, &[(&[3, 5], Gen::Normal), (&[3, 5], Gen::AwayFromZero)], |g, x| {
            let zero = g.fill(0.0, &[1], DType::F32);
            let t = g.binary(BinaryOp::Gt, x[1], zero)?;
            let x0 = g.scale(x[0], 2.0)?;
            g.push(Op::SigmoidFocalLoss { alpha, gamma }, &[x0, t])
        });
    }
    // GIoU loss w.r.t. pred: pred corners are odd multiples of 1/8, target corners integers, so no min/max
    // ties (kinks) are within a step; pred = (a, a + b + 2.25) with b on the 1/4 grid (positive sides).
    check("giou_loss", &[(&[6, 2], Gen::GridA), (&[6, 2], Gen::GridB), (&[6, 4], Gen::GridB)], |g, x| {
        let wh = g.affine(x[1], 1.0, 2.25)?;
        let hi = g.add(x[0], wh)?;
        let pred = g.concat(&[x[0], hi], 1)?;
        let t = frozen(g, x[2])?;
        let t = g.scale(t, 0.5)?;
        let tlo = g.slice(t, 1, 0, 2)?;
        let twh = g.slice(t, 1, 2, 4)?;
        let twh = g.unary(UnaryOp::Abs, twh)?;
        let twh = g.affine(twh, 1.0, 1.0)?;
        let thi = g.add(tlo, twh)?;
        let target = g.concat(&[tlo, thi], 1)?;
        g.push(Op::GiouLoss { eps: 1e-7 }, &[pred, target])
    });
}
