//! The Faster R-CNN heads (RPN and RoI heads) against torchvision 0.29.2 on the fixture of
//! `tools/make_rcnn_heads_fixtures.py` (tests/fixtures/rcnn_heads/): random FPN features of two images (96x128
//! and 80x112, padded to 96x128), random head weights spread so scores differ. Eval mode: the RPN proposals and
//! the final detections. Training mode, with the anchors and RoIs torchvision's samplers chose: the train-mode
//! proposals, the four losses and the gradients of the features and of a few head parameters; then the
//! per-source rules (a class mask, an RPN weight of 0) against references computed with torch.
//! Runs as a two-stage graph, proposals and targets on the host in between, on the CPU engine (`CpuBackend`)
//! and on the emulated CUDA kernels (`EmuBackend`).

use std::collections::HashMap;
use std::path::PathBuf;

use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::backend::Backend;
use instagen::graph::{autodiff, Graph, NodeId};
use instagen::models::detector::roi_heads::{self, box_head, roi_losses, rois_input, rois_tensor, RoiHeadsConfig};
use instagen::models::detector::rpn::{self, rpn_head, rpn_loss_feed, rpn_losses, Proposals, RpnConfig, Sampled};
use instagen::params::ParamStore;
use instagen::runtime::Executor;
use instagen::tensor::{DType, HostTensor};
use instagen::util::Rng;

const KEYS: [&str; 5] = ["0", "1", "2", "3", "pool"];
const PADDED: (usize, usize) = (96, 128);
const SIZES: [(usize, usize); 2] = [(96, 128), (80, 112)];

/// A fixture tensor: shape and values (f16/f32 as f32, i64 as f32 in `ints`, i16 decoded with its scale).
struct T {
    shape: Vec<usize>,
    f: Vec<f32>,
    ints: Vec<i64>,
}

struct Fixture {
    t: HashMap<String, T>,
    meta: serde_json::Value,
}

impl Fixture {
    fn load() -> Fixture {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rcnn_heads");
        let bytes = std::fs::read(dir.join("heads.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut t = HashMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let (f, ints) = match view.dtype() {
                safetensors::Dtype::F32 => (d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
                safetensors::Dtype::F16 => {
                    (d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(), vec![])
                }
                safetensors::Dtype::I64 => (vec![], d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
                safetensors::Dtype::I16 => (d.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32).collect(), vec![]),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            t.insert(name.to_string(), T { shape: view.shape().to_vec(), f, ints });
        }
        let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("heads.json")).unwrap()).unwrap();
        Fixture { t, meta }
    }
    fn get(&self, name: &str) -> &T {
        self.t.get(name).unwrap_or_else(|| panic!("fixture has no {name}"))
    }
    fn f(&self, name: &str) -> &[f32] {
        &self.get(name).f
    }
    fn boxes(&self, name: &str) -> Vec<[f32; 4]> {
        self.f(name).chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
    }
    fn idx(&self, name: &str) -> Vec<usize> {
        self.get(name).ints.iter().map(|&i| i as usize).collect()
    }
    /// A stored gradient (int16 x scale) and its scale.
    fn grad(&self, name: &str) -> (Vec<f32>, f32) {
        let s = self.f(&format!("gradscale.{name}"))[0];
        (self.f(&format!("grad.{name}")).iter().map(|q| q * s).collect(), s)
    }
    fn params(&self) -> ParamStore {
        let mut store = ParamStore::new();
        for (name, t) in &self.t {
            if let Some(p) = name.strip_prefix("param.") {
                store.insert(p, HostTensor::from_f32(&t.shape, DType::F32, &t.f).unwrap());
            }
        }
        store
    }
    fn features(&self) -> Vec<HostTensor> {
        KEYS.iter()
            .map(|k| {
                let t = self.get(&format!("feat.{k}"));
                HostTensor::from_f32(&t.shape, DType::F32, &t.f).unwrap()
            })
            .collect()
    }
    fn configs(&self) -> (RpnConfig, RoiHeadsConfig) {
        let roi = RoiHeadsConfig {
            num_classes: self.meta["num_classes"].as_u64().unwrap() as usize,
            representation_size: self.meta["representation_size"].as_u64().unwrap() as usize,
            ..RoiHeadsConfig::default()
        };
        (RpnConfig::default(), roi)
    }
}

/// The heads on feature inputs `feat.<k>`: the RPN head, and the box head on `rows` RoIs fed in stage 1.
struct Heads {
    g: Graph,
    feats: Vec<NodeId>,
    rpn: rpn::RpnHead,
    boxes: roi_heads::BoxHead,
}

