//! The attn ops on the CPU reference against PyTorch / diffusers values (tests/fixtures/attn/reference.json,
//! written by tools/make_attn_fixtures.py): diffusers `get_timestep_embedding`, `F.scaled_dot_product_attention`
//! (plain and causal) through `nn::attention`, GEGLU and quick GELU.

mod common;

use instagen::graph::{Graph, Op, UnaryOp};
use instagen::nn;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fixture() -> Value {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attn/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn run1(g: &Graph, out: instagen::graph::NodeId, feed: &[(&str, &HostTensor)]) -> Vec<f32> {
    let mut g = g.clone();
    g.mark_output(out);
    common::run_cpu(&g, &ParamStore::new(), feed, &[out])[0].to_f32()
}

/// Max |a - b|.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn timestep_embedding_matches_diffusers() {
    let f = fixture();
    for c in f["timestep"].as_array().unwrap() {
        let dim = c["dim"].as_u64().unwrap() as usize;
        let t = floats(&c["t"]);
        let op = Op::TimestepEmbedding {
            dim,
            flip_sin_to_cos: c["flip"].as_bool().unwrap(),
            shift: c["shift"].as_f64().unwrap() as f32,
            max_period: c["max_period"].as_f64().unwrap() as f32,
        };
        let mut g = Graph::new();
        let x = g.input("t", &[t.len()], DType::F32).unwrap();
        let e = g.push(op, &[x]).unwrap();
        let tt = HostTensor::from_f32(&[t.len()], DType::F32, &t).unwrap();
        let got = run1(&g, e, &[("t", &tt)]);
        let want = floats(&c["emb"]);
        // Both sides round t * f to f32 the same way; torch's f32 exp/sin/cos (SLEEF, <= 1 ulp) may differ from
        // our correctly rounded ones by an ulp of the frequency, which moves an argument near t = 999 by about
        // one f32 ulp of 999 (6e-5). Seen: see the printed value.
        let d = max_diff(&got, &want);
        eprintln!("timestep dim {dim}: max |diff| {d:.2e}");
        assert!(d <= 1.5e-4, "dim {dim}: {d}");
    }
}

#[test]
fn attention_matches_torch_sdpa() {
    let f = fixture();
    for c in f["attention"].as_array().unwrap() {
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (b, h, tq, tk, d) = (u("b"), u("h"), u("tq"), u("tk"), u("d"));
        let causal = c["causal"].as_bool().unwrap();
        let mut g = Graph::new();
        let q = g.input("q", &[b, tq, h * d], DType::F32).unwrap();
        let k = g.input("k", &[b, tk, h * d], DType::F32).unwrap();
        let v = g.input("v", &[b, tk, h * d], DType::F32).unwrap();
        let o = nn::attention::attention(&mut g, q, k, v, h, causal).unwrap();
        let t = |name: &str, t: usize| HostTensor::from_f32(&[b, t, h * d], DType::F32, &floats(&c[name])).unwrap();
        let (qt, kt, vt) = (t("q", tq), t("k", tk), t("v", tk));
        let got = run1(&g, o, &[("q", &qt), ("k", &kt), ("v", &vt)]);
        let d = max_diff(&got, &floats(&c["o"]));
        eprintln!("attention causal={causal}: max |diff| {d:.2e}");
        // torch computes in f32 (several roundings), we in f64 with one: a few f32 ulps of values ~1.
        assert!(d <= 2e-6, "{d}");
    }
}

#[test]
fn geglu_and_quick_gelu_match_torch() {
    let f = fixture();
    let c = &f["geglu"];
    let x = floats(&c["x"]);
    let mut g = Graph::new();
    let xi = g.input("x", &[3, 10], DType::F32).unwrap();
    let y = g.push(Op::Geglu, &[xi]).unwrap();
    let xt = HostTensor::from_f32(&[3, 10], DType::F32, &x).unwrap();
    let d = max_diff(&run1(&g, y, &[("x", &xt)]), &floats(&c["y"]));
    assert!(d <= 2e-6, "geglu {d}");
    let c = &f["quick_gelu"];
    let x = floats(&c["x"]);
    let mut g = Graph::new();
    let xi = g.input("x", &[x.len()], DType::F32).unwrap();
    let y = g.unary(UnaryOp::QuickGelu, xi).unwrap();
    let xt = HostTensor::from_f32(&[x.len()], DType::F32, &x).unwrap();
    let d = max_diff(&run1(&g, y, &[("x", &xt)]), &floats(&c["y"]));
    assert!(d <= 4e-6, "quick_gelu {d}");
}
