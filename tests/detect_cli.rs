//! `instagen detect infer|eval`: torchvision-layout weights from a file, COCO results equal to the library's
//! detections on the decoded images, and bad inputs named.

use std::path::{Path, PathBuf};
use std::process::Command;

use instagen::backend::cpu::CpuBackend;
use instagen::detection::coco;
use instagen::models::detector::faster_rcnn::FasterRcnn;
use instagen::models::weights::WeightFile;
use instagen::pipeline::detect::infer::config_from_weights;
use serde_json::json;

mod common;
use common::rcnn_gen;

/// A test's folder under the temp dir, removed when the test passes (its checkpoints are over 1 GB; a failing
/// test leaves it for inspection).
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tmp(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("instagen_detect_cli_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("img")).unwrap();
    TmpDir(d)
}

fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([((x * 7 + seed) % 256) as u8, ((y * 11 + x * x) % 256) as u8, ((x * y + seed) % 256) as u8]))
}

/// The e2e fixture's weights as a safetensors file, two PNG images and an instances file with categories 1..=5.
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let fx = rcnn_gen::fixture();
    let w = dir.join("w.safetensors");
    rcnn_gen::store(&fx).save_safetensors(&w).unwrap();
    coco::write_image(dir.join("img/a.png"), &pattern(90, 70, 0)).unwrap();
    coco::write_image(dir.join("img/b.png"), &pattern(60, 84, 9)).unwrap();
    let cats: Vec<_> = (1..=5).map(|i| json!({"id": i, "name": format!("c{i}")})).collect();
    let inst = json!({"images": [{"id": 1, "file_name": "a.png", "width": 90, "height": 70},
                                 {"id": 2, "file_name": "b.png", "width": 60, "height": 84}],
                      "categories": cats,
                      "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 10.0, 30.0, 20.0]}]});
    let data = dir.join("inst.json");
    std::fs::write(&data, inst.to_string()).unwrap();
    let labels = dir.join("labels.json");
    std::fs::write(&labels, "[0, 1, 2, 3, 4, 5]").unwrap();
    (w, data, labels)
}

fn instagen(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_instagen")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn infer_writes_the_library_detections_as_coco_results() {
    let dir = tmp("infer");
    let (w, data, labels) = setup(&dir);
    let out = dir.join("res.json");
    let (ok, stdout, stderr) = instagen(&[
        "detect", "infer", "--weights", s(&w), "--labels", s(&labels), "--data", s(&data), "--images", s(&dir.join("img")),
        "--out", s(&out), "--min-size", "96", "--max-size", "160", "--backend", "cpu",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("2 images"), "{stdout}");
    let gt = coco::Dataset::load(&data, &Default::default()).unwrap().0;
    let (dets, _) = coco::load_results(&out, &gt, coco::Policy::Strict).unwrap();
    assert!(!dets.is_empty());
    // the same model in the library on the decoded PNGs
    let file = WeightFile::open(&w).unwrap();
    let mut cfg = config_from_weights(&file).unwrap();
    assert_eq!((cfg.backbone.depth, cfg.backbone.out_channels, cfg.roi_heads.num_classes, cfg.roi_heads.representation_size), (18, 64, 6, 128));
    cfg.transform.min_size = vec![96];
    cfg.transform.max_size = 160;
    let mut model = FasterRcnn::new(cfg, rcnn_gen::store(&rcnn_gen::fixture()), || Ok(CpuBackend)).unwrap();
    let mut want = Vec::new();
    for (id, f) in [(1u64, "a.png"), (2, "b.png")] {
        let img = coco::read_image(dir.join("img").join(f)).unwrap();
        let px: Vec<f32> = img.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
        let d = model.detect_images(&[(&px, img.height() as usize, img.width() as usize)]).unwrap().remove(0);
        for ((b, sc), l) in d.boxes.iter().zip(&d.scores).zip(&d.labels) {
            want.push((id, *l as u64, [b[0] as f64, b[1] as f64, (b[2] - b[0]) as f64, (b[3] - b[1]) as f64], *sc as f64));
        }
    }
    assert_eq!(dets.len(), want.len());
    for (d, (id, cat, bb, sc)) in dets.iter().zip(&want) {
        assert_eq!((d.image_id, d.category_id), (*id, *cat));
        assert!((d.score - sc).abs() < 1e-6 && d.bbox.iter().zip(bb).all(|(a, b)| (a - b).abs() < 1e-3), "{d:?} vs {bb:?} {sc}");
    }
    // eval runs the evaluator on the same detections
    let (ok, stdout, stderr) = instagen(&[
        "detect", "eval", "--weights", s(&w), "--labels", s(&labels), "--data", s(&data), "--images", s(&dir.join("img")),
        "--out", s(&dir.join("res2.json")), "--min-size", "96", "--max-size", "160",
    ]);
    assert!(ok && stdout.contains("Average Precision"), "{stdout}\n{stderr}");
}

#[test]
fn bad_inputs_are_named() {
    let dir = tmp("bad");
    let (w, data, labels) = setup(&dir);
    let img = dir.join("img");
    let out = dir.join("res.json");
    let base = |extra: &[&str]| {
        let mut a = vec!["detect", "infer", "--weights", s(&w), "--data", s(&data), "--images", s(&img), "--out", s(&out), "--min-size", "64", "--max-size", "96"];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| instagen(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    // 6 classes is not the COCO index: labels needed
    let (ok, _, e) = run(base(&[]));
    assert!(!ok && e.contains("--labels"), "{e}");
    // a label file of the wrong length
    let bad_labels = dir.join("bad_labels.json");
    std::fs::write(&bad_labels, "[0, 1, 2]").unwrap();
    let (ok, _, e) = run(base(&["--labels", s(&bad_labels)]));
    assert!(!ok && e.contains("bad_labels.json") && e.contains("3 labels"), "{e}");
    // a missing image is named; --lenient skips and lists it
    std::fs::remove_file(img.join("b.png")).unwrap();
    let (ok, _, e) = run(base(&["--labels", s(&labels)]));
    assert!(!ok && e.contains("b.png"), "{e}");
    let (ok, o, e) = run(base(&["--labels", s(&labels), "--lenient"]));
    assert!(ok && o.contains("1 images") && o.contains("skipped") && o.contains("b.png"), "{o}\n{e}");
    // a weight file with a key the model does not have
    let mut store = instagen::params::ParamStore::load_safetensors(&w).unwrap();
    store.insert("roi_heads.box_head.fc8.weight", instagen::tensor::HostTensor::zeros(&[2, 2], instagen::tensor::DType::F32));
    let w2 = dir.join("w2.safetensors");
    store.save_safetensors(&w2).unwrap();
    let (ok, _, e) = instagen(&["detect", "infer", "--weights", s(&w2), "--labels", s(&labels), "--data", s(&data), "--images", s(&img), "--out", s(&out), "--lenient"]);
    assert!(!ok && e.contains("fc8"), "{e}");
}

/// Two PNGs with boxes on both and a run config (ResNet-18, short side 64, batch 2) over them.
fn train_setup(dir: &Path) -> PathBuf {
    coco::write_image(dir.join("img/a.png"), &pattern(90, 70, 0)).unwrap();
    coco::write_image(dir.join("img/b.png"), &pattern(60, 84, 9)).unwrap();
    let inst = json!({"images": [{"id": 1, "file_name": "a.png", "width": 90, "height": 70},
                                 {"id": 2, "file_name": "b.png", "width": 60, "height": 84}],
                      "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}],
                      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 20.0]},
                                      {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50.0, 30.0, 30.0, 35.0]},
                                      {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5.0, 20.0, 40.0, 50.0]}]});
    std::fs::write(dir.join("inst.json"), inst.to_string()).unwrap();
    // detections_per_img and the proposal count act in inference only: `detect infer` must read them back.
    let cfg = json!({"model": {"depth": 18, "min_size": [64], "max_size": 96, "detections_per_img": 3, "rpn_post_nms_top_n_test": 60}, "batch": 2, "seed": 3, "flip": 0.5,
                     "optimizer": {"lr": 0.01, "warmup_iters": 2},
                     "sources": [{"name": "toy", "instances": "inst.json", "images": "img"}]});
    let p = dir.join("run.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn train(cfg: &Path, out: &Path, steps: &str, extra: &[&str]) -> (bool, String, String) {
    let mut a = vec!["detect", "train", "--config", s(cfg), "--out", s(out), "--steps", steps, "--save-every", "1", "--backend", "cpu", "--workers", "1"];
    a.extend_from_slice(extra);
    instagen(&a)
}