fn heads(fx: &Fixture, rpn_cfg: &RpnConfig, roi_cfg: &RoiHeadsConfig, rows: usize) -> Heads {
    let mut g = Graph::new();
    let feats: Vec<NodeId> =
        KEYS.iter().map(|k| g.input(&format!("feat.{k}"), &fx.get(&format!("feat.{k}")).shape, DType::F32).unwrap()).collect();
    let rpn = rpn_head(&mut g, rpn_cfg, &feats).unwrap();
    g.mark_stage_output(rpn.objectness);
    g.mark_stage_output(rpn.deltas);
    let rois = rois_input(&mut g, 2 * rows, 1).unwrap();
    let boxes = box_head(&mut g, roi_cfg, &feats[..4], &[4, 8, 16, 32], rois).unwrap();
    Heads { g, feats, rpn, boxes }
}

fn feed_features<'a>(fx: &'a [HostTensor], names: &'a [String]) -> Vec<(&'a str, &'a HostTensor)> {
    names.iter().map(|s| s.as_str()).zip(fx.iter()).collect()
}

/// Largest |a - b| over two equally long lists (panics on a length mismatch, naming `what`).
fn max_abs(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: {} values vs torchvision's {}", a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_proposals(what: &str, got: &[Proposals], fx: &Fixture, prefix: &str, scores: bool) -> (f32, f32) {
    let (mut wb, mut ws) = (0f32, 0f32);
    for (i, p) in got.iter().enumerate() {
        let want = fx.f(&format!("{prefix}.proposals.{i}"));
        wb = wb.max(max_abs(&format!("{what} image {i} boxes"), p.boxes.as_flattened(), want));
        if scores {
            ws = ws.max(max_abs(&format!("{what} image {i} scores"), &p.scores, fx.f(&format!("{prefix}.proposal_scores.{i}"))));
        }
    }
    assert!(wb <= 1e-2 && ws <= 1e-4, "{what}: boxes off by {wb} px, scores by {ws}");
    (wb, ws)
}

#[test]
fn eval_proposals_and_detections_match_torchvision() {
    eval_parity(CpuBackend);
}

#[test]
fn eval_on_emulated_kernels() {
    eval_parity(EmuBackend::new());
}

#[test]
fn training_on_emulated_kernels() {
    training_parity(EmuBackend::new(), false); // the rules' extra steps need nothing the emulator adds
}

fn eval_parity<B: Backend>(backend: B) {
    let fx = Fixture::load();
    let (rpn_cfg, roi_cfg) = fx.configs();
    let rows = rpn_cfg.post_nms_top_n_test;
    let mut h = heads(&fx, &rpn_cfg, &roi_cfg, rows);
    h.g.mark_output(h.boxes.class_logits);
    h.g.mark_output(h.boxes.box_regression);
    let mut ex = Executor::new(backend, h.g.clone(), &fx.params()).unwrap();
    let feats = fx.features();
    let names: Vec<String> = KEYS.iter().map(|k| format!("feat.{k}")).collect();
    ex.run_stage(0, &feed_features(&feats, &names)).unwrap();
    let obj = ex.get(h.rpn.objectness).unwrap().to_f32();
    let del = ex.get(h.rpn.deltas).unwrap().to_f32();
    let anchors = h.rpn.anchors(&rpn_cfg, PADDED).unwrap();
    let props = rpn::proposals(&rpn_cfg, false, &anchors, &obj, &del, &SIZES).unwrap();
    let (pb, ps) = check_proposals("eval proposals", &props, &fx, "eval", true);
    let rois = rois_tensor(&props, rows).unwrap();
    ex.run_stage(1, &[(roi_heads::ROI_ROIS, &rois)]).unwrap();
    let logits = ex.get(h.boxes.class_logits).unwrap().to_f32();
    let reg = ex.get(h.boxes.box_regression).unwrap().to_f32();
    // The default score threshold (over 1000 candidates per image: batched_nms per class), then 0.5 (under
    // 1000: its coordinate trick).
    let hi = RoiHeadsConfig { score_thresh: fx.meta["hi_score_thresh"].as_f64().unwrap() as f32, ..roi_cfg.clone() };
    let (mut wb, mut ws) = (0f32, 0f32);
    let mut dets = Vec::new();
    for (cfg, prefix) in [(&roi_cfg, "eval"), (&hi, "eval_hi")] {
        dets = roi_heads::postprocess(cfg, &logits, &reg, &props, rows, &SIZES).unwrap();
        for (i, d) in dets.iter().enumerate() {
            let labels: Vec<usize> = d.labels.iter().map(|&l| l as usize).collect();
            assert_eq!(labels, fx.idx(&format!("{prefix}.det_labels.{i}")), "{prefix} image {i} labels");
            let want = fx.f(&format!("{prefix}.det_boxes.{i}"));
            wb = wb.max(max_abs(&format!("{prefix} image {i} detection boxes"), d.boxes.as_flattened(), want));
            ws = ws.max(max_abs(&format!("{prefix} image {i} detection scores"), &d.scores, fx.f(&format!("{prefix}.det_scores.{i}"))));
        }
    }
    println!(
        "proposals {:?}: boxes within {pb} px, scores {ps}; detections {:?}: boxes within {wb} px, scores {ws}",
        props.iter().map(|p| p.boxes.len()).collect::<Vec<_>>(),
        dets.iter().map(|d| d.boxes.len()).collect::<Vec<_>>()
    );
    assert!(wb <= 1e-2 && ws <= 1e-4, "detections: boxes off by {wb} px, scores by {ws}");
}

