//! `instagen detect train`'s run config and data: per-source loss rules, flip and short-side jitter, errors.

use std::path::{Path, PathBuf};

use instagen::data::{sample_rng, Dataset};
use instagen::detection::coco;
use instagen::pipeline::detect::config::{Classify, RunConfig};
use instagen::pipeline::detect::data::DetectDataset;
use serde_json::json;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_detect_data_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + seed) as u8, (y * 11) as u8, ((x * y + seed) % 256) as u8]))
}

/// Images a.png (40x30) and b.png (24x36) in `dir/img`, and two instances files over the same folder:
/// `syn.json` (categories 1 person, 2 bicycle, 5 airplane) and `real.json` (1, 2 only, plus a crowd box).
fn write_sources(dir: &Path) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    coco::write_image(dir.join("img/a.png"), &pattern(40, 30, 0)).unwrap();
    coco::write_image(dir.join("img/b.png"), &pattern(24, 36, 5)).unwrap();
    let cats = json!([{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 5, "name": "airplane"}]);
    let images = json!([{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 24, "height": 36}]);
    let syn = json!({"images": images, "categories": cats, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2.0, 3.0, 10.0, 8.0]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [4.0, 5.0, 6.0, 20.0]}]});
    let real = json!({"images": images, "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [20.0, 10.0, 15.0, 12.0]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 40.0, 30.0], "iscrowd": 1}]});
    std::fs::write(dir.join("syn.json"), syn.to_string()).unwrap();
    std::fs::write(dir.join("real.json"), real.to_string()).unwrap();
}

fn base_config() -> serde_json::Value {
    json!({"model": {"depth": 18, "min_size": [32, 48], "max_size": 80}, "batch": 2, "seed": 7, "flip": 0.5,
           "sources": [{"name": "syn", "instances": "syn.json", "images": "img"},
                       {"name": "real", "instances": "real.json", "images": "img", "rpn_loss": false, "classify": [1, 2], "weight": 2,
                        "min_size": [40]}]})
}

fn write_config(dir: &Path, v: &serde_json::Value) -> PathBuf {
    let p = dir.join("run.json");
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

#[test]
fn sources_carry_their_own_rules_over_the_same_files() {
    let dir = tmp_dir("rules");
    write_sources(&dir);
    let cfg = RunConfig::load(&write_config(&dir, &base_config())).unwrap();
    assert_eq!(cfg.sources[1].classify, Classify::Ids(vec![1, 2]));
    let ds = DetectDataset::open(&cfg).unwrap();
    // labels: contiguous over {1, 2, 5}
    assert_eq!(ds.labels.ids, vec![0, 1, 2, 5]);
    // syn: 2 images; real: image 1 only (image 2 has no box there), listed twice (weight 2)
    assert_eq!(ds.len(), 4);
    assert_eq!((ds.sources[1].images, ds.sources[1].images_without_boxes, ds.sources[1].crowd_boxes), (1, 1, 1));
    let mut seen_real = 0;
    for i in 0..ds.len() {
        let s = ds.get(i, &mut sample_rng(7, 0, i as u64)).unwrap();
        let again = ds.get(i, &mut sample_rng(7, 0, i as u64)).unwrap();
        assert_eq!((s.image.pixels.clone(), s.boxes.clone(), s.flipped), (again.image.pixels, again.boxes, again.flipped), "sample {i} not deterministic");
        if s.source == 1 {
            // same image file as a syn sample, different rules: decided by the source, not the path
            seen_real += 1;
            assert_eq!(s.image_id, 1);
            assert_eq!(s.rpn_weight, 0.0);
            assert_eq!(s.class_mask, vec![1.0, 1.0, 1.0, 0.0]);
            assert_eq!(s.labels, vec![2]);
            assert_eq!(s.min_size, 40);
        } else {
            assert_eq!(s.rpn_weight, 1.0);
            assert_eq!(s.class_mask, vec![1.0; 4]);
            assert!([32, 48].contains(&s.min_size));
        }
    }
    assert_eq!(seen_real, 2);
    let batch = ds.collate(&[ds.get(0, &mut sample_rng(7, 0, 0)).unwrap(), ds.get(2, &mut sample_rng(7, 0, 2)).unwrap()]).unwrap();
    assert_eq!(batch.rpn_weight.to_f32(), vec![1.0, 0.0]);
    assert_eq!(batch.class_mask.shape, vec![2, 4]);
    assert_eq!(batch.images.tensor.shape[0], 2);
    assert_eq!(batch.images.tensor.shape[1] % 32, 0);
}

#[test]
fn flip_and_jitter_follow_the_draws() {
    let dir = tmp_dir("flip");
    write_sources(&dir);
    let mut v = base_config();
    v["sources"] = json!([{"name": "syn", "instances": "syn.json", "images": "img"}]);
    let cfg = RunConfig::load(&write_config(&dir, &v)).unwrap();
    let ds = DetectDataset::open(&cfg).unwrap();
    let (mut flips, mut sizes) = (0, std::collections::BTreeSet::new());
    for e in 0..40u64 {
        let mut rng = sample_rng(7, e, 0);
        let s = ds.get(0, &mut rng).unwrap();
        sizes.insert(s.min_size);
        // image 1 is 40x30: short side min_size, so the scale is min_size / 30
        assert_eq!(s.image.size.0, s.min_size);
        let r = s.image.size.1 as f32 / 40.0;
        let want = if s.flipped { [(40.0 - 12.0) * r, 3.0 * s.image.size.0 as f32 / 30.0, (40.0 - 2.0) * r] } else { [2.0 * r, 3.0 * s.image.size.0 as f32 / 30.0, 12.0 * r] };
        assert!((s.boxes[0][0] - want[0]).abs() < 1e-4 && (s.boxes[0][1] - want[1]).abs() < 1e-4 && (s.boxes[0][2] - want[2]).abs() < 1e-4, "{:?} vs {want:?} (flipped {})", s.boxes[0], s.flipped);
        if s.flipped {
            flips += 1;
            // the mirrored image: same pixels as the unflipped transform of the mirrored file at the same size
            let mut rgb: Vec<f32> = pattern(40, 30, 0).as_raw().iter().map(|&x| x as f32 / 255.0).collect();
            instagen::data::image::flip_horizontal(&mut rgb, 40, 30, 3);
            let p = ds.sources[0].transform.prepare(&rgb, 30, 40, s.min_size).unwrap();
            assert_eq!(p.pixels, s.image.pixels);
        }
    }
    assert!(flips > 5 && flips < 35, "{flips} flips in 40");
    assert_eq!(sizes.len(), 2, "both short sides drawn: {sizes:?}");
}

fn load_err(dir: &Path, v: serde_json::Value) -> String {
    match RunConfig::load(&write_config(dir, &v)).and_then(|c| DetectDataset::open(&c).map(|_| ())) {
        Ok(()) => panic!("accepted {v}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_configs_name_the_field() {
    let dir = tmp_dir("bad");
    write_sources(&dir);
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base_config();
        f(&mut v);
        load_err(&dir, v)
    };
    let e = edit(&|v| v["model"]["depth"] = json!(101));
    assert!(e.contains("model.depth"), "{e}");
    let e = edit(&|v| v["model"]["dpeth"] = json!(18));
    assert!(e.contains("dpeth"), "{e}");
    let e = edit(&|v| v["sources"][1]["classify"] = json!("novel"));
    assert!(e.contains("classify") && e.contains("novel"), "{e}");
    let e = edit(&|v| v["sources"][1]["name"] = json!("syn"));
    assert!(e.contains("sources[1].name 'syn' is also sources[0].name"), "{e}");
    let e = edit(&|v| v["sources"][0]["weight"] = json!(0));
    assert!(e.contains("sources[0] ('syn').weight"), "{e}");
    let e = edit(&|v| v["sources"][1]["classify"] = json!([1, 99]));
    assert!(e.contains("sources[1] ('real').classify") && e.contains("99"), "{e}");
    // the real source annotates class 2, which classify [1] leaves out
    let e = edit(&|v| v["sources"][1]["classify"] = json!([1]));
    assert!(e.contains("real.json") && e.contains("annotation 1 (image 1)") && e.contains("sources[1] ('real')"), "{e}");
    // "base" needs the OV-COCO base classes in the label map
    let e = edit(&|v| v["sources"][1]["classify"] = json!("base"));
    assert!(e.contains("base") && e.contains("lacks"), "{e}");
    let e = edit(&|v| v["optimizer"]["milestones"] = json!([11, 8]));
    assert!(e.contains("optimizer.milestones"), "{e}");
    let e = edit(&|v| v["sources"][0]["min_size"] = json!([]));
    assert!(e.contains("sources[0] ('syn').min_size"), "{e}");
    let e = edit(&|v| v["sources"] = json!([]));
    assert!(e.contains("sources"), "{e}");
    // a missing image is named
    std::fs::remove_file(dir.join("img/b.png")).unwrap();
    let e = load_err(&dir, base_config());
    assert!(e.contains("b.png") && e.contains("source 'syn'"), "{e}");
    let e = load_err(&dir, json!([1]));
    assert!(e.contains("run.json") && e.contains("not a JSON object"), "{e}");
}

#[test]
fn learning_rate_follows_warmup_and_milestones() {
    let dir = tmp_dir("lr");
    write_sources(&dir);
    let mut v = base_config();
    v["batch"] = json!(4);
    v["optimizer"] = json!({"warmup_iters": 10, "milestones": [2, 3]});
    let cfg = RunConfig::load(&write_config(&dir, &v)).unwrap();
    assert_eq!(cfg.base_lr(), 0.02 * 4.0 / 16.0);
    let base = cfg.base_lr() as f64;
    assert!((cfg.lr_at(0, 100) - base * 0.001).abs() < 1e-12);
    assert!((cfg.lr_at(5, 100) - base * (0.001 + 0.999 * 0.5)).abs() < 1e-12);
    assert!((cfg.lr_at(10, 100) - base).abs() < 1e-12);
    assert!((cfg.lr_at(199, 100) - base).abs() < 1e-12);
    assert!((cfg.lr_at(200, 100) - base * 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(300, 100) - base * 0.1 * 0.1).abs() < 1e-12);
}
