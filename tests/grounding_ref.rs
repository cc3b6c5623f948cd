//! The grounding head against its PyTorch reference (tools/grounding_ref.py, fixture from
//! tools/make_grounding_fixtures.py): one training step at the fixture's tiny config with random weights, on the
//! CPU engine and on the emulated kernels. Checked: the selected queries (exact), every output (the encoder
//! proposals and each decoder layer's logits and boxes), the matchings (exact), every loss term and the total, and
//! the gradient of every parameter. Tolerance: max |ours - torch| <= 1e-4 * max |torch| per tensor (the reference
//! runs in float64; we run f32).

use std::path::{Path, PathBuf};

use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::backend::Backend;
use instagen::models::grounding::{self, GroundTargets, GroundingConfig, GroundingModel, GroundingShape};
use instagen::params::ParamStore;
use instagen::runtime::DeviceParams;
use instagen::tensor::HostTensor;

const REL: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grounding")
}

struct Fixture {
    cfg: GroundingConfig,
    params: ParamStore,
    inputs: ParamStore,
    outputs: ParamStore,
    grads: ParamStore,
    targets: GroundTargets,
    matchings: serde_json::Value,
    levels: Vec<[usize; 2]>,
}

fn load() -> Fixture {
    let d = dir();
    let cfg = GroundingConfig::from_file(&d.join("config.json")).unwrap();
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("targets.json")).unwrap()).unwrap();
    let boxes = t["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            img.as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let v: Vec<f32> = b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
                    [v[0], v[1], v[2], v[3]]
                })
                .collect()
        })
        .collect();
    let labels = t["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| img.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect())
        .collect();
    let levels = t["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| [l[0].as_u64().unwrap() as usize, l[1].as_u64().unwrap() as usize])
        .collect();
    Fixture {
        cfg,
        params: ParamStore::load_safetensors(&d.join("params.safetensors")).unwrap(),
        inputs: ParamStore::load_safetensors(&d.join("inputs.safetensors")).unwrap(),
        outputs: ParamStore::load_safetensors(&d.join("outputs.safetensors")).unwrap(),
        grads: ParamStore::load_safetensors(&d.join("grads.safetensors")).unwrap(),
        targets: GroundTargets { boxes, labels },
        matchings: t["matchings"].clone(),
        levels,
    }
}

/// max |a - b| / max |b| (b the reference), with the shapes checked.
fn rel_err(what: &str, ours: &HostTensor, theirs: &HostTensor) -> f32 {
    assert_eq!(ours.shape, theirs.shape, "{what}: shape");
    let (a, b) = (ours.to_f32(), theirs.to_f32());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.iter().all(|x| x.is_finite()), "{what}: non-finite values");
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn check_step<B: Backend>(backend: B, label: &str) {
    let fx = load();
    let dev = DeviceParams::upload(backend, &fx.params).unwrap();
    let b = fx.inputs.get("text").unwrap().shape[0];
    let t = fx.inputs.get("text").unwrap().shape[1];
    let shape = GroundingShape { batch: b, levels: fx.levels.clone(), text_tokens: t, max_targets: 1 };
    let mut model = GroundingModel::new(&dev, &fx.cfg, &shape, false).unwrap();
    let feats: Vec<HostTensor> = (0..fx.cfg.levels()).map(|l| fx.inputs.get(&format!("feat_{l}")).unwrap().clone()).collect();
    let text = fx.inputs.get("text").unwrap();
    let terms = model.train_step(&feats, text, &fx.targets).unwrap();

    // Query selection: the same tokens in the same order.
    let topk = model.training_topk().unwrap().to_i64();
    assert_eq!(topk, fx.outputs.get("topk").unwrap().to_i64(), "{label}: selected tokens");

    // Every output.
    let mut worst = (String::new(), 0f32);
    let mut note = |what: String, e: f32| {
        assert!(e <= REL, "{label}: {what}: relative error {e:.3e} > {REL:e}");
        if e > worst.1 {
            worst = (what, e);
        }
    };
    for (name, logits, boxes) in model.training_outputs() {
        note(format!("{name} logits"), rel_err(name, logits, fx.outputs.get(&format!("{name}_logits")).unwrap()));
        note(format!("{name} boxes"), rel_err(name, boxes, fx.outputs.get(&format!("{name}_boxes")).unwrap()));
    }
    assert_eq!(model.training_outputs().len(), 1 + fx.cfg.dec_layers);

    // Matchings.
    for (name, m) in model.training_matchings() {
        let want = &fx.matchings[name.as_str()];
        for (img, (q, j)) in m.iter().enumerate() {
            let wq: Vec<usize> = want[img][0].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let wj: Vec<usize> = want[img][1].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            let mut ours: Vec<(usize, usize)> = q.iter().copied().zip(j.iter().copied()).collect();
            let mut theirs: Vec<(usize, usize)> = wq.into_iter().zip(wj).collect();
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "{label}: matching of {name}, image {img}");
        }
    }

    // Loss terms.
    for (name, v) in &terms.terms {
        let want = fx.outputs.get(&format!("terms.{name}")).unwrap().to_f32();
        for (k, term) in ["focal", "l1", "giou"].iter().enumerate() {
            let e = (v[k] - want[k]).abs() / want[k].abs().max(1e-12);
            note(format!("{name} {term} ({} vs {})", v[k], want[k]), e);
        }
    }
    let want_total = fx.outputs.get("loss").unwrap().scalar_f32().unwrap();
    note(format!("total loss ({} vs {want_total})", terms.total), (terms.total - want_total).abs() / want_total.abs());

    // Every gradient.
    let mut n = 0;
    for (name, g) in fx.grads.iter() {
        let ours = model.gradient(name).unwrap();
        note(format!("grad {name}"), rel_err(name, &ours, g));
        n += 1;
    }
    assert_eq!(n, grounding::param_shapes(&fx.cfg).unwrap().len(), "{label}: every parameter has a reference gradient");
    println!("{label}: {n} gradients, worst relative error {:.3e} ({})", worst.1, worst.0);

    // predict() runs the same forward (no dropout): the last decoder layer's outputs.
    let p = model.predict(&feats, text).unwrap();
    let last = fx.cfg.dec_layers - 1;
    assert!(rel_err("predict logits", &p.logits, fx.outputs.get(&format!("dec{last}_logits")).unwrap()) <= REL);
    assert!(rel_err("predict boxes", &p.boxes, fx.outputs.get(&format!("dec{last}_boxes")).unwrap()) <= REL);
}

