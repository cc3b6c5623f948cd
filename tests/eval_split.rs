//! `--split FILE`: a base / novel split read from a world.json or a `{"base", "novel"}` file, resolved by name
//! against the ground truth. The split figures are checked against an independent computation: the same
//! evaluator run on the ground truth and detections restricted to the base (novel, base + novel) categories,
//! whose AP50 (stat 1) is then the mean of those categories' AP50.

use std::path::{Path, PathBuf};

use instagen::detection::coco::{Dataset, Detection, LoadOptions};
use instagen::detection::eval::{self, EvalParams};
use instagen::pipeline::eval::SplitSpec;
use serde_json::{Value, json};

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_split_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small deterministic generator (xorshift).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const NAMES: [&str; 6] = ["circle", "square", "star", "heart", "moon", "ring"];

/// Ground truth over the six categories above (ids 11..16, not in name order) and noisy detections of it:
/// jittered copies of most boxes (some with the wrong class) plus false positives.
fn gt_and_dets(dir: &Path) -> (PathBuf, PathBuf) {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let cats: Vec<Value> = NAMES.iter().enumerate().map(|(i, n)| json!({"id": 16 - i as u64, "name": n})).collect();
    let (mut images, mut anns, mut dets) = (Vec::new(), Vec::new(), Vec::new());
    for im in 1..=12u64 {
        images.push(json!({"id": im, "file_name": format!("{im}.png"), "width": 64, "height": 64}));
        for _ in 0..1 + g.next() % 4 {
            let cat = 11 + g.next() % 6;
            let (x, y, w, h) = (g.unit() * 40.0, g.unit() * 40.0, 8.0 + g.unit() * 16.0, 8.0 + g.unit() * 16.0);
            anns.push(json!({"id": anns.len() + 1, "image_id": im, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}));
            if g.unit() < 0.8 {
                let j = |v: f64, g: &mut Gen| v + (g.unit() - 0.5) * 0.3 * w.min(h);
                let dcat = if g.unit() < 0.15 { 11 + g.next() % 6 } else { cat };
                dets.push(json!({"image_id": im, "category_id": dcat, "bbox": [j(x, &mut g), j(y, &mut g), w, h], "score": g.unit()}));
            }
        }
        for _ in 0..g.next() % 3 {
            let (x, y) = (g.unit() * 50.0, g.unit() * 50.0);
            dets.push(json!({"image_id": im, "category_id": 11 + g.next() % 6, "bbox": [x, y, 10.0, 10.0], "score": g.unit() * 0.7}));
        }
    }
    let (gt, dt) = (dir.join("gt.json"), dir.join("dt.json"));
    std::fs::write(&gt, json!({"images": images, "annotations": anns, "categories": cats}).to_string()).unwrap();
    std::fs::write(&dt, Value::Array(dets).to_string()).unwrap();
    (gt, dt)
}

/// AP50 over the categories named `keep`, by evaluating the restricted ground truth and detections.
fn restricted_ap50(gt: &Dataset, dts: &[Detection], keep: &[&str]) -> f64 {
    let ids: Vec<u64> = gt.categories.iter().filter(|c| keep.contains(&c.name.as_str())).map(|c| c.id).collect();
    assert_eq!(ids.len(), keep.len());
    let mut sub = gt.clone();
    sub.categories.retain(|c| ids.contains(&c.id));
    sub.annotations.retain(|a| ids.contains(&a.category_id));
    let d: Vec<Detection> = dts.iter().copied().filter(|d| ids.contains(&d.category_id)).collect();
    eval::evaluate(&sub, &d, &EvalParams::default()).stats[1]
}

