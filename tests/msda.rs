//! Multi-scale deformable attention against PyTorch's `F.grid_sample` formulation
//! (`multi_scale_deformable_attn_pytorch`), on the fixture of `tools/make_msda_fixtures.py`
//! (tests/fixtures/msda/msda.json: non-square and 1-pixel levels, samples partly in the zero padding; the
//! reference in float64): the output and the gradients of `sum(out * r)` w.r.t. value, sampling locations and
//! attention weights, through `nn::msda::msda` and `autodiff::backward`, on the CPU engine, the CPU reference
//! and the emulated kernels, with value and weights stored in f32, f16 and bf16.

use instagen::backend::cpu::{CpuBackend, CpuReference};
use instagen::backend::emu::EmuBackend;
use instagen::backend::Backend;
use instagen::graph::{autodiff, Graph, NodeId};
use instagen::params::ParamStore;
use instagen::runtime::Executor;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fixture() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/msda/msda.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn run<B: Backend>(backend: B, g: &Graph, feed: &[(&str, &HostTensor)], outs: &[NodeId]) -> Vec<Vec<f32>> {
    let mut g = g.clone();
    for &o in outs {
        g.mark_output(o);
    }
    let mut ex = Executor::new(backend, g, &ParamStore::new()).unwrap();
    ex.run(feed).unwrap();
    outs.iter().map(|&o| ex.get(o).unwrap().to_f32()).collect()
}

/// max |got - want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

#[test]
fn msda_matches_pytorch_grid_sample() {
    let f = fixture();
    let dim = |k: &str| f["dims"][k].as_u64().unwrap() as usize;
    let (b, q, h, d, p) = (dim("b"), dim("q"), dim("h"), dim("d"), dim("p"));
    let levels: Vec<[usize; 2]> = f["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| [l[0].as_u64().unwrap() as usize, l[1].as_u64().unwrap() as usize])
        .collect();
    let (l, s) = (levels.len(), levels.iter().map(|[a, c]| a * c).sum::<usize>());
    let shapes: [(&str, Vec<usize>); 4] = [
        ("value", vec![b, s, h, d]),
        ("loc", vec![b, q, h, l, p, 2]),
        ("attn", vec![b, q, h, l, p]),
        ("r", vec![b, q, h * d]),
    ];
    let tensors: Vec<HostTensor> =
        shapes.iter().map(|(k, sh)| HostTensor::from_f32(sh, DType::F32, &floats(&f[*k])).unwrap()).collect();
    let feed: Vec<(&str, &HostTensor)> = shapes.iter().map(|(k, _)| *k).zip(tensors.iter()).collect();
    let want: Vec<Vec<f32>> = ["out", "dvalue", "dloc", "dattn"].iter().map(|k| floats(&f[*k])).collect();

    // Bounds on max|err| / max|ref|: f32 arithmetic; one rounding of f16 / bf16 storage (inputs and results).
    for (dt, bound) in [(DType::F32, 2e-6f32), (DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
        let mut g = Graph::new();
        let x: Vec<NodeId> = shapes.iter().map(|(k, sh)| g.input(k, sh, DType::F32).unwrap()).collect();
        let value = g.cast(x[0], dt).unwrap();
        let attn = g.cast(x[2], dt).unwrap();
        let y = instagen::nn::msda::msda(&mut g, value, x[1], attn, &levels).unwrap();
        let y = g.cast(y, DType::F32).unwrap();
        let prod = g.mul(y, x[3]).unwrap();
        let loss = g.sum_all(prod).unwrap();
        let grads = autodiff::backward(&mut g, loss, &[x[0], x[1], x[2]]).unwrap();
        let outs = [y, grads[0], grads[1], grads[2]];
        let results = [
            ("cpu", run(CpuBackend, &g, &feed, &outs)),
            ("cpu-reference", run(CpuReference, &g, &feed, &outs)),
            ("emu", run(EmuBackend::new(), &g, &feed, &outs)),
        ];
        for (backend, got) in &results {
            for (i, what) in ["out", "dvalue", "dloc", "dattn"].iter().enumerate() {
                let e = rel_err(&got[i], &want[i]);
                eprintln!("{backend} {dt} {what}: max err / max |ref| = {e:.2e}");
                assert!(e <= bound, "{backend} {dt} {what}: {e:.3e} > {bound:.0e}");
            }
        }
    }
}

/// Bad shapes are graph errors naming the op and the shapes.
#[test]
fn msda_shape_errors_are_clear() {
    let levels = [[2usize, 3], [1, 1]];
    let mut g = Graph::new();
    let value = g.input("value", &[1, 7, 2, 4], DType::F32).unwrap();
    let loc = g.input("loc", &[1, 5, 2, 2, 3, 2], DType::F32).unwrap();
    let attn = g.input("attn", &[1, 5, 2, 2, 3], DType::F32).unwrap();
    let y = instagen::nn::msda::msda(&mut g, value, loc, attn, &levels).unwrap();
    assert_eq!(g.shape(y), &[1, 5, 8]);
    let bad_value = g.input("bad_value", &[1, 8, 2, 4], DType::F32).unwrap();
    let e = instagen::nn::msda::msda(&mut g, bad_value, loc, attn, &levels).unwrap_err().to_string();
    assert!(e.contains("S=7") && e.contains("[1, 8, 2, 4]"), "{e}");
    let loc16 = g.input("loc16", &[1, 5, 2, 2, 3, 2], DType::F16).unwrap();
    let e = instagen::nn::msda::msda(&mut g, value, loc16, attn, &levels).unwrap_err().to_string();
    assert!(e.contains("must be f32"), "{e}");
    let e = instagen::nn::msda::msda(&mut g, value, loc, attn, &[[2, 3]]).unwrap_err().to_string();
    assert!(e.contains("L=1"), "{e}");
    let e = instagen::nn::msda::msda(&mut g, value, loc, attn, &[[2, 3], [0, 1]]).unwrap_err().to_string();
    assert!(e.contains("level 1 has an empty shape"), "{e}");
    let attn_bad = g.input("attn_bad", &[1, 5, 2, 2, 4], DType::F32).unwrap();
    let e = instagen::nn::msda::msda(&mut g, value, loc, attn_bad, &levels).unwrap_err().to_string();
    assert!(e.contains("attention weights"), "{e}");
}