#[test]
fn training_losses_and_gradients_match_torchvision() {
    training_parity(CpuBackend, true);
}

/// The training step's parity; with `rules`, two more steps check the per-source rules.
fn training_parity<B: Backend>(backend: B, rules: bool) {
    let fx = Fixture::load();
    let (rpn_cfg, roi_cfg) = fx.configs();
    let rows = roi_cfg.batch_size_per_image;
    let mut h = heads(&fx, &rpn_cfg, &roi_cfg, rows);
    let rl = rpn_losses(&mut h.g, &h.rpn, 0).unwrap();
    let ol = roi_losses(&mut h.g, &h.boxes, 2, 1).unwrap();
    let losses = [rl.objectness, rl.box_reg, ol.classifier, ol.box_reg];
    let s = h.g.add(losses[0], losses[1]).unwrap();
    let s = h.g.add(s, losses[2]).unwrap();
    let total = h.g.add(s, losses[3]).unwrap();
    let grad_params: Vec<String> =
        fx.meta["grad_params"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let param_nodes: Vec<NodeId> =
        grad_params.iter().map(|p| h.g.params().into_iter().find(|(_, n)| n == p).unwrap_or_else(|| panic!("no param {p}")).0).collect();
    let wrt: Vec<NodeId> = h.feats.iter().chain(&param_nodes).copied().collect();
    let grads = autodiff::backward(&mut h.g, total, &wrt).unwrap();
    for &n in losses.iter().chain(&grads) {
        h.g.mark_output(n);
    }
    let mut ex = Executor::new(backend, h.g.clone(), &fx.params()).unwrap();
    let feats = fx.features();
    let names: Vec<String> = KEYS.iter().map(|k| format!("feat.{k}")).collect();
    let anchors = h.rpn.anchors(&rpn_cfg, PADDED).unwrap();
    let gt: Vec<Vec<[f32; 4]>> = (0..2).map(|i| fx.boxes(&format!("gt_boxes.{i}"))).collect();
    let gt_labels: Vec<Vec<i64>> = (0..2).map(|i| fx.get(&format!("gt_labels.{i}")).ints.clone()).collect();
    let sample = |kind: &str, i: usize| Sampled {
        pos: fx.idx(&format!("train.{kind}_pos.{i}")),
        neg: fx.idx(&format!("train.{kind}_neg.{i}")),
    };
    let rpn_given: Vec<Sampled> = (0..2).map(|i| sample("rpn", i)).collect();
    let roi_given: Vec<Sampled> = (0..2).map(|i| sample("roi", i)).collect();
    let mut rng = Rng::new(0);

    // One training forward/backward with the given per-image rules; returns the four losses.
    let mut step = |rpn_weight: &[f32], class_mask: Option<&[Vec<f32>]>, ex: &mut Executor<B>| -> ([f32; 4], Vec<Proposals>) {
        let rpn_feed = rpn_loss_feed(&rpn_cfg, &anchors, &gt, rpn_weight, Some(&rpn_given), &mut rng).unwrap();
        let mut feed = feed_features(&feats, &names);
        feed.extend(rpn_feed.feed.iter().map(|(n, t)| (n.as_str(), t)));
        ex.run_stage(0, &feed).unwrap();
        let obj = ex.get(h.rpn.objectness).unwrap().to_f32();
        let del = ex.get(h.rpn.deltas).unwrap().to_f32();
        let props = rpn::proposals(&rpn_cfg, true, &anchors, &obj, &del, &SIZES).unwrap();
        let t = roi_heads::roi_targets(&roi_cfg, &props, &gt, &gt_labels, class_mask, Some(&roi_given), &mut rng).unwrap();
        let mut feed: Vec<(&str, &HostTensor)> = vec![(roi_heads::ROI_ROIS, &t.rois)];
        feed.extend(t.feed.iter().map(|(n, t)| (n.as_str(), t)));
        ex.run_stage(1, &feed).unwrap();
        (losses.map(|l| ex.get(l).unwrap().to_f32()[0]), props)
    };

    let (got, props) = step(&[1.0, 1.0], None, &mut ex);
    let (pb, _) = check_proposals("train proposals", &props, &fx, "train", false);
    let want = fx.f("train.losses");
    let rel: Vec<f32> = got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs()).collect();
    println!("train proposals within {pb} px; losses {got:?} vs torchvision {want:?}: relative errors {rel:?}");
    assert!(rel.iter().all(|&r| r <= 1e-5), "losses {got:?} vs torchvision {want:?}");
    // Gradients: the reference is int16 x scale (exact to 0.5 scale = 1.53e-5 of its max |g|).
    for (name, &node) in names.iter().chain(&grad_params).zip(&grads) {
        let g = ex.get(node).unwrap().to_f32();
        let (want, scale) = fx.grad(name);
        let peak = scale * 32767.0;
        let err = max_abs(name, &g, &want);
        println!("grad {name}: max |ours - torch| = {:.3e} of max |g| {peak:.3e}", err / peak);
        assert!(err <= 5e-5 * peak, "grad {name}: off by {err} (max |g| {peak})");
    }

    if !rules {
        return;
    }
    // Per-source rules: classes 3 and 5 out of image 1's softmax; then image 1's RPN loss dropped.
    let m = fx.f("mask.class_mask");
    let mask: Vec<Vec<f32>> = m.chunks_exact(roi_cfg.num_classes).map(|r| r.to_vec()).collect();
    let (got, _) = step(&[1.0, 1.0], Some(&mask), &mut ex);
    let want = fx.f("mask.loss_classifier")[0];
    println!("masked loss_classifier {} vs torch {want}", got[2]);
    assert!((got[2] - want).abs() <= 1e-5 * want.abs(), "masked classifier loss {} vs {want}", got[2]);
    assert!((got[2] - fx.f("train.losses")[2]).abs() > 1e-3, "the mask must change the loss");
    let (got, _) = step(&[1.0, 0.0], None, &mut ex);
    let want = fx.f("rpnw.losses");
    println!("rpn_weight [1, 0]: rpn losses {:?} vs torchvision on image 0 alone {want:?}", &got[..2]);
    for k in 0..2 {
        assert!((got[k] - want[k]).abs() <= 1e-5 * want[k].abs(), "rpn loss {k} with weight [1, 0]: {} vs {}", got[k], want[k]);
    }
}

