//! Finite-difference gradient checks of every op's backward rule on the CPU backend.
//!
//! The op-level checks are the cases flagged `gradcheck` in every family's `ops/<family>/parity.rs`
//! (`parity::gradcheck_cases`, walked by [`every_flagged_case_passes`]); the checks of `nn` wrappers (with
//! parameters) are written here. Each case builds `loss = sum(op(inputs) * r)` for a fixed random `r`, takes
//! the analytic gradient with respect to every input (and parameter) from the autodiff graph, and compares it
//! with central differences. The `*_bwd` ops have no backward of their own: they are checked here as the
//! gradients of their forward ops (the coverage test asserts they appear in the backward graphs).
//!
//! Tolerance: the CPU backend computes in f32, so a central difference with step h = 1e-2 carries a rounding
//! error of about 1e-6 * sum|terms| / h (~1e-4 here) plus a truncation error of order h^2 (~1e-4): we accept
//! |analytic - numeric| <= 1e-3 * (1 + |numeric|) (the worst case seen is 3.6e-4). Inputs of non-smooth ops stay at least 0.1 from the kinks.

mod common;

use std::collections::BTreeSet;

use instagen::graph::{autodiff, Graph, NodeId};
use instagen::nn;
use instagen::parity::{self, random_tensor, Case, Gen};
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

const H: f32 = 1e-2;

fn loss_of(g: &Graph, loss: NodeId, store: &ParamStore, feed: &[(String, HostTensor)]) -> f32 {
    let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    common::run_cpu(g, store, &feed, &[loss])[0].to_f32()[0]
}

/// The graph of a check: `loss = sum(build(x) * r)` and the gradients w.r.t. every input and parameter.
struct Checked {
    g: Graph,
    xs: Vec<NodeId>,
    params: Vec<(NodeId, String)>,
    wrt: Vec<NodeId>,
    loss: NodeId,
    grads: Vec<NodeId>,
    oshape: Vec<usize>,
}

fn build_checked(case: &Case) -> Checked {
    let name = &case.name;
    let mut g = Graph::new();
    let xs: Vec<NodeId> = (case.inputs.iter().enumerate())
        .map(|(i, (s, d, _))| {
            assert_eq!(*d, DType::F32, "{name}: gradient checks take f32 inputs");
            g.input(&format!("x{i}"), s, DType::F32).unwrap()
        })
        .collect();
    let out = (case.build)(&mut g, &xs).unwrap_or_else(|e| panic!("{name}: build failed: {e}"));
    let oshape = g.shape(out).to_vec();
    let r = g.input("r", &oshape, DType::F32).unwrap();
    let prod = g.mul(out, r).unwrap();
    let loss = g.sum_all(prod).unwrap();
    let params: Vec<(NodeId, String)> = g.params().into_iter().map(|(i, n)| (i, n.to_string())).collect();
    let mut wrt = xs.clone();
    wrt.extend(params.iter().map(|p| p.0));
    let grads = autodiff::backward(&mut g, loss, &wrt).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    g.mark_output(loss);
    for d in &grads {
        g.mark_output(*d);
    }
    Checked { g, xs, params, wrt, loss, grads, oshape }
}