#[test]
fn one_training_step_matches_pytorch_on_cpu() {
    check_step(CpuBackend, "cpu");
}

#[test]
fn one_training_step_matches_pytorch_on_emu() {
    check_step(EmuBackend::new(), "emu");
}

#[test]
fn the_fixture_config_is_the_tiny_shape_of_the_reference() {
    let fx = load();
    // Every parameter of the reference exists in the Rust graph with the same shape, and no other.
    grounding::check_params(&fx.cfg, &fx.params).unwrap();
    assert_eq!(fx.params.len(), grounding::param_shapes(&fx.cfg).unwrap().len());
}

#[test]
fn bad_inputs_are_clear_errors() {
    let fx = load();
    let dev = DeviceParams::upload(CpuBackend, &fx.params).unwrap();
    let shape = GroundingShape { batch: 3, levels: fx.levels.clone(), text_tokens: 3, max_targets: 1 };
    let mut model = GroundingModel::new(&dev, &fx.cfg, &shape, false).unwrap();
    let feats: Vec<HostTensor> = (0..2).map(|l| fx.inputs.get(&format!("feat_{l}")).unwrap().clone()).collect();
    let text = fx.inputs.get("text").unwrap();
    // A feature level of the wrong shape names the level.
    let mut bad = feats.clone();
    bad[1] = HostTensor::zeros(&[3, 4, 3, 7], instagen::tensor::DType::F32);
    let e = model.predict(&bad, text).unwrap_err().to_string();
    assert!(e.contains("feature level 1") && e.contains("feat_1"), "{e}");
    // A label on a padding token (image 2 has one real token) names the target.
    let mut t = fx.targets.clone();
    t.boxes[2].push([0.5, 0.5, 0.2, 0.2]);
    t.labels[2].push(1);
    let e = model.train_step(&feats, text, &t).unwrap_err().to_string();
    assert!(e.contains("target 0 of image 2") && e.contains("label 1"), "{e}");
    // Fewer levels than the config has.
    let e = GroundingModel::new(&dev, &fx.cfg, &GroundingShape { levels: vec![[8, 6]], ..shape.clone() }, false);
    assert!(e.is_err());
    // A dropout model trains too (different masks, finite losses).
    let mut student = GroundingModel::new(&dev, &fx.cfg, &shape, true).unwrap();
    student.set_dropout_seed(7, 0);
    let terms = student.train_step(&feats, text, &fx.targets).unwrap();
    assert!(terms.total.is_finite());
    let want = fx.outputs.get("loss").unwrap().scalar_f32().unwrap();
    assert!((terms.total - want).abs() > 1e-4 * want, "dropout changed nothing: {} vs {want}", terms.total);
}
