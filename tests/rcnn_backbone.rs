//! ResNet + FPN backbone (`models::detector::backbone`) against torchvision 0.29.2 (`BackboneWithFPN` over
//! resnet18 / resnet50 with `FrozenBatchNorm2d`, and resnet50 with the Caffe stride placement), on the fixtures
//! of `tools/make_rcnn_backbone_fixtures.py` (tests/fixtures/rcnn_backbone/). The weights are a pure function of
//! each torchvision key (the script's generator, reimplemented here), written to a safetensors file under
//! torchvision's key names and loaded through `detector::weights`, so the test checks the names, the shapes, the
//! loading and the features. Also: the ImageNet ResNet layout, the one-error listing of bad keys,
//! `trainable_backbone_layers`, and the kernels (emu) against the CPU on a tiny backbone.

mod common;

use std::path::{Path, PathBuf};

use instagen::backend::Backend;
use instagen::backend::cpu::CpuBackend;
use instagen::backend::emu::EmuBackend;
use instagen::graph::{Graph, NodeId};
use instagen::models::detector::backbone::{self, BackboneConfig, FpnFeatures};
use instagen::models::detector::weights::{self, Layout};
use instagen::params::ParamStore;
use instagen::runtime::Executor;
use instagen::tensor::{DType, HostTensor};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rcnn_backbone")
}

fn json(name: &str) -> Value {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `(key, shape)` pairs of a JSON list.
fn key_list(v: &Value) -> Vec<(String, Vec<usize>)> {
    (v.as_array().unwrap().iter())
        .map(|e| {
            let key = e[0].as_str().unwrap().to_string();
            let shape = e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (key, shape)
        })
        .collect()
}

use common::rcnn_gen::uniform;

/// The script's value of tensor `key` (the shared key-function generator at gain 1).
fn value(key: &str, shape: &[usize]) -> HostTensor {
    common::rcnn_gen::value(key, shape, 1.0)
}

fn images(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64).map(|i| (2.0 * uniform("images", i)) as f32).collect();
    HostTensor::from_f32(shape, DType::F32, &v).unwrap()
}

/// A fresh folder for this test's files.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen-rcnn-backbone-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a safetensors file of the generated values of `keys` (file key, shape), each generated under
/// `gen_prefix + key`.
fn write_file(path: &Path, keys: &[(String, Vec<usize>)], gen_prefix: &str) {
    let mut store = ParamStore::new();
    for (k, s) in keys {
        store.insert(k, value(&format!("{gen_prefix}{k}"), s));
    }
    store.save_safetensors(path).unwrap();
}

fn build(cfg: &BackboneConfig, image: &[usize]) -> (Graph, NodeId, FpnFeatures) {
    let mut g = Graph::new();
    let x = g.input("images", image, DType::F32).unwrap();
    let f = backbone::build_backbone(&mut g, cfg, x).unwrap();
    for &l in &f.levels {
        g.mark_output(l);
    }
    (g, x, f)
}

fn run<B: Backend>(backend: B, g: &Graph, store: &ParamStore, x: &HostTensor, outs: &[NodeId]) -> Vec<Vec<f32>> {
    let mut ex = Executor::new(backend, g.clone(), store).unwrap();
    ex.run(&[("images", x)]).unwrap();
    outs.iter().map(|&o| ex.get(o).unwrap().to_f32()).collect()
}

/// max |got - want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let m = want.iter().fold(0f64, |a, &w| a.max(w.abs() as f64));
    let e = got.iter().zip(want).fold(0f64, |a, (&g, &w)| {
        let d = (g as f64 - w as f64).abs();
        if d.is_nan() { f64::INFINITY } else { a.max(d) }
    });
    e / m
}

/// P2..P6 of the fixture `name` (int16 x per-level scale): (shape, values).
fn reference(name: &str) -> Vec<(Vec<usize>, Vec<f32>)> {
    let path = fixture_dir().join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (2..=6)
        .map(|p| {
            let q = st.tensor(&format!("p{p}")).unwrap();
            assert_eq!(q.dtype(), safetensors::Dtype::I16);
            let s = st.tensor(&format!("scale.p{p}")).unwrap();
            let scale = f32::from_le_bytes(s.data()[..4].try_into().unwrap());
            let v = q.data().chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 * scale).collect();
            (q.shape().to_vec(), v)
        })
        .collect()
}