#[test]
fn train_resumes_bit_exactly_freezes_the_frozen_and_writes_weights_infer_reads() {
    use instagen::pipeline::detect::{config::RunConfig, train};
    let dir = tmp("train");
    let cfg = train_setup(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (ok, o, e) = train(&cfg, &a, "2", &[]);
    assert!(ok, "{o}\n{e}");
    // 1 step, then resumed to 2 from the step-1 checkpoint
    let (ok, o, e) = train(&cfg, &b, "1", &[]);
    assert!(ok, "{o}\n{e}");
    let (ok, o, e) = train(&cfg, &b, "2", &["--resume"]);
    assert!(ok && o.contains("resumed from step 1"), "{o}\n{e}");
    let wa = std::fs::read(a.join("model.safetensors")).unwrap();
    assert!(wa == std::fs::read(b.join("model.safetensors")).unwrap(), "the resumed run's weights differ from the whole run's");
    let last = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap().lines().last().unwrap().to_string();
    let (la, lb) = (last(&a), last(&b));
    let strip = |l: &str| { let v: serde_json::Value = serde_json::from_str(l).unwrap(); (v["step"].clone(), v["losses"].clone(), v["grad_norm"].clone()) };
    assert_eq!(strip(&la), strip(&lb), "step 2 of the whole and the resumed run");
    let losses: serde_json::Value = serde_json::from_str::<serde_json::Value>(&la).unwrap()["losses"].clone();
    for k in train::LOSS_NAMES {
        let v = losses[k].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "{k} = {v} in {la}");
    }
    // trainable_layers 3 (the default): conv1, layer1 and every frozen norm keep their initial values; the rest moved.
    let run = RunConfig::load(&cfg).unwrap();
    let init = train::initial_params(&run, &train::model_config(&run, 3)).unwrap();
    let got = instagen::params::ParamStore::load_safetensors(&a.join("model.safetensors")).unwrap();
    let (mut same, mut moved) = (0, 0);
    for (name, t0) in init.iter() {
        let t = got.get(name).unwrap_or_else(|| panic!("{name} missing from model.safetensors"));
        let frozen = !train::is_trainable(&train::model_config(&run, 3).backbone, name);
        assert_eq!(frozen, name.starts_with("backbone.body.conv1") || name.starts_with("backbone.body.layer1.") || name.contains("bn") || name.contains("downsample.1"), "{name}");
        if frozen {
            assert!(t.data == t0.data, "frozen {name} changed");
            same += 1;
        } else if t.data != t0.data {
            moved += 1;
        }
    }
    assert!(init.iter().count() == got.iter().count() && moved > 40, "{same} frozen, {moved} of the trainable tensors moved");
    assert_eq!(std::fs::read_to_string(a.join("labels.json")).unwrap(), "[0,3,7]");
    // The weights and label map load in `detect infer`.
    let out = dir.join("res.json");
    let (ok, o, e) = instagen(&["detect", "infer", "--weights", s(&a.join("model.safetensors")), "--labels", s(&a.join("labels.json")),
        "--data", s(&dir.join("inst.json")), "--images", s(&dir.join("img")), "--out", s(&out), "--min-size", "64", "--max-size", "96", "--backend", "cpu"]);
    assert!(ok && o.contains("2 images"), "{o}\n{e}");
    // model.json: the saved settings come back (sizes included); without it, torchvision's (100 per image).
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("model.json")).unwrap()).unwrap();
    assert_eq!((saved["roi_heads"]["detections_per_img"].as_u64(), saved["transform"]["min_size"][0].as_u64()), (Some(3), Some(64)), "{saved}");
    let most = |with_file: bool| {
        let (ok, o, e) = instagen(&["detect", "infer", "--weights", s(&a.join("model.safetensors")), "--labels", s(&a.join("labels.json")),
            "--data", s(&dir.join("inst.json")), "--images", s(&dir.join("img")), "--out", s(&out), "--score-thresh", "0", "--backend", "cpu"]);
        assert!(ok, "with model.json {with_file}: {o}\n{e}");
        let dets: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        [1, 2].map(|im| dets.iter().filter(|d| d["image_id"] == im).count()).into_iter().max().unwrap()
    };
    assert_eq!(most(true), 3);
    std::fs::rename(a.join("model.json"), a.join("model.json.off")).unwrap();
    assert!(most(false) > 3, "torchvision's 100 per image without model.json");
    // A model.json that disagrees with the weights is an error naming it.
    let mut bad = saved.clone();
    bad["roi_heads"]["representation_size"] = json!(64);
    std::fs::write(a.join("model.json"), bad.to_string()).unwrap();
    let (ok, _, e) = instagen(&["detect", "infer", "--weights", s(&a.join("model.safetensors")), "--labels", s(&a.join("labels.json")),
        "--data", s(&dir.join("inst.json")), "--images", s(&dir.join("img")), "--out", s(&out), "--backend", "cpu"]);
    assert!(!ok && e.contains("model.json") && e.contains("representation_size is 64"), "{e}");
}