#[test]
fn a_split_file_gives_the_figures_of_the_restricted_evaluations() {
    let dir = tmp_dir("figures");
    let (gt_path, dt_path) = gt_and_dets(&dir);
    let (gt, _) = Dataset::load(&gt_path, &LoadOptions::default()).unwrap();
    let (dts, _) = instagen::detection::coco::load_results(&dt_path, &gt, Default::default()).unwrap();
    // "ring" is in neither group: it counts nowhere.
    let (base, novel) = (["circle", "square", "star"], ["heart", "moon"]);
    let want = (restricted_ap50(&gt, &dts, &base), restricted_ap50(&gt, &dts, &novel), restricted_ap50(&gt, &dts, &[&base[..], &novel[..]].concat()));
    // The test has teeth: the groups differ from each other and from the whole set.
    let whole = eval::evaluate(&gt, &dts, &EvalParams::default()).stats[1];
    assert!((want.0 - want.1).abs() > 1e-3 && (want.2 - whole).abs() > 1e-6, "{want:?} {whole}");
    assert!(want.0 > 0.0 && want.1 > 0.0 && want.0 < 1.0 && want.1 < 1.0, "{want:?}");

    // Both file forms, through `instagen eval`'s library entry and its JSON.
    let world = dir.join("world.json");
    let cats: Vec<Value> = NAMES.iter().filter(|n| **n != "ring").map(|n| json!({"id": 1, "name": n, "novel": novel.contains(n)})).collect();
    std::fs::write(&world, json!({"generator": "test", "categories": cats}).to_string()).unwrap();
    let names = dir.join("split.json");
    std::fs::write(&names, json!({"base": base, "novel": novel}).to_string()).unwrap();
    for file in [&world, &names] {
        let js = dir.join("figures.json");
        let out = instagen::pipeline::eval::run(&gt_path, &dt_path, Some(file.to_str().unwrap()), Some(&js), false).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
        let s = &v["split"];
        let fname = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(s["name"], fname);
        for (key, w) in [("base_ap50", want.0), ("novel_ap50", want.1), ("all_ap50", want.2)] {
            let got = s[key].as_f64().unwrap();
            assert!((got - w).abs() < 1e-12, "{fname} {key}: {got} vs {w}");
        }
        assert_eq!((s["n_base"].as_u64(), s["n_novel"].as_u64(), s["n_all"].as_u64()), (Some(3), Some(2), Some(5)), "{s}");
        let line = format!("{fname}: AP50 base {:.1} (3 classes) | novel {:.1} (2) | all {:.1} (5)", want.0 * 100.0, want.1 * 100.0, want.2 * 100.0);
        assert!(out.contains(&line), "{out}\nwanted {line}");
    }
    // The split's ids follow the names, not the world file's ids (the ground truth numbers them 16..11).
    let s = SplitSpec::parse(world.to_str().unwrap()).unwrap().resolve(&gt).unwrap();
    assert_eq!((s.base.to_vec(), s.novel.to_vec()), (vec![16, 15, 14], vec![13, 12]));
    // ovcoco is still known by name.
    assert_eq!(SplitSpec::parse("ovcoco").unwrap(), SplitSpec::Known(eval::OVCOCO));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_split_files_are_errors_naming_the_file_and_the_problem() {
    let dir = tmp_dir("bad");
    let (gt_path, dt_path) = gt_and_dets(&dir);
    let (gt, _) = Dataset::load(&gt_path, &LoadOptions::default()).unwrap();
    let cases: [(&str, &str, &[&str]); 7] = [
        ("unknown.json", r#"{"base": ["circle"], "novel": ["hexagon"]}"#, &["unknown.json", "\"hexagon\"", "not a category"]),
        ("twice.json", r#"{"base": ["circle", "moon"], "novel": ["moon"]}"#, &["twice.json", "\"moon\"", "twice"]),
        ("malformed.json", r#"{"base": ["circle"], "novel": "#, &["malformed.json", "line 1"]),
        ("neither.json", r#"{"classes": ["circle"]}"#, &["neither.json", "not a split"]),
        ("noflag.json", r#"{"categories": [{"id": 1, "name": "circle"}]}"#, &["noflag.json", "categories[0]", "novel"]),
        ("notstr.json", r#"{"base": ["circle", 3], "novel": []}"#, &["notstr.json", "base[1]"]),
        ("empty.json", r#"{"base": [], "novel": []}"#, &["empty.json", "no category"]),
    ];
    for (name, text, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let e = SplitSpec::parse(p.to_str().unwrap()).and_then(|s| s.resolve(&gt)).unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "{name}: {e} lacks {w}");
        }
        // The CLI path fails the same way.
        let e2 = instagen::pipeline::eval::run(&gt_path, &dt_path, Some(p.to_str().unwrap()), None, false).unwrap_err().to_string();
        assert!(e2.contains(name), "{e2}");
    }
    let e = SplitSpec::parse("ovcoco2").unwrap_err().to_string();
    assert!(e.contains("ovcoco2") && e.contains("neither a known split"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