/// Check the gradients of `case` w.r.t. every input and parameter.
fn check_case(case: &Case) {
    let name = case.name.as_str();
    let rng = &mut Rng::new(name.len() as u64 * 7919 + 17);
    let Checked { g, xs, params, wrt, loss, grads, oshape } = build_checked(case);
    // Random inputs, parameters (non-trivial values, not the ones/zeros of init), and r.
    let mut feed: Vec<(String, HostTensor)> = (case.inputs.iter().enumerate())
        .map(|(i, (s, d, gk))| (format!("x{i}"), random_tensor(s, *d, *gk, rng).unwrap()))
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
    let h = if case.inputs.iter().any(|(_, _, g)| matches!(g, Gen::F16Grid)) { 1.0 / 64.0 } else { H };
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

/// A gradient check written here (the nn-level ones).
fn check(name: &str, inputs: &[(&[usize], Gen)], build: impl Fn(&mut Graph, &[NodeId]) -> instagen::Result<NodeId> + Send + Sync + 'static) {
    check_case(&Case::grad(name, inputs, build))
}

/// Every case flagged `gradcheck` in the op families.
#[test]
fn every_flagged_case_passes() {
    let cases = parity::gradcheck_cases();
    assert!(!cases.is_empty());
    let start = std::time::Instant::now();
    for case in &cases {
        check_case(case);
    }
    eprintln!("{} gradient-check cases in {:.1} s", cases.len(), start.elapsed().as_secs_f64());
}

/// Every kind in `OP_KINDS` appears in some flagged case's graph (forward or backward): the graphs are built,
/// nothing is run.
#[test]
fn every_op_kind_is_gradient_checked() {
    let mut seen = BTreeSet::new();
    for case in parity::gradcheck_cases() {
        for n in build_checked(&case).g.nodes() {
            seen.insert(n.op.kind());
        }
    }
    let missing: Vec<&&str> = instagen::ops::OP_KINDS.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(missing.is_empty(), "op kinds without a gradient check: {missing:?}");
}

/// Every op family has gradient-check cases of its own (a new family's checks live in its folder).
#[test]
fn every_family_has_flagged_cases() {
    for (family, cases) in instagen::ops::cases_by_family() {
        assert!(cases.iter().any(|c| c.gradcheck), "op family {family} has no gradient-check case");
    }
}

#[test]
fn nn_layer_norm_linear_and_attention() {
    check("layer_norm affine (params)", &[(&[2, 3, 6], Gen::Normal)], |g, x| nn::layer_norm(g, "ln", x[0], 1e-5));
    check("linear (params)", &[(&[2, 3, 4], Gen::Normal)], |g, x| nn::linear(g, "fc", x[0], 5, true));
    check("self-attention block (params)", &[(&[1, 3, 4], Gen::Normal)], |g, x| {
        nn::self_attention(g, "attn", x[0], 2, None)
    });
    check("nn::attention (causal, 2 heads)", &[(&[2, 4, 6], Gen::Normal), (&[2, 4, 6], Gen::Normal), (&[2, 4, 6], Gen::Normal)], |g, x| {
        nn::attention::attention(g, x[0], x[1], x[2], 2, true)
    });
}

#[test]
fn nn_spatial_conv2d_group_norm_upsample() {
    // (x shape, cout, k, stride, padding): 3x3 and 1x1, stride 1 and 2, padding 0 and 1, odd sizes.
    let cases: [(&[usize], usize, usize, usize, usize); 5] = [
        (&[2, 4, 5, 3], 2, 3, 1, 1),
        (&[1, 5, 5, 2], 3, 3, 2, 1),
        (&[1, 6, 5, 2], 2, 3, 2, 0),
        (&[2, 3, 4, 3], 2, 1, 1, 0),
        (&[1, 5, 4, 2], 3, 1, 2, 0),
    ];
    for (xs, cout, k, s, p) in cases {
        check(&format!("conv2d {xs:?} -> {cout} k{k} s{s} p{p} (params)"), &[(xs, Gen::Normal)], move |g, x| {
            nn::spatial::conv2d(g, x[0], "conv", xs[3], cout, k, s, p)
        });
    }
    for (silu, eps) in [(false, 1e-5), (true, 1e-6)] {
        check(&format!("group_norm silu={silu} (params)"), &[(&[2, 3, 2, 6], Gen::Normal)], move |g, x| {
            nn::spatial::group_norm(g, x[0], "norm", 3, eps, silu)
        });
    }
    check("group_norm rank 3, one group (params)", &[(&[2, 5, 4], Gen::Normal)], |g, x| {
        nn::spatial::group_norm(g, x[0], "norm", 1, 1e-5, true)
    });
    check("upsample_nearest2x", &[(&[2, 2, 3, 2], Gen::Normal)], |g, x| nn::spatial::upsample_nearest2x(g, x[0]));
}
