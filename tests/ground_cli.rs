//! `instagen ground label|init|train|selftrain|infer` end to end on the CPU at the tiny head config, on the small
//! random-weight SD folder of tests/common/sd.rs (32x32 images, t=1 features of 16x16 and 8x8 latents) and small
//! generated-looking datasets written here (PNG images with planted rectangles, prompts naming their categories).
//! Skips without the CLIP vocabulary data (fails with INSTAGEN_REQUIRE_DATA=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const SIDE: u32 = 32;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_ground_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_instagen"))
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

/// Runs `c`, which must fail with every string of `want` in its stderr.
fn run_err(mut c: Command, want: &[&str]) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{c:?} succeeded:\n{}", String::from_utf8_lossy(&o.stdout));
    for w in want {
        assert!(err.contains(w), "error lacks {w:?}:\n{err}");
    }
}

pub const CATEGORIES: [(u64, &str); 4] = [(1, "person"), (18, "dog"), (17, "cat"), (62, "chair")];

/// One planted object: category id and `[x1, y1, x2, y2]` in pixels.
type Obj = (u64, [u32; 4]);

/// The objects of image `i`: one or two rectangles of the prompt's categories, at positions that vary by image.
fn objects(i: u64, cats: &[u64]) -> Vec<Obj> {
    cats.iter()
        .enumerate()
        .map(|(k, &c)| {
            let (w, h) = (8 + (i * 3 + k as u64 * 5) % 9, 8 + (i * 5 + k as u64 * 3) % 9);
            let x = if k == 0 { (i * 7) % (SIDE as u64 / 2 - 2) } else { SIDE as u64 / 2 + (i * 3) % (SIDE as u64 / 2 - w.min(15)) };
            let y = (i * 11 + k as u64 * 9) % (SIDE as u64 - h);
            let (x, w) = (x.min(SIDE as u64 - w), w);
            (c, [x as u32, y as u32, (x + w) as u32, (y + h) as u32])
        })
        .collect()
}

/// A colour per category, so the features can tell them apart.
fn colour(c: u64) -> [u8; 3] {
    match c {
        1 => [230, 40, 40],
        18 => [40, 220, 60],
        17 => [50, 60, 230],
        _ => [230, 220, 40],
    }
}

/// Writes a dataset folder: `n` images, image i prompting `prompts(i)` (category ids) with those objects planted.
/// Returns the folder and the planted objects per image id.
fn dataset(dir: &Path, n: u64, prompts: impl Fn(u64) -> Vec<u64>) -> Vec<(u64, Vec<Obj>)> {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let name = |c: u64| CATEGORIES.iter().find(|(id, _)| *id == c).unwrap().1;
    let mut images = Vec::new();
    let mut planted = Vec::new();
    for i in 0..n {
        let id = 100 + i;
        let cats = prompts(i);
        let objs = objects(i, &cats);
        let mut img = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
            let v = ((x * 7 + y * 3 + i as u32 * 13) % 40) as u8;
            image::Rgb([v, v, v])
        });
        for (c, [x1, y1, x2, y2]) in &objs {
            for y in *y1..*y2 {
                for x in *x1..*x2 {
                    img.put_pixel(x, y, image::Rgb(colour(*c)));
                }
            }
        }
        let file = format!("images/{id}.png");
        img.save(dir.join(&file)).unwrap();
        let names: Vec<&str> = cats.iter().map(|&c| name(c)).collect();
        images.push(serde_json::json!({
            "id": id, "file_name": file, "width": SIDE, "height": SIDE,
            "prompt": format!("a photograph of {}", names.join(" and ")),
        }));
        planted.push((id, objs));
    }
    let cats: Vec<serde_json::Value> = CATEGORIES.iter().map(|(id, n)| serde_json::json!({"id": id, "name": n})).collect();
    let coco = serde_json::json!({"images": images, "annotations": [], "categories": cats});
    std::fs::write(dir.join("instances.json"), serde_json::to_string_pretty(&coco).unwrap()).unwrap();
    planted
}

