//! Box ops against torchvision (`tests/fixtures/boxes/boxes.json`, written by `tools/make_box_fixtures.py`):
//! `box_iou`, `generalized_box_iou`, `nms`, `batched_nms` and `BoxCoder` encode/decode, each run as a graph op
//! on the CPU backend and on `emu` (the `.cu` kernels), and through the host functions of `detection::boxes`.
//!
//! NMS must keep exactly torchvision's indices in its order (the fixtures' scores are distinct, so there are
//! no ties to order). IoU values must match to 1e-6 (the formulas are torchvision's, operation by operation in
//! f32; NaN for pairs of empty boxes on both sides); the coder to 1e-5 relative (log / exp evaluated in f64
//! on the CPU and by logf / expf under the emulator).

use std::path::PathBuf;

use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::backend::Backend;
use instagen::detection::boxes;
use instagen::graph::{Graph, NodeId, Op};
use instagen::runtime::Executor;
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boxes/boxes.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Floats as the fixture writes them: numbers, null for NaN, "inf" / "-inf".
fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::Null => f32::NAN,
            Value::String(s) if s == "inf" => f32::INFINITY,
            Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
            x => x.as_f64().unwrap() as f32,
        })
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn run_on<B: Backend>(b: B, g: &Graph, out: NodeId, feed: &[(&str, &HostTensor)]) -> HostTensor {
    let mut g = g.clone();
    g.mark_output(out);
    let mut ex = Executor::new(b, g, &ParamStore::new()).unwrap();
    ex.run(feed).unwrap();
    ex.get(out).unwrap()
}

/// The op's output on the CPU backend and on emu.
fn both(g: &Graph, out: NodeId, feed: &[(&str, &HostTensor)]) -> [(&'static str, HostTensor); 2] {
    [("cpu", run_on(CpuBackend, g, out, feed)), ("emu", run_on(EmuBackend::new(), g, out, feed))]
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() { g.is_nan() } else { (g - w).abs() <= atol + rtol * w.abs() };
        assert!(ok, "{what}[{i}]: got {g}, torchvision {w}");
    }
}

fn t(shape: &[usize], dtype: DType, vals: &[f32]) -> HostTensor {
    HostTensor::from_f32(shape, dtype, vals).unwrap()
}

#[test]
fn iou_and_giou_match_torchvision() {
    let fx = fixture();
    for (ci, c) in fx["iou"].as_array().unwrap().iter().enumerate() {
        let (n, m) = (c["n"].as_u64().unwrap() as usize, c["m"].as_u64().unwrap() as usize);
        let (a, b) = (floats(&c["a"]), floats(&c["b"]));
        let mut g = Graph::new();
        let (ia, ib) = (g.input("a", &[n, 4], DType::F32).unwrap(), g.input("b", &[m, 4], DType::F32).unwrap());
        let (ta, tb) = (t(&[n, 4], DType::F32, &a), t(&[m, 4], DType::F32, &b));
        for giou in [false, true] {
            let out = g.push(Op::BoxIou { giou }, &[ia, ib]).unwrap();
            let want = floats(&c[if giou { "giou" } else { "iou" }]);
            for (name, got) in both(&g, out, &[("a", &ta), ("b", &tb)]) {
                assert_close(&format!("case {ci} giou={giou} {name}"), &got.to_f32(), &want, 1e-6, 1e-6);
            }
        }
        let aa: Vec<[f32; 4]> = a.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let bb: Vec<[f32; 4]> = b.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        assert_close("host box_iou", &boxes::box_iou(&aa, &bb), &floats(&c["iou"]), 1e-6, 1e-6);
        assert_close("host giou", &boxes::generalized_box_iou(&aa, &bb), &floats(&c["giou"]), 1e-6, 1e-6);
    }
}

/// Kept indices and count from an `Nms` output.
fn kept(out: &HostTensor) -> (Vec<i64>, i64) {
    let v = out.to_i64();
    let (list, count) = v.split_at(v.len() - 1);
    (list.iter().copied().filter(|&i| i >= 0).collect(), count[0])
}

