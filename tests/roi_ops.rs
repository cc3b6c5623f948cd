//! RoI Align (forward and feature gradient), the FPN level mapper, the sigmoid focal loss and the GIoU loss
//! (with gradients) against torchvision 0.29 on the fixtures of `tools/make_roi_fixtures.py`
//! (tests/fixtures/roi/), on the CPU reference and on the emulated CUDA kernels. The gradients come from
//! `autodiff::backward` of `sum(op(x) * dy)`, so the backward rules and the `*_bwd` ops are checked as well.

use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::backend::Backend;
use instagen::graph::{autodiff, Graph, NodeId, Op};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roi").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn tensor(shape: &[usize], v: &[f32]) -> HostTensor {
    HostTensor::from_f32(shape, DType::F32, v).unwrap()
}

/// Runs `g` on `backend` and returns the values of `outs`.
fn run<B: Backend>(backend: B, g: &Graph, feed: &[(&str, &HostTensor)], outs: &[NodeId]) -> Vec<Vec<f32>> {
    let mut g = g.clone();
    for &o in outs {
        g.mark_output(o);
    }
    let mut ex = Executor::new(backend, g, &ParamStore::new()).unwrap();
    ex.run(feed).unwrap();
    outs.iter().map(|&o| ex.get(o).unwrap().to_f32()).collect()
}

/// Largest |got - want| / (atol + rtol |want|); panics above 1.
fn check(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let r = (g - w).abs() / (atol + rtol * w.abs());
        assert!(r <= 1.0, "{what}[{i}]: got {g}, torchvision {w} (atol {atol}, rtol {rtol})");
        worst = worst.max(r);
    }
    worst
}

/// `y = build(x, consts)` and the gradient of `sum(y * dy)` w.r.t. x.
fn with_grad(
    g: &mut Graph,
    x: NodeId,
    dy_shape: &[usize],
    build: impl FnOnce(&mut Graph) -> instagen::Result<NodeId>,
) -> (NodeId, NodeId) {
    let y = build(g).unwrap();
    let dy = g.input("dy", dy_shape, DType::F32).unwrap();
    let p = g.mul(y, dy).unwrap();
    let loss = g.sum_all(p).unwrap();
    let dx = autodiff::backward(g, loss, &[x]).unwrap()[0];
    (y, dx)
}