/// COCO results for the planted objects (score `s`), plus distractors: a low-score box and a box of a category
/// the prompt does not name.
fn detections(planted: &[(u64, Vec<Obj>)], s: f64) -> serde_json::Value {
    let mut out = Vec::new();
    for (id, objs) in planted {
        for (c, [x1, y1, x2, y2]) in objs {
            out.push(serde_json::json!({"image_id": id, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}));
        }
        out.push(serde_json::json!({"image_id": id, "category_id": objs[0].0, "bbox": [1, 1, 5, 5], "score": 0.3}));
        let other = CATEGORIES.iter().map(|(c, _)| *c).find(|c| !objs.iter().any(|(o, _)| o == c)).unwrap();
        out.push(serde_json::json!({"image_id": id, "category_id": other, "bbox": [2, 2, 9, 9], "score": 0.99}));
    }
    serde_json::Value::Array(out)
}

fn write_json(p: &Path, v: &serde_json::Value) {
    std::fs::write(p, serde_json::to_string(v).unwrap()).unwrap();
}

fn label_cmd(dataset: &Path, dets: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.arg("ground").arg("label").arg("--dataset").arg(dataset).arg("--detections").arg(dets).arg("--out").arg(out);
    c
}

/// Base prompts: "person", "dog and person", "cat", "chair and cat", ...
fn base_prompt(i: u64) -> Vec<u64> {
    let c = [1, 18, 17, 62][(i % 4) as usize];
    if i % 2 == 1 { vec![c, 1] } else { vec![c] }
}