#[test]
fn nms_keeps_what_torchvision_keeps() {
    let fx = fixture();
    for (ci, c) in fx["nms"].as_array().unwrap().iter().enumerate() {
        let (bx, sc, cls) = (floats(&c["boxes"]), floats(&c["scores"]), ints(&c["classes"]));
        let n = sc.len();
        let thr = c["iou_threshold"].as_f64().unwrap() as f32;
        let single: Vec<i64> = ints(&c["nms"]);
        let batched: Vec<i64> = ints(&c["batched_nms"]);
        let tb = t(&[n, 4], DType::F32, &bx);
        let ts = t(&[n], DType::F32, &sc);
        let cls_f: Vec<f32> = cls.iter().map(|&x| x as f32).collect();
        // Batched with i64 and i32 classes, single-class (all zeros), and a cap of 10.
        let runs: [(&str, Vec<f32>, DType, usize, &[i64]); 4] = [
            ("batched i64", cls_f.clone(), DType::I64, n, &batched),
            ("batched i32", cls_f.clone(), DType::I32, n, &batched),
            ("single", vec![0.0; n], DType::I64, n, &single),
            ("batched max_out 10", cls_f.clone(), DType::I64, 10, &batched[..batched.len().min(10)]),
        ];
        for (what, classes, cdt, max_out, want) in runs {
            let mut g = Graph::new();
            let ib = g.input("b", &[n, 4], DType::F32).unwrap();
            let is = g.input("s", &[n], DType::F32).unwrap();
            let ic = g.input("c", &[n], cdt).unwrap();
            let out = g.push(Op::Nms { iou_threshold: thr, max_out }, &[ib, is, ic]).unwrap();
            let tc = t(&[n], cdt, &classes);
            for (name, got) in both(&g, out, &[("b", &tb), ("s", &ts), ("c", &tc)]) {
                let (list, count) = kept(&got);
                assert_eq!(list, want, "case {ci} ({n} boxes) {what} on {name}");
                assert_eq!(count as usize, want.len(), "case {ci} {what} on {name}: count");
            }
        }
        // The host functions.
        let bb: Vec<[f32; 4]> = bx.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let host: Vec<i64> = boxes::nms(&bb, &sc, &cls, thr, n).unwrap().into_iter().map(|i| i as i64).collect();
        assert_eq!(host, batched, "case {ci}: detection::boxes::nms");
        let host1: Vec<i64> =
            boxes::nms_single_class(&bb, &sc, thr).unwrap().into_iter().map(|i| i as i64).collect();
        assert_eq!(host1, single, "case {ci}: detection::boxes::nms_single_class");
    }
}

#[test]
fn box_coder_matches_torchvision() {
    let fx = fixture();
    for (ci, c) in fx["coder"].as_array().unwrap().iter().enumerate() {
        let w = floats(&c["weights"]);
        let weights = [w[0], w[1], w[2], w[3]];
        let clamp = c["clamp"].as_f64().unwrap() as f32;
        assert!((clamp - boxes::BBOX_XFORM_CLIP).abs() < 1e-6, "torchvision's clamp is {clamp}");
        let (n, k) = (c["n"].as_u64().unwrap() as usize, c["k"].as_u64().unwrap() as usize);
        let (r, tg, d) = (floats(&c["reference"]), floats(&c["target"]), floats(&c["deltas"]));
        let mut g = Graph::new();
        let ir = g.input("r", &[n, 4], DType::F32).unwrap();
        let it = g.input("t", &[n, 4], DType::F32).unwrap();
        let id = g.input("d", &[n, 4 * k], DType::F32).unwrap();
        let enc = g.push(Op::BoxEncode { weights }, &[ir, it]).unwrap();
        let dec = g.push(Op::BoxDecode { weights, clamp }, &[ir, id]).unwrap();
        let (tr, tt, td) = (t(&[n, 4], DType::F32, &r), t(&[n, 4], DType::F32, &tg), t(&[n, 4 * k], DType::F32, &d));
        let feed = [("r", &tr), ("t", &tt), ("d", &td)];
        for (name, got) in both(&g, enc, &feed) {
            assert_close(&format!("coder {ci} encode {name}"), &got.to_f32(), &floats(&c["encoded"]), 1e-5, 1e-5);
        }
        for (name, got) in both(&g, dec, &feed) {
            assert_close(&format!("coder {ci} decode {name}"), &got.to_f32(), &floats(&c["decoded"]), 1e-4, 1e-5);
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    // A gather index out of range is an error on the CPU (the GPU kernel writes 0 instead).
    let mut g = Graph::new();
    let x = g.input("x", &[2, 3], DType::F32).unwrap();
    let i = g.input("i", &[2, 1], DType::I64).unwrap();
    let out = g.push(Op::Gather { axis: 1 }, &[x, i]).unwrap();
    g.mark_output(out);
    let mut ex = Executor::new(CpuBackend, g, &ParamStore::new()).unwrap();
    let (tx, ti) = (t(&[2, 3], DType::F32, &[1.0; 6]), t(&[2, 1], DType::I64, &[0.0, 3.0]));
    assert!(ex.run(&[("x", &tx), ("i", &ti)]).is_err());
    // Shape rules: NMS needs f32 boxes [N, 4]; top-k needs k <= the last axis.
    let mut g = Graph::new();
    let b = g.input("b", &[5, 4], DType::F16).unwrap();
    let s = g.input("s", &[5], DType::F32).unwrap();
    let c = g.input("c", &[5], DType::I64).unwrap();
    assert!(g.push(Op::Nms { iou_threshold: 0.5, max_out: 3 }, &[b, s, c]).is_err());
    assert!(g.push(Op::TopK { k: 6 }, &[s]).is_err());
    // The GPU top-k takes k <= 4096: a larger k is refused by the launcher (emu), not computed wrongly.
    let mut g = Graph::new();
    let x = g.input("x", &[5000], DType::F32).unwrap();
    let out = g.push(Op::TopK { k: 4097 }, &[x]).unwrap();
    g.mark_output(out);
    let tx = t(&[5000], DType::F32, &(0..5000).map(|i| i as f32).collect::<Vec<_>>());
    let mut ex = Executor::new(EmuBackend::new(), g, &ParamStore::new()).unwrap();
    assert!(ex.run(&[("x", &tx)]).is_err());
}