#[test]
fn roi_align_matches_torchvision() {
    let f = fixture("roi_align.json");
    let fs: Vec<usize> = f["feat_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (k, oh, ow) = (f["k"].as_u64().unwrap() as usize, f["out_h"].as_u64().unwrap() as usize, f["out_w"].as_u64().unwrap() as usize);
    let feat = tensor(&fs, &floats(&f["feat"]));
    let mut worst = [0f32; 2];
    let cases = f["cases"].as_array().unwrap();
    for c in cases {
        let (scale, sr, aligned) =
            (c["spatial_scale"].as_f64().unwrap() as f32, c["sampling_ratio"].as_i64().unwrap() as i32, c["aligned"].as_bool().unwrap());
        let name = format!("roi_align scale={scale} sampling_ratio={sr} aligned={aligned}");
        let mut g = Graph::new();
        let x = g.input("x", &fs, DType::F32).unwrap();
        let r = g.input("rois", &[k, 5], DType::F32).unwrap();
        let op = Op::RoiAlign { out_h: oh, out_w: ow, spatial_scale: scale, sampling_ratio: sr, aligned };
        let (y, dx) = with_grad(&mut g, x, &[k, oh, ow, fs[3]], |g| g.push(op, &[x, r]));
        let rois = tensor(&[k, 5], &floats(&c["rois"]));
        let dy = tensor(&[k, oh, ow, fs[3]], &floats(&c["dy"]));
        let feed = [("x", &feat), ("rois", &rois), ("dy", &dy)];
        let (want_y, want_dx) = (floats(&c["out"]), floats(&c["dfeat"]));
        for (backend, got) in [("cpu", run(CpuBackend, &g, &feed, &[y, dx])), ("emu", run(EmuBackend::new(), &g, &feed, &[y, dx]))] {
            // torchvision sums the samples (and scatters the gradient) in f32, we in f64 (CPU) or in another
            // f32 order (emu): values of order 1.
            worst[0] = worst[0].max(check(&format!("{name} {backend} out"), &got[0], &want_y, 1e-5, 1e-5));
            worst[1] = worst[1].max(check(&format!("{name} {backend} dfeat"), &got[1], &want_dx, 1e-5, 1e-5));
        }
    }
    eprintln!("roi_align: {} settings on cpu and emu, worst err/tol: output {:.3}, dfeat {:.3}", cases.len(), worst[0], worst[1]);
}

#[test]
fn fpn_levels_match_torchvision_level_mapper() {
    let f = fixture("fpn_levels.json");
    let boxes = floats(&f["boxes"]);
    let k = boxes.len() / 4;
    let bt = tensor(&[k, 4], &boxes);
    // The same boxes as RoIs (batch index column first).
    let rois: Vec<f32> = boxes.chunks(4).flat_map(|b| [1.0, b[0], b[1], b[2], b[3]]).collect();
    let rt = tensor(&[k, 5], &rois);
    for c in f["cases"].as_array().unwrap() {
        let op = Op::FpnLevels {
            k_min: c["k_min"].as_i64().unwrap() as i32,
            k_max: c["k_max"].as_i64().unwrap() as i32,
            canonical_scale: c["canonical_scale"].as_f64().unwrap() as f32,
            canonical_level: c["canonical_level"].as_i64().unwrap() as i32,
            eps: c["eps"].as_f64().unwrap() as f32,
        };
        let want: Vec<f32> = c["levels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as f32).collect();
        let mut g = Graph::new();
        let b = g.input("b", &[k, 4], DType::F32).unwrap();
        let r = g.input("r", &[k, 5], DType::F32).unwrap();
        let lb = g.push(op.clone(), &[b]).unwrap();
        let lr = g.push(op.clone(), &[r]).unwrap();
        let feed = [("b", &bt), ("r", &rt)];
        for got in [run(CpuBackend, &g, &feed, &[lb, lr]), run(EmuBackend::new(), &g, &feed, &[lb, lr])] {
            assert_eq!(got[0], want, "{op:?} (boxes)");
            assert_eq!(got[1], want, "{op:?} (rois)");
        }
        let mut hist = [0usize; 8];
        for &l in &want {
            hist[l as usize] += 1;
        }
        eprintln!("{op:?}: {k} boxes equal on cpu and emu, per level {:?}", &hist[..=(c["k_max"].as_i64().unwrap() - c["k_min"].as_i64().unwrap()) as usize]);
    }
}

#[test]
fn sigmoid_focal_loss_matches_torchvision() {
    let f = &fixture("det_losses.json")["focal"];
    let logits = floats(&f["logits"]);
    let n = logits.len();
    let xt = tensor(&[n], &logits);
    let dyt = tensor(&[n], &floats(&f["dy"]));
    let mut worst = [0f32; 2];
    for c in f["cases"].as_array().unwrap() {
        let (alpha, gamma) = (c["alpha"].as_f64().unwrap() as f32, c["gamma"].as_f64().unwrap() as f32);
        let tname = c["targets"].as_str().unwrap();
        let tt = tensor(&[n], &floats(&f[tname]));
        let mut g = Graph::new();
        let x = g.input("x", &[n], DType::F32).unwrap();
        let t = g.input("t", &[n], DType::F32).unwrap();
        let (y, dx) = with_grad(&mut g, x, &[n], |g| g.push(Op::SigmoidFocalLoss { alpha, gamma }, &[x, t]));
        let feed = [("x", &xt), ("t", &tt), ("dy", &dyt)];
        let name = format!("focal alpha={alpha} gamma={gamma} {tname}");
        for (backend, got) in [("cpu", run(CpuBackend, &g, &feed, &[y, dx])), ("emu", run(EmuBackend::new(), &g, &feed, &[y, dx]))] {
            // torch forms 1 - p_t and p - t by subtraction in f32 (absolute errors of ~1e-7 that are large
            // relative to confident predictions' tiny losses); we avoid the cancellation.
            worst[0] = worst[0].max(check(&format!("{name} {backend} loss"), &got[0], &floats(&c["loss"]), 1e-6, 1e-5));
            worst[1] = worst[1].max(check(&format!("{name} {backend} dlogits"), &got[1], &floats(&c["dlogits"]), 1e-6, 1e-5));
        }
    }
    eprintln!("sigmoid_focal_loss: worst err/tol loss {:.3}, dlogits {:.3}", worst[0], worst[1]);
}

#[test]
fn giou_loss_matches_torchvision() {
    let f = &fixture("det_losses.json")["giou"];
    let pred = floats(&f["pred"]);
    let m = pred.len() / 4;
    let (pt, tt, dyt) = (tensor(&[m, 4], &pred), tensor(&[m, 4], &floats(&f["target"])), tensor(&[m], &floats(&f["dy"])));
    let eps = f["eps"].as_f64().unwrap() as f32;
    let mut g = Graph::new();
    let p = g.input("p", &[m, 4], DType::F32).unwrap();
    let t = g.input("t", &[m, 4], DType::F32).unwrap();
    let (y, dp) = with_grad(&mut g, p, &[m], |g| g.push(Op::GiouLoss { eps }, &[p, t]));
    let feed = [("p", &pt), ("t", &tt), ("dy", &dyt)];
    let mut worst = [0f32; 2];
    for (backend, got) in [("cpu", run(CpuBackend, &g, &feed, &[y, dp])), ("emu", run(EmuBackend::new(), &g, &feed, &[y, dp]))] {
        // Areas up to ~1e4 px^2 in f32 (torch, emu) vs f64 (CPU): differences of order 1e-7 * 1e4 / 1e4.
        worst[0] = worst[0].max(check(&format!("giou {backend} loss"), &got[0], &floats(&f["loss"]), 1e-6, 1e-5));
        worst[1] = worst[1].max(check(&format!("giou {backend} dpred"), &got[1], &floats(&f["dpred"]), 1e-6, 1e-4));
    }
    eprintln!("giou_loss: {m} pairs, worst err/tol loss {:.3}, dpred {:.3}", worst[0], worst[1]);
}

#[test]
fn multi_scale_roi_align_matches_torchvision() {
    use instagen::detection::roi::MultiScaleRoiAlign;
    let f = fixture("multiscale.json");
    let k = f["k"].as_u64().unwrap() as usize;
    let scales: Vec<f32> = floats(&f["scales"]);
    let mut g = Graph::new();
    let mut feeds = Vec::new();
    let mut ids = Vec::new();
    for (i, lv) in f["feats"].as_array().unwrap().iter().enumerate() {
        let shape: Vec<usize> = lv["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        ids.push(g.input(&format!("p{i}"), &shape, DType::F32).unwrap());
        feeds.push((format!("p{i}"), tensor(&shape, &floats(&lv["data"]))));
    }
    let r = g.input("rois", &[k, 5], DType::F32).unwrap();
    feeds.push(("rois".into(), tensor(&[k, 5], &floats(&f["rois"]))));
    let pool = MultiScaleRoiAlign {
        out_h: 3,
        out_w: 3,
        sampling_ratio: f["sampling_ratio"].as_i64().unwrap() as i32,
        aligned: false,
        canonical_scale: f["canonical_scale"].as_f64().unwrap() as f32,
        canonical_level: f["canonical_level"].as_i64().unwrap() as i32,
        eps: 1e-6,
    };
    let y = pool.apply(&mut g, &ids, &scales, r).unwrap();
    let feed: Vec<(&str, &HostTensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = floats(&f["out"]);
    let mut worst = 0f32;
    for (backend, got) in [("cpu", run(CpuBackend, &g, &feed, &[y])), ("emu", run(EmuBackend::new(), &g, &feed, &[y]))] {
        worst = worst.max(check(&format!("multi-scale roi_align {backend}"), &got[0], &want, 1e-5, 1e-5));
    }
    // The RoIs really spread over the levels.
    let mut lg = Graph::new();
    let lr = lg.input("rois", &[k, 5], DType::F32).unwrap();
    let lv = instagen::detection::roi::fpn_levels(&mut lg, lr, 2, 5).unwrap();
    let op = Op::FpnLevels { k_min: 2, k_max: 5, canonical_scale: pool.canonical_scale, canonical_level: 4, eps: 1e-6 };
    let lv2 = lg.push(op, &[lr]).unwrap();
    let levels = run(CpuBackend, &lg, &[("rois", &feeds[4].1)], &[lv, lv2]);
    let mut hist = [0usize; 4];
    for &l in &levels[1] {
        hist[l as usize] += 1;
    }
    assert!(hist.iter().all(|&c| c > 0), "levels {hist:?}");
    eprintln!("multi-scale roi_align: {k} RoIs over levels {hist:?} on cpu and emu, worst err/tol {worst:.3}");
}