#[test]
fn label_keeps_the_prompts_boxes_above_alpha() {
    let d = tmp("label");
    let planted = dataset(&d.join("data"), 6, base_prompt);
    let dets = d.join("dets.json");
    // A box that crosses the border is clipped; one fully outside the image is dropped.
    let mut v = detections(&planted, 0.9);
    v.as_array_mut().unwrap().push(serde_json::json!({"image_id": 100, "category_id": 1, "bbox": [28, 28, 10, 10], "score": 0.95}));
    v.as_array_mut().unwrap().push(serde_json::json!({"image_id": 100, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.95}));
    write_json(&dets, &v);
    let out = d.join("labels.json");
    let text = run_ok(label_cmd(&d.join("data"), &dets, &out));
    eprintln!("{text}");
    let labels = instagen::pipeline::ground::GroundSet::open_labels(&out).unwrap();
    assert_eq!(labels.images.len(), 6);
    let planted_count: usize = planted.iter().map(|(_, o)| o.len()).sum();
    assert_eq!(labels.coco.annotations.len(), planted_count + 1, "planted boxes + the clipped one");
    for (img, (id, objs)) in labels.images.iter().zip(&planted) {
        assert_eq!(img.id, *id);
        assert_eq!(img.categories, objs.iter().map(|(c, _)| *c).collect::<Vec<_>>());
        for (c, b) in objs {
            let want = [b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32];
            assert!(img.boxes.iter().any(|(bx, bc, s)| bc == c && *bx == want && *s == 0.9), "image {id}: {:?} lacks {want:?}", img.boxes);
        }
        assert!(img.boxes.iter().all(|(_, c, s)| img.categories.contains(c) && *s >= 0.8));
    }
    assert!(labels.images[0].boxes.iter().any(|(b, _, _)| *b == [28.0, 28.0, 32.0, 32.0]), "{:?}", labels.images[0].boxes);
    // alpha 0.95 keeps only the two boxes at 0.95 (one of them empty inside the image).
    let out2 = d.join("labels2.json");
    let mut c = label_cmd(&d.join("data"), &dets, &out2);
    c.args(["--alpha", "0.95"]);
    run_ok(c);
    assert_eq!(instagen::pipeline::ground::GroundSet::open_labels(&out2).unwrap().coco.annotations.len(), 1);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn label_bad_inputs_name_the_file_and_field() {
    let d = tmp("label_bad");
    let data = d.join("data");
    let planted = dataset(&data, 3, base_prompt);
    let dets = d.join("dets.json");
    let out = d.join("labels.json");
    // Malformed JSON.
    std::fs::write(&dets, "[{\"image_id\": 100, \"category_id\": 1, \"bbox\": [1, 2, 3]").unwrap();
    run_err(label_cmd(&data, &dets, &out), &["dets.json"]);
    // A missing key.
    write_json(&dets, &serde_json::json!([{"image_id": 100, "bbox": [1, 2, 3, 4], "score": 0.9}]));
    run_err(label_cmd(&data, &dets, &out), &["dets.json", "category_id"]);
    // Unknown image id, unknown category id.
    write_json(&dets, &serde_json::json!([{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}]));
    run_err(label_cmd(&data, &dets, &out), &["dets.json", "7"]);
    write_json(&dets, &serde_json::json!([{"image_id": 100, "category_id": 99, "bbox": [1, 2, 3, 4], "score": 0.9}]));
    run_err(label_cmd(&data, &dets, &out), &["dets.json", "99"]);
    // Alpha outside [0, 1].
    write_json(&dets, &detections(&planted, 0.9));
    let mut c = label_cmd(&data, &dets, &out);
    c.args(["--alpha", "1.5"]);
    run_err(c, &["--alpha"]);
    // A dataset whose image names a category the file does not have, an empty category list, no prompt.
    let inst = data.join("instances.json");
    let good: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&inst).unwrap()).unwrap();
    let mut bad = good.clone();
    bad["images"][1]["prompt"] = serde_json::json!("a photograph of unicorn and dog");
    write_json(&inst, &bad);
    run_err(label_cmd(&data, &dets, &out), &["instances.json", "images[1] (id 101)", "categories", "unicorn"]);
    let mut bad = good.clone();
    bad["images"][2]["categories"] = serde_json::json!([]);
    write_json(&inst, &bad);
    run_err(label_cmd(&data, &dets, &out), &["instances.json", "images[2] (id 102)", "categories is empty"]);
    let mut bad = good.clone();
    bad["images"][0].as_object_mut().unwrap().remove("prompt");
    write_json(&inst, &bad);
    run_err(label_cmd(&data, &dets, &out), &["instances.json", "images[0] (id 100)", "prompt"]);
    assert!(!out.exists(), "no labels are written from bad input");
    let _ = std::fs::remove_dir_all(d);
}

fn sd(tag: &str) -> Option<PathBuf> {
    common::sd::assemble(&format!("ground_{tag}"))
}

fn init_cmd(sd: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["ground", "init", "--config", "tiny", "--seed", "3"]).arg("--sd").arg(sd).arg("--out").arg(out);
    c
}

fn train_cmd(sd: &Path, labels: &Path, head: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["ground", "train"]).arg("--sd").arg(sd).arg("--labels").arg(labels).arg("--head").arg(head).arg("--out").arg(out)
        .args(["--batch", "2", "--epochs", "2", "--lr", "1e-3", "--save-every", "2", "--teacher-epoch", "1", "--backend", "cpu", "--seed", "9"])
        .args(extra);
    c
}

fn infer_cmd(sd: &Path, head: &Path, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["ground", "infer"]).arg("--sd").arg(sd).arg("--head").arg(head).arg("--dataset").arg(data).arg("--out").arg(out)
        .args(["--batch", "3", "--backend", "cpu"]).args(extra);
    c
}