/// The graph's parameters are exactly torchvision's state dict (names and shapes), the generated weights load
/// through the torchvision-named file, and P2..P6 match torchvision's.
fn check_model(name: &str, depth: usize, caffe: bool) {
    let meta = json(&format!("{name}.json"));
    let keys = key_list(&meta["keys"]);
    let image: Vec<usize> = meta["images"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let cfg = BackboneConfig {
        depth,
        caffe_stride: caffe,
        out_channels: meta["out_channels"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let (g, _, f) = build(&cfg, &image);
    let ours: Vec<(String, Vec<usize>)> = g.params().into_iter().map(|(id, n)| (n.to_string(), g.node(id).shape.clone())).collect();
    let (mut a, mut b) = (ours.clone(), keys.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: graph parameters differ from torchvision's state dict");

    let dir = temp_dir(name);
    let file = dir.join("weights.safetensors");
    write_file(&file, &keys, "");
    let store = weights::load(&file, &g, Layout::Detector).unwrap();
    assert_eq!(store.len(), keys.len());

    let refs = reference(name);
    let got = run(CpuBackend, &g, &store, &images(&image), &f.levels);
    for (i, got) in got.iter().enumerate() {
        let (rshape, want) = &refs[i];
        let shape = g.shape(f.levels[i]);
        assert_eq!(shape, rshape.as_slice(), "{name} P{}", i + 2);
        let want = want.as_slice();
        let e = rel_err(got, &want);
        println!("{name} P{} {shape:?}: max|err| / max|ref| = {e:.2e}", i + 2);
        // The reference is stored within 1.53e-5 of max|ref| (int16); f32 sums in another order add the rest
        // (seen: at most 1.66e-5 in all).
        assert!(e <= 3e-5, "{name} P{}: relative error {e:.3e}", i + 2);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resnet18_fpn_matches_torchvision() {
    check_model("r18", 18, false);
}

#[test]
fn resnet50_fpn_matches_torchvision() {
    check_model("r50", 50, false);
}

#[test]
fn resnet50_caffe_stride_fpn_matches_torchvision() {
    check_model("r50caffe", 50, true);
}

/// The kernels (max pool, frozen norm, conv, upsampling) on the emulator against the CPU backend, on a tiny
/// ResNet-18 FPN.
#[test]
fn tiny_backbone_on_emu_matches_cpu() {
    let cfg = BackboneConfig { depth: 18, out_channels: 8, ..Default::default() };
    let image = [1, 32, 64, 3];
    let (g, _, f) = build(&cfg, &image);
    let mut store = ParamStore::new();
    for (id, n) in g.params() {
        store.insert(n, value(n, &g.node(id).shape));
    }
    let x = images(&image);
    let want = run(CpuBackend, &g, &store, &x, &f.levels);
    let got = run(EmuBackend::new(), &g, &store, &x, &f.levels);
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(got, want);
        println!("emu P{}: max|err| / max|cpu| = {e:.2e}", i + 2);
        assert!(e <= 1e-5, "emu P{}: relative error {e:.3e}", i + 2);
    }
}

/// An ImageNet ResNet state dict (torchvision's classifier keys) initialises the body: `fc.*` and
/// `num_batches_tracked` are dropped, every body parameter is found, the values are those of the detector keys.
#[test]
fn imagenet_resnet_weights_load_into_the_body() {
    let keys = json("imagenet_keys.json");
    let dir = temp_dir("imagenet");
    for (depth, other) in [(18, 50), (50, 18)] {
        let cfg = BackboneConfig { depth, out_channels: 16, ..Default::default() };
        let (g, _, _) = build(&cfg, &[1, 64, 64, 3]);
        let ik = key_list(&keys[format!("resnet{depth}").as_str()]);
        assert!(ik.iter().any(|(k, _)| k == "fc.weight") && ik.iter().any(|(k, _)| k.ends_with("num_batches_tracked")));
        let file = dir.join(format!("resnet{depth}.safetensors"));
        write_file(&file, &ik, "backbone.body.");
        let store = weights::load(&file, &g, Layout::ImagenetResnet).unwrap();
        let body: Vec<(NodeId, &str)> = g.params().into_iter().filter(|(_, n)| n.starts_with("backbone.body.")).collect();
        assert_eq!(store.len(), body.len(), "resnet{depth}: every body parameter, nothing else");
        for (id, n) in body {
            let t = store.get(n).unwrap_or_else(|| panic!("{n} not loaded"));
            assert_eq!(t.to_f32(), value(n, &g.node(id).shape).to_f32(), "{n}");
        }
        // The other depth's file: every mismatch listed in one error.
        let file = dir.join(format!("resnet{other}.safetensors"));
        write_file(&file, &key_list(&keys[format!("resnet{other}").as_str()]), "backbone.body.");
        let err = weights::load(&file, &g, Layout::ImagenetResnet).unwrap_err().to_string();
        assert!(err.contains("problems") && err.contains(&file.display().to_string()), "{err}");
        if depth == 18 {
            assert!(err.contains("unexpected key 'layer1.0.conv3.weight' (as 'backbone.body.layer1.0.conv3.weight')"), "{err}");
            assert!(err.contains("key 'layer1.0.conv1.weight' (for 'backbone.body.layer1.0.conv1.weight'): shape [64, 64, 1, 1] in the file, the model wants [64, 64, 3, 3]"), "{err}");
        } else {
            assert!(err.contains("missing key 'layer1.0.conv3.weight' [256, 64, 1, 1]"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A detector file with a missing key, an unexpected key, a wrong shape and an integer tensor: all four in one
/// error; `num_batches_tracked` is ignored.
#[test]
fn bad_detector_keys_are_listed_in_one_error() {
    let cfg = BackboneConfig { depth: 18, out_channels: 16, ..Default::default() };
    let (g, _, _) = build(&cfg, &[1, 64, 64, 3]);
    let mut keys: Vec<(String, Vec<usize>)> = g.params().into_iter().map(|(id, n)| (n.to_string(), g.node(id).shape.clone())).collect();
    let dir = temp_dir("bad");
    let file = dir.join("w.safetensors");
    let mut store = ParamStore::new();
    for (k, s) in &keys {
        store.insert(k, value(k, s));
    }
    store.insert("backbone.body.bn1.num_batches_tracked", HostTensor::from_f32(&[], DType::I64, &[3.0]).unwrap());
    store.save_safetensors(&file).unwrap();
    assert_eq!(weights::load(&file, &g, Layout::Detector).unwrap().len(), keys.len());

    keys.retain(|(k, _)| k != "backbone.fpn.layer_blocks.2.0.bias");
    let mut store = ParamStore::new();
    for (k, s) in &keys {
        let s = if k == "backbone.body.layer2.0.conv1.weight" { vec![128, 64, 1, 1] } else { s.clone() };
        store.insert(k, value(k, &s));
    }
    store.insert("rpn.head.cls_logits.weight", value("rpn.head.cls_logits.weight", &[3, 16, 1, 1]));
    store.insert("backbone.body.bn1.weight", HostTensor::from_f32(&[64], DType::I32, &[1.0; 64]).unwrap());
    store.save_safetensors(&file).unwrap();
    let err = weights::load(&file, &g, Layout::Detector).unwrap_err().to_string();
    println!("{err}");
    for want in [
        "4 problems",
        "missing key 'backbone.fpn.layer_blocks.2.0.bias' [16]",
        "unexpected key 'rpn.head.cls_logits.weight' [3, 16, 1, 1]",
        "key 'backbone.body.layer2.0.conv1.weight': shape [128, 64, 1, 1] in the file, the model wants [128, 64, 3, 3]",
        "key 'backbone.body.bn1.weight': dtype i32 is not a floating type",
    ] {
        assert!(err.contains(want), "expected '{want}' in:\n{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// torchvision's `trainable_backbone_layers`: the last k of layer4, layer3, layer2, layer1, conv1; the FPN
/// always; frozen norms never. Checked against the names torchvision's `_resnet_fpn_extractor` leaves
/// `requires_grad` (their rule written out over the fixture's key list).
#[test]
fn trainable_layers_follow_torchvision() {
    let meta = json("r50.json");
    let keys = key_list(&meta["keys"]);
    let cfg0 = BackboneConfig { out_channels: 64, ..Default::default() };
    let (g, _, _) = build(&cfg0, &[1, 64, 64, 3]);
    for k in 0..=5 {
        let cfg = BackboneConfig { trainable_layers: k, ..cfg0.clone() };
        let got = backbone::trainable_params(&g, &cfg);
        let layers = ["layer4", "layer3", "layer2", "layer1", "conv1"];
        let want: Vec<&str> = (keys.iter().map(|(n, _)| n.as_str()))
            .filter(|n| {
                if n.starts_with("backbone.fpn.") {
                    return true;
                }
                let rest = n.strip_prefix("backbone.body.").unwrap();
                let is_bn = rest.split('.').any(|p| p.starts_with("bn")) || rest.contains("downsample.1.");
                !is_bn && layers[..k].iter().any(|l| rest.starts_with(l))
            })
            .collect();
        let mut got_sorted: Vec<&str> = got.iter().map(|s| s.as_str()).collect();
        got_sorted.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "trainable_layers {k}");
        println!("trainable_layers {k}: {} trainable tensors", got.len());
    }
    // Out-of-range settings are errors naming the field.
    for (cfg, field) in [
        (BackboneConfig { trainable_layers: 6, ..cfg0.clone() }, "trainable_layers"),
        (BackboneConfig { depth: 20, ..cfg0.clone() }, "depth"),
        (BackboneConfig { depth: 18, caffe_stride: true, ..cfg0.clone() }, "caffe_stride"),
    ] {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    let err = serde_json::from_str::<BackboneConfig>(r#"{"depth": 18, "trainable": 2}"#).unwrap_err().to_string();
    assert!(err.contains("trainable"), "{err}");
    // An image side that is not a multiple of 32 is refused by the FPN (the transform pads to 32).
    let mut g = Graph::new();
    let x = g.input("images", &[1, 64, 80, 3], DType::F32).unwrap();
    let err = backbone::build_backbone(&mut g, &cfg0, x).unwrap_err().to_string();
    assert!(err.contains("multiples of 32"), "{err}");
}