#[test]
fn bad_inputs_are_named() {
    let cfg = RpnConfig { anchor_sizes: vec![vec![32.0], vec![]], ..RpnConfig::default() };
    assert!(cfg.validate().unwrap_err().to_string().contains("anchor_sizes"));
    let roi = RoiHeadsConfig::default();
    let p = vec![Proposals { boxes: vec![[0.0, 0.0, 10.0, 10.0]], scores: vec![0.9] }];
    let err = roi_heads::roi_targets(&roi, &p, &[vec![[0.0, 0.0, 10.0, 10.0]]], &[vec![91]], None, None, &mut Rng::new(0)).unwrap_err();
    assert!(err.to_string().contains("gt label 91"), "{err}");
    let mask = vec![vec![1.0; 90]];
    let err = roi_heads::roi_targets(&roi, &p, &[vec![]], &[vec![]], Some(&mask), None, &mut Rng::new(0)).unwrap_err();
    assert!(err.to_string().contains("class_mask of image 0"), "{err}");
    let mut mask = vec![vec![1.0; 91]];
    mask[0][7] = 0.0;
    let err = roi_heads::roi_targets(&roi, &p, &[vec![[0.0, 0.0, 10.0, 10.0]]], &[vec![7]], Some(&mask), None, &mut Rng::new(0))
        .unwrap_err();
    assert!(err.to_string().contains("class 7 that its class_mask excludes"), "{err}");
    assert!(roi_heads::rois_tensor(&p, 0).is_err());
    let err = roi_heads::roi_targets(&roi, &p, &[vec![[5.0, 0.0, 5.0, 10.0]]], &[vec![1]], None, None, &mut Rng::new(0)).unwrap_err();
    assert!(err.to_string().contains("ground-truth box 0 of image 0"), "{err}");
    let anchors = instagen::models::detector::anchors::anchors((32, 32), &[(8, 8)], &[vec![32.0]], &[1.0]).unwrap();
    let one = RpnConfig { anchor_sizes: vec![vec![32.0]], aspect_ratios: vec![1.0], ..RpnConfig::default() };
    let gt = [vec![[0.0, 0.0, 10.0, 10.0], [0.0, f32::NAN, 4.0, 4.0]]];
    let err = rpn_loss_feed(&one, &anchors, &gt, &[1.0], None, &mut Rng::new(0)).unwrap_err();
    assert!(err.to_string().contains("ground-truth box 1 of image 0"), "{err}");
    let cfg: Result<RpnConfig, _> = serde_json::from_str(r#"{"nms_tresh": 0.5}"#);
    assert!(cfg.unwrap_err().to_string().contains("nms_tresh"));
}