/// A labelled base set: `n` images of person / dog / chair prompts, labels from exact detections.
fn labelled(d: &Path, n: u64) -> (PathBuf, PathBuf, Vec<(u64, Vec<Obj>)>) {
    let data = d.join("base");
    let planted = dataset(&data, n, |i| {
        let c = [1, 18, 62][(i % 3) as usize];
        if i % 2 == 1 { vec![c, if c == 1 { 18 } else { 1 }] } else { vec![c] }
    });
    let dets = d.join("base_dets.json");
    write_json(&dets, &detections(&planted, 0.9));
    let labels = d.join("labels.json");
    run_ok(label_cmd(&data, &dets, &labels));
    (data, labels, planted)
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn init_train_resume_and_infer_from_the_cli() {
    let Some(sd) = sd("train") else { return };
    let d = tmp("train");
    let (data, labels, _) = labelled(&d, 8);
    let head = d.join("head");
    let text = run_ok(init_cmd(&sd, &head));
    eprintln!("{text}");
    assert!(text.contains("feat_16 16x16x") && text.contains("feat_8 8x8x"), "{text}");
    for f in ["config.json", "levels.json", "head.safetensors"] {
        assert!(head.join(f).is_file(), "{f}");
    }
    // One run of 8 steps (2 epochs of 4), features computed every step.
    let a = d.join("run_a");
    let text = run_ok(train_cmd(&sd, &labels, &head, &a, &[]));
    eprintln!("{text}");
    assert!(text.contains("8 steps (4 per epoch)"), "{text}");
    let m = metrics(&a);
    assert_eq!(m.len(), 8);
    for r in &m {
        assert!(r["losses"]["loss"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0), "{r}");
        assert!(r["grad_norm"].as_f64().is_some_and(|g| g.is_finite()), "{r}");
    }
    // The learning rate is constant (the x0.1 milestone is at epoch 11).
    assert!(m.iter().all(|r| (r["lr"].as_f64().unwrap() - 1e-3).abs() < 1e-9));
    assert!(a.join("head/head.safetensors").is_file() && a.join("student-epoch-1/checkpoints/step-000004/state.json").is_file());
    assert_ne!(bytes(&a.join("head/head.safetensors")), bytes(&head.join("head.safetensors")), "training changed the head");

    // The same run in two parts (4 steps, then resumed to 8) through the feature cache: bit-identical.
    let b = d.join("run_b");
    let cache = d.join("cache");
    let cache_s = cache.to_str().unwrap();
    run_ok(train_cmd(&sd, &labels, &head, &b, &["--steps", "4", "--features-cache", cache_s]));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 8, "every image's features are cached");
    let text = run_ok(train_cmd(&sd, &labels, &head, &b, &["--resume", "--features-cache", cache_s]));
    assert!(text.contains("resumed from step 4") && text.contains("8 read from the cache, 0 computed"), "{text}");
    for f in ["checkpoints/step-000008/params.safetensors", "checkpoints/step-000008/optim.safetensors", "head/head.safetensors"] {
        assert!(bytes(&a.join(f)) == bytes(&b.join(f)), "{f} differs between the whole and the resumed run");
    }
    let losses = |r: &Path| metrics(r).iter().map(|v| v["losses"]["loss"].to_string()).collect::<Vec<_>>();
    assert_eq!(losses(&a), losses(&b));
    // A run folder with checkpoints is not overwritten without --resume.
    run_err(train_cmd(&sd, &labels, &head, &b, &[]), &["already holds checkpoints"]);

    // Inference: COCO results of the prompts' categories, valid against the dataset; --categories restricts.
    let res = d.join("results.json");
    let text = run_ok(infer_cmd(&sd, &a, &data, &res, &["--score-thresh", "0"]));
    eprintln!("{text}");
    let ds = instagen::pipeline::ground::GroundSet::open_dir(&data).unwrap();
    let (dets, _) = instagen::detection::coco::load_results(&res, &ds.coco, instagen::detection::coco::Policy::Strict).unwrap();
    assert!(!dets.is_empty());
    for det in &dets {
        let im = ds.images.iter().find(|i| i.id == det.image_id).unwrap();
        assert!(im.categories.contains(&det.category_id), "{det:?} is not of the prompt {:?}", im.categories);
        assert!(det.bbox[0] >= 0.0 && det.bbox[1] >= 0.0 && det.bbox[0] + det.bbox[2] <= 32.0001 && det.bbox[1] + det.bbox[3] <= 32.0001, "{det:?}");
        assert!((0.0..=1.0).contains(&det.score));
    }
    // At most top-k per image, and no two boxes of one class overlapping above the NMS threshold.
    for im in &ds.images {
        let mine: Vec<_> = dets.iter().filter(|d| d.image_id == im.id).collect();
        assert!(mine.len() <= 100);
        for (i, x) in mine.iter().enumerate() {
            for y in &mine[i + 1..] {
                if x.category_id == y.category_id {
                    assert!(instagen::detection::eval::iou_xywh(&x.bbox, &y.bbox, false) <= 0.5 + 1e-6, "{x:?} {y:?}");
                }
            }
        }
    }
    let res2 = d.join("results_dog.json");
    run_ok(infer_cmd(&sd, &a, &data, &res2, &["--score-thresh", "0", "--categories", "dog"]));
    let (dets2, _) = instagen::detection::coco::load_results(&res2, &ds.coco, instagen::detection::coco::Policy::Strict).unwrap();
    assert!(!dets2.is_empty() && dets2.iter().all(|d| d.category_id == 18));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn selftrain_labels_novel_images_with_the_teacher() {
    let Some(sd) = sd("self") else { return };
    let d = tmp("self");
    let (_, labels, _) = labelled(&d, 8);
    let head = d.join("head");
    run_ok(init_cmd(&sd, &head));
    let run = d.join("run");
    run_ok(train_cmd(&sd, &labels, &head, &run, &[]));
    // Novel images: "cat" (novel: no base image prompts it), alone or with a base category.
    let novel = d.join("novel");
    dataset(&novel, 6, |i| if i % 2 == 0 { vec![17] } else { vec![17, 1] });
    let selftrain = |extra: &[&str]| {
        let mut c = bin();
        c.args(["ground", "selftrain"]).arg("--run").arg(&run).arg("--novel-dataset").arg(&novel).args(["--backend", "cpu", "--save-every", "2"]).args(extra);
        c
    };
    // beta 0: every teacher box of a novel category (after NMS) is a target, so every step has a novel batch.
    let text = run_ok(selftrain(&["--beta", "0"]));
    eprintln!("{text}");
    assert!(text.contains("novel categories [\"cat\"]") && text.contains("4 steps"), "{text}");
    let st = run.join("selftrain");
    let m = metrics(&st);
    assert_eq!(m.len(), 4);
    for r in &m {
        assert!(r["losses"]["loss"].as_f64().is_some_and(|l| l.is_finite()), "{r}");
        assert!(r["losses"]["novel_loss"].as_f64().is_some_and(|l| l.is_finite()), "every step trains on a novel batch: {r}");
        assert_eq!(r["samples_per_s"].is_number(), true);
    }
    // The saved head is the teacher (EMA 0.999 of the student): close to the snapshot, not the student.
    let snap = instagen::params::ParamStore::load_safetensors(&run.join("student-epoch-1/checkpoints/step-000004/params.safetensors")).unwrap();
    let teacher = instagen::params::ParamStore::load_safetensors(&st.join("head/head.safetensors")).unwrap();
    let student = instagen::params::ParamStore::load_safetensors(&st.join("checkpoints/step-000004/params.safetensors")).unwrap();
    let (mut dt, mut ds) = (0.0f64, 0.0f64);
    for (name, s0) in snap.iter() {
        let (a, t, s) = (s0.to_f32(), teacher.get(name).unwrap().to_f32(), student.get(name).unwrap().to_f32());
        for i in 0..a.len() {
            dt = dt.max((t[i] - a[i]).abs() as f64);
            ds = ds.max((s[i] - a[i]).abs() as f64);
        }
    }
    eprintln!("max |teacher - snapshot| {dt:e}, max |student - snapshot| {ds:e}");
    assert!(ds > 0.0 && dt < ds * 0.05, "teacher moved {dt}, student {ds}");
    // Resume: the killed-at-2 equivalent (a fresh folder run to 2 steps, then resumed to 4) is bit-identical.
    let st2 = d.join("self2");
    let st2s = st2.to_str().unwrap();
    run_ok(selftrain(&["--beta", "0", "--out", st2s, "--steps", "2"]));
    let text = run_ok(selftrain(&["--beta", "0", "--out", st2s, "--steps", "4", "--resume"]));
    assert!(text.contains("resumed from step 2"), "{text}");
    for f in ["checkpoints/step-000004/params.safetensors", "checkpoints/step-000004/ema.safetensors", "head/head.safetensors"] {
        assert!(bytes(&st.join(f)) == bytes(&st2.join(f)), "{f} differs after resuming");
    }
    // beta near 1: the random-ish teacher keeps nothing, so novel images are skipped and only base updates run.
    let text = run_ok(selftrain(&["--beta", "0.99", "--out", d.join("self3").to_str().unwrap(), "--steps", "1"]));
    assert!(text.contains("0 novel boxes kept"), "{text}");
    assert!(metrics(&d.join("self3"))[0]["losses"].get("novel_loss").is_none());
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn stage_bad_inputs_name_the_file_and_field() {
    let Some(sd) = sd("bad") else { return };
    let d = tmp("stage_bad");
    let (data, labels, _) = labelled(&d, 4);
    let head = d.join("head");
    run_ok(init_cmd(&sd, &head));
    // A cached feature file whose level has another shape.
    let cache = d.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let levels: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(head.join("levels.json")).unwrap()).unwrap();
    let mut s = instagen::params::ParamStore::new();
    for l in levels["levels"].as_array().unwrap() {
        let name = l[0].as_str().unwrap();
        let sh: Vec<usize> = l[1].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let c = if name == "feat_8" { sh[2] + 1 } else { sh[2] };
        s.insert(name, instagen::tensor::HostTensor::zeros(&[1, sh[0], sh[1], c], instagen::tensor::DType::F32));
    }
    let set = instagen::pipeline::ground::GroundSet::open_labels(&labels).unwrap();
    let file = instagen::pipeline::ground::FeatureCache { dir: cache.clone() }.path(&set.images[0]);
    s.save_safetensors(&file).unwrap();
    let out = d.join("run");
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("100_"), "{name}");
    run_err(train_cmd(&sd, &labels, &head, &out, &["--features-cache", cache.to_str().unwrap()]), &[name.as_str(), "feat_8"]);
    // A label naming a category not in its image's prompt.
    let mut l: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&labels).unwrap()).unwrap();
    l["annotations"][0]["category_id"] = serde_json::json!(17);
    let bad_labels = d.join("bad_labels.json");
    write_json(&bad_labels, &l);
    run_err(train_cmd(&sd, &bad_labels, &head, &d.join("run2"), &[]), &["bad_labels.json", "annotations[0]", "category_id 17", "\"cat\""]);
    // A head made for other feature shapes.
    let mut lv = levels.clone();
    lv["levels"][1][1][0] = serde_json::json!(4);
    write_json(&head.join("levels.json"), &lv);
    run_err(train_cmd(&sd, &labels, &head, &d.join("run3"), &[]), &["levels.json", "feat_8"]);
    write_json(&head.join("levels.json"), &levels);
    // Inference: an empty or unknown category list.
    let res = d.join("r.json");
    run_err(infer_cmd(&sd, &head, &data, &res, &["--categories", ","]), &["--categories", "empty"]);
    run_err(infer_cmd(&sd, &head, &data, &res, &["--categories", "dog,unicorn"]), &["--categories", "unicorn", "instances.json"]);
    // Self-training from a folder that is no ground train run.
    let mut c = bin();
    c.args(["ground", "selftrain"]).arg("--run").arg(d.join("nothing")).arg("--novel-dataset").arg(&data);
    run_err(c, &["ground_train.json"]);
    let _ = std::fs::remove_dir_all(d);
}