#[test]
fn train_bad_inputs_are_named() {
    let dir = tmp("train_bad");
    let cfg = train_setup(&dir);
    let out = dir.join("run");
    let (ok, _, e) = train(&dir.join("nope.json"), &out, "1", &[]);
    assert!(!ok && e.contains("nope.json"), "{e}");
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"batch\": 2, \"sources\": [").unwrap();
    let (ok, _, e) = train(&broken, &out, "1", &[]);
    assert!(!ok && e.contains("broken.json"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["batch"] = json!(3);
    let big = dir.join("big.json");
    std::fs::write(&big, v.to_string()).unwrap();
    let (ok, _, e) = train(&big, &out, "1", &[]);
    assert!(!ok && e.contains("big.json") && e.contains("batch 3"), "{e}");
    let (ok, o, e) = train(&cfg, &out, "1", &[]);
    assert!(ok, "{o}\n{e}");
    // checkpoints are not overwritten without --resume; a resume with another config names the difference
    let (ok, _, e) = train(&cfg, &out, "2", &[]);
    assert!(!ok && e.contains("resume"), "{e}");
    v["batch"] = json!(2);
    v["seed"] = json!(4);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let (ok, _, e) = train(&cfg, &out, "2", &["--resume"]);
    assert!(!ok && e.contains("seed"), "{e}");
}
