//! The grounding head against its PyTorch reference (tools/grounding_ref.py, fixture from
//! tools/make_grounding_fixtures.py): one training step at the fixture's tiny config with random weights, on the
//! CPU engine and on the emulated kernels. Checked: the selected queries (exact), every output (the encoder
//! proposals and each decoder layer's logits and boxes), the matchings (exact), every loss term and the total, and
//! the gradient of every parameter. Tolerance: max |ours - torch| <= 1e-4 * max |torch| per tensor (the reference
//! runs in float64; we run f32).

mod common;

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
    let topk_ok = topk == fx.outputs.get("topk").unwrap().to_i64();
    if !topk_ok {
        println!("{label}: selected tokens differ:\n ours  {topk:?}\n torch {:?}", fx.outputs.get("topk").unwrap().to_i64());
    }

    // Every output.
    // Every comparison is made and printed before failing, so one run shows where a difference starts.
    let mut worst = (String::new(), 0f32);
    let mut failed = Vec::new();
    let mut note = |what: String, e: f32| {
        if !(e <= REL) {
            println!("{label}: {what}: relative error {e:.3e} > {REL:e}");
            failed.push(what.clone());
        }
        if e > worst.1 {
            worst = (what, e);
        }
    };
    for (name, logits, boxes) in model.training_outputs() {
        note(format!("{name} logits"), rel_err(name, logits, fx.outputs.get(&format!("{name}_logits")).unwrap()));
        note(format!("{name} boxes"), rel_err(name, boxes, fx.outputs.get(&format!("{name}_boxes")).unwrap()));
    }
    assert_eq!(model.training_outputs().len(), 1 + fx.cfg.dec_layers);
    assert!(topk_ok, "{label}: selected tokens differ");

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
        if let Some(attn) = name.strip_suffix(".k.bias") {
            // A key bias shifts every logit of a query's softmax row equally: its gradient is exactly zero (the
            // float64 reference holds round-off only). Ours must be zero to f32 round-off, measured against the
            // same attention's key-weight gradient.
            let theirs = g.to_f32().iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(theirs < 1e-12, "{label}: {name}: the reference is not zero ({theirs:e})");
            let scale = fx.grads.get(&format!("{attn}.k.weight")).unwrap().to_f32().iter().fold(0f32, |m, x| m.max(x.abs()));
            let ours_max = ours.to_f32().iter().fold(0f32, |m, x| m.max(x.abs()));
            note(format!("grad {name} (zero; vs {attn}.k.weight)"), ours_max / scale);
        } else {
            note(format!("grad {name}"), rel_err(name, &ours, g));
        }
        n += 1;
    }
    assert_eq!(n, grounding::param_shapes(&fx.cfg).unwrap().len(), "{label}: every parameter has a reference gradient");
    println!("{label}: {n} gradients, worst relative error {:.3e} ({})", worst.1, worst.0);
    assert!(failed.is_empty(), "{label}: {} comparisons over {REL:e}: {failed:?}", failed.len());

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

/// The fixture CLIP text encoder (width 64) with its token table extended to the real vocabulary (row i = fixture
/// row i % rows), and the real tokenizer; `None` without ../shared/data.
fn fixture_clip() -> Option<(instagen::models::config::ClipTextConfig, ParamStore, instagen::models::tokenizer::ClipTokenizer)> {
    use instagen::models::tokenizer::{ClipTokenizer, VOCAB_SIZE};
    let gz = common::shared_data("clip/bpe_simple_vocab_16e6.txt.gz")?;
    let te = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/text_encoder");
    let mut w = ParamStore::load_safetensors(&te.join("model.safetensors")).unwrap();
    let key = "text_model.embeddings.token_embedding.weight";
    let emb = w.get(key).unwrap().clone();
    let row_bytes = emb.shape[1] * emb.dtype.size();
    let mut data = Vec::with_capacity(VOCAB_SIZE * row_bytes);
    for i in 0..VOCAB_SIZE {
        let r = i % emb.shape[0];
        data.extend_from_slice(&emb.data[r * row_bytes..(r + 1) * row_bytes]);
    }
    w.insert(key, HostTensor::from_bytes(&[VOCAB_SIZE, emb.shape[1]], emb.dtype, data).unwrap());
    let mut cfg = instagen::models::config::ClipTextConfig::from_file(&te.join("config.json")).unwrap();
    cfg.vocab_size = VOCAB_SIZE;
    Some((cfg, w, ClipTokenizer::from_bpe_gz(&gz).unwrap()))
}

#[test]
fn name_embeddings_average_the_names_tokens_once() {
    use instagen::models::clip_text::ClipTextModel;
    use instagen::models::grounding::text::{pad_text, TextEmbedder};
    let Some((cfg, w, tok)) = fixture_clip() else { return };
    let (_, _, tok2) = fixture_clip().unwrap();
    let mut te = TextEmbedder::new(CpuBackend, cfg.clone(), &w, tok).unwrap();
    let hot_dog = te.embed("hot dog").unwrap();
    assert_eq!(te.embed("hot dog").unwrap(), hot_dog);
    assert_eq!(te.cached(), 1);
    // Independently: the encoder on the prompt, rows of the name's two tokens (after BOS and the 4 prefix tokens).
    let prefix = tok2.tokenize("a photograph of a").unwrap().len();
    let name = tok2.tokenize("hot dog").unwrap().len();
    let enc = tok2.encode("a photograph of a hot dog").unwrap();
    assert_eq!(enc.len, 1 + prefix + name + 1);
    let model = ClipTextModel::new(cfg.clone(), 1, w.get("text_model.embeddings.token_embedding.weight").unwrap().dtype).unwrap();
    let g = model.build(false).unwrap();
    let inputs = model.inputs(&[enc.ids.clone()]).unwrap();
    let feed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let h = common::run_cpu(&g.graph, &w, &feed, &[g.last_hidden_state]).remove(0).to_f32();
    let d = cfg.hidden_size;
    for c in 0..d {
        let want: f32 = (1 + prefix..1 + prefix + name).map(|p| h[p * d + c]).sum::<f32>() / name as f32;
        assert!((hot_dog[c] - want).abs() <= 1e-5 * (1.0 + want.abs()), "channel {c}: {} vs {want}", hot_dog[c]);
    }
    let both = te.text_embeddings(&["dog", "hot dog"]).unwrap();
    assert_eq!(both.shape, vec![2, d]);
    assert_eq!(&both.to_f32()[d..], &hot_dog[..]);
    assert_eq!(te.cached(), 2);
    assert!(te.text_embeddings(&[]).unwrap_err().to_string().contains("empty"));
    // Padding to the head's text input: zero rows after an image's names.
    let one = te.text_embeddings(&["dog"]).unwrap();
    let padded = pad_text(&[both.clone(), one], 3).unwrap();
    assert_eq!(padded.shape, vec![2, 3, d]);
    let v = padded.to_f32();
    assert!(v[2 * d..3 * d].iter().all(|&x| x == 0.0) && v[4 * d..].iter().all(|&x| x == 0.0));
    assert!(pad_text(&[both], 1).is_err());
}