/// Item 7 of issue 12: the tiny head overfits 16 images of the fixture SD model with planted boxes to train AP50 >
/// 0.9 (pycocotools-equal evaluator), through the CLI: label, init, train in segments (resumed, features cached),
/// infer + evaluate after each segment. Prints the curve. Slow (3000 steps at lr 1e-3, batch 4: 193 s on the
/// shared 2-core machine at load ~10, 87 s at load ~3; train AP50 1.0): run it with
/// `cargo test --test ground_cli overfit -- --ignored --nocapture` (`OVERFIT_SEGMENT`, `OVERFIT_SEGMENTS`,
/// `OVERFIT_LR` change the 6 segments of 500 steps at 1e-3).
#[test]
#[ignore]
fn tiny_head_overfits_16_images() {
    let Some(sd) = sd("overfit") else { return };
    let d = tmp("overfit");
    let data = d.join("data");
    let planted = dataset(&data, 16, base_prompt);
    let dets = d.join("dets.json");
    write_json(&dets, &detections(&planted, 1.0));
    let labels = d.join("labels.json");
    run_ok(label_cmd(&data, &dets, &labels));
    let head = d.join("head");
    run_ok(init_cmd(&sd, &head));
    let gt = instagen::pipeline::ground::GroundSet::open_labels(&labels).unwrap().coco;
    let run = d.join("run");
    let cache = d.join("cache");
    let steps_per_segment: u64 = std::env::var("OVERFIT_SEGMENT").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let segments: u64 = std::env::var("OVERFIT_SEGMENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let lr = std::env::var("OVERFIT_LR").unwrap_or_else(|_| "1e-3".into());
    let t0 = std::time::Instant::now();
    let mut last = 0.0;
    for k in 1..=segments {
        let steps = (k * steps_per_segment).to_string();
        let mut c = bin();
        c.args(["ground", "train"]).arg("--sd").arg(&sd).arg("--labels").arg(&labels).arg("--head").arg(&head).arg("--out").arg(&run)
            .arg("--features-cache").arg(&cache)
            .args(["--batch", "4", "--epochs", "1000", "--lr", &lr, "--save-every", "50", "--teacher-epoch", "0", "--lr-drop-epoch", "100000", "--backend", "cpu"])
            .args(["--steps", &steps]);
        if k > 1 {
            c.arg("--resume");
        }
        run_ok(c);
        let res = d.join("results.json");
        run_ok(infer_cmd(&sd, &run, &data, &res, &["--score-thresh", "0"]));
        let (dts, _) = instagen::detection::coco::load_results(&res, &gt, instagen::detection::coco::Policy::Strict).unwrap();
        let e = instagen::detection::eval::evaluate(&gt, &dts, &instagen::detection::eval::EvalParams::default());
        last = e.summarize(true, Some(0.5), "all", 100);
        let m = metrics(&run);
        let tail: Vec<f64> = m.iter().rev().take(10).map(|r| r["losses"]["loss"].as_f64().unwrap()).collect();
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        eprintln!("step {steps:>5}: train AP50 {last:.4}, AP {:.4}, mean loss of the last 10 steps {mean:.4} ({:.0} s)", e.summarize(true, None, "all", 100), t0.elapsed().as_secs_f64());
    }
    assert!(last > 0.9, "train AP50 {last} after {} steps", segments * steps_per_segment);
    let _ = std::fs::remove_dir_all(d);
}
