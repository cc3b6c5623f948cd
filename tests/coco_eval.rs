//! COCO I/O, validation and the box evaluator against pycocotools.
//!
//! The evaluator is compared with pycocotools' COCOeval on the detection sets in `tests/fixtures/coco_eval/`
//! (written with pycocotools' figures by `tools/make_coco_eval_fixtures.py`); the ground truth is the real COCO
//! annotations in `../shared/data` (or `$INSTAGEN_DATA`, or `/work/shared/data`); those tests skip with a message
//! when it is absent. The validation tests build their inputs here.

mod common;

use std::path::{Path, PathBuf};

use instagen::detection::coco::{
    self, Annotation, Category, CocoError, Dataset, Detection, Image, IssueKind, LoadOptions, Policy,
};
use instagen::detection::eval::{self, EvalParams, OVCOCO, OVCOCO_BASE_NAMES, OVCOCO_NOVEL_NAMES};

fn data_dir() -> Option<PathBuf> {
    common::shared_data("coco128").and_then(|p| p.parent().map(|d| d.to_path_buf()))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco_eval")
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_coco_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(serde::Deserialize)]
struct PerCat {
    id: u64,
    ap: f64,
    ap50: f64,
    ar100: f64,
}

#[derive(serde::Deserialize)]
struct Ov {
    base_ap50: f64,
    novel_ap50: f64,
    all_ap50: f64,
}

#[derive(serde::Deserialize)]
struct Set {
    gt: String,
    dt: String,
    num_detections: usize,
    stats: Vec<f64>,
    per_category: Vec<PerCat>,
    ovcoco: Ov,
}

#[derive(serde::Deserialize)]
struct Expected {
    tolerance: f64,
    sets: Vec<Set>,
}

#[test]
fn matches_pycocotools_on_every_metric() {
    let Some(data) = data_dir() else { return };
    let exp: Expected = serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    assert!(exp.sets.len() >= 10, "fixture sets: {}", exp.sets.len());
    let mut worst = (0.0f64, String::new());
    let mut compared = 0usize;
    let mut check = |what: String, ours: f64, theirs: f64| {
        let d = (ours - theirs).abs();
        assert!(d <= exp.tolerance, "{what}: ours {ours} pycocotools {theirs} (|diff| {d:e})");
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, what);
        }
        compared += 1;
    };
    let p = EvalParams::default();
    for set in &exp.sets {
        let (gt, gs) = Dataset::load(data.join(&set.gt), &LoadOptions::default()).expect("real GT loads strictly");
        assert!(gs.is_clean());
        let (dts, ds) = coco::load_results(fixtures().join(&set.dt), &gt, Policy::Strict).expect("fixture dets load");
        assert!(ds.is_clean());
        assert_eq!(dts.len(), set.num_detections);
        let r = eval::evaluate(&gt, &dts, &p);
        for (i, name) in eval::STAT_NAMES.iter().enumerate() {
            check(format!("{} {name}", set.dt), r.stats[i], set.stats[i]);
        }
        assert_eq!(r.per_category.len(), set.per_category.len());
        for (o, t) in r.per_category.iter().zip(&set.per_category) {
            assert_eq!(o.id, t.id);
            check(format!("{} cat {} AP", set.dt, o.id), o.ap, t.ap);
            check(format!("{} cat {} AP50", set.dt, o.id), o.ap50, t.ap50);
            check(format!("{} cat {} AR100", set.dt, o.id), o.ar100, t.ar100);
        }
        let s = r.split_report(&OVCOCO);
        check(format!("{} ovcoco base", set.dt), s.base_ap50, set.ovcoco.base_ap50);
        check(format!("{} ovcoco novel", set.dt), s.novel_ap50, set.ovcoco.novel_ap50);
        check(format!("{} ovcoco all", set.dt), s.all_ap50, set.ovcoco.all_ap50);
    }
    println!("compared {compared} figures over {} sets; largest |diff| {:e} ({})", exp.sets.len(), worst.0, worst.1);
}

#[test]
fn perfect_detections_score_one_and_order_matters_only_through_scores() {
    let Some(data) = data_dir() else { return };
    let (gt, _) = Dataset::load(data.join("coco128/annotations/instances_train2017.json"), &LoadOptions::default()).unwrap();
    let dts: Vec<Detection> = gt
        .annotations
        .iter()
        .filter(|a| !a.iscrowd)
        .map(|a| Detection { image_id: a.image_id, category_id: a.category_id, bbox: a.bbox, score: 1.0 })
        .collect();
    let r = eval::evaluate(&gt, &dts, &EvalParams::default());
    // Every non-crowd GT found exactly: AP and AR@100 are 1 (AR@1 is not: images hold several objects).
    for i in [0, 1, 2, 8] {
        assert!((r.stats[i] - 1.0).abs() < 1e-12, "stat {i} = {}", r.stats[i]);
    }
    let mut rev = dts.clone();
    rev.reverse();
    let r2 = eval::evaluate(&gt, &rev, &EvalParams::default());
    assert_eq!(r.stats, r2.stats);
}

#[test]
fn ovcoco_split_names_match_the_coco_category_ids() {
    assert_eq!(OVCOCO.base.len(), 48);
    assert_eq!(OVCOCO.novel.len(), 17);
    let Some(data) = data_dir() else { return };
    let (gt, _) = Dataset::load(data.join("coco128/annotations/instances_train2017.json"), &LoadOptions::default()).unwrap();
    let name = |id: u64| gt.categories.iter().find(|c| c.id == id).map(|c| c.name.clone()).unwrap();
    for (id, n) in OVCOCO.base.iter().zip(OVCOCO_BASE_NAMES) {
        assert_eq!(name(*id), n);
    }
    for (id, n) in OVCOCO.novel.iter().zip(OVCOCO_NOVEL_NAMES) {
        assert_eq!(name(*id), n);
    }
}

#[test]
fn linspace_matches_numpy_thresholds() {
    let p = EvalParams::default();
    assert_eq!(p.iou_thrs.len(), 10);
    assert_eq!(p.rec_thrs.len(), 101);
    // numpy.linspace(.5, .95, 10)[8] is 0.8999999999999999 and [5] is exactly 0.75.
    assert_eq!(p.iou_thrs[8], 0.8999999999999999);
    assert_eq!(p.iou_thrs[5], 0.75);
    assert_eq!(p.rec_thrs[100], 1.0);
}

#[test]
fn crowd_iou_uses_the_detection_area() {
    let g = [0.0, 0.0, 100.0, 100.0];
    let d = [10.0, 10.0, 20.0, 20.0];
    assert_eq!(eval::iou_xywh(&d, &g, true), 1.0);
    assert!((eval::iou_xywh(&d, &g, false) - 400.0 / 10000.0).abs() < 1e-15);
    assert_eq!(eval::iou_xywh(&[200.0, 0.0, 5.0, 5.0], &g, false), 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// Validation

fn small_dataset() -> Dataset {
    let img = |id: u64, f: &str| Image { id, file_name: f.into(), width: 64, height: 48, extra: Default::default() };
    let ann = |id: u64, image_id: u64, category_id: u64, bbox: [f64; 4]| Annotation {
        id,
        image_id,
        category_id,
        bbox,
        area: bbox[2] * bbox[3],
        iscrowd: false,
        segmentation: None,
        score: None,
    };
    Dataset {
        info: None,
        licenses: None,
        images: vec![img(1, "a.png"), img(2, "b.jpg")],
        annotations: vec![ann(10, 1, 1, [1.0, 2.0, 10.0, 10.0]), ann(11, 2, 2, [0.0, 0.0, 64.0, 48.0])],
        categories: vec![
            Category { id: 1, name: "cat".into(), supercategory: None },
            Category { id: 2, name: "dog".into(), supercategory: None },
        ],
    }
}

fn load_json(name: &str, v: serde_json::Value, opts: &LoadOptions) -> Result<(Dataset, coco::LoadSummary), CocoError> {
    Dataset::from_json(name, &serde_json::to_vec(&v).unwrap(), opts)
}

/// Strict loading fails with exactly `kind`, the message naming the file and `needle`; lenient loading skips
/// the record and says so.
fn expect_issue(v: serde_json::Value, kind: IssueKind, needle: &str, lenient_images: usize, lenient_anns: usize) {
    let e = load_json("bad.json", v.clone(), &LoadOptions::default()).expect_err("strict load must fail");
    let msg = e.to_string();
    assert!(msg.starts_with("bad.json: "), "{msg}");
    assert!(msg.contains(needle), "'{needle}' not in: {msg}");
    assert_eq!(e.issues().len(), 1, "{msg}");
    assert_eq!(e.issues()[0].kind, kind, "{msg}");
    let (ds, summary) = load_json("bad.json", v, &LoadOptions::lenient()).expect("lenient load");
    assert_eq!(summary.counts().iter().find(|(k, _)| *k == kind).map(|x| x.1), Some(1), "{summary}");
    assert_eq!((ds.images.len(), ds.annotations.len()), (lenient_images, lenient_anns), "{summary}");
    assert!(summary.to_string().contains(kind.as_str()), "{summary}");
}

fn as_value(ds: &Dataset) -> serde_json::Value {
    serde_json::to_value(ds).unwrap()
}

#[test]
fn clean_dataset_loads_and_round_trips() {
    let ds = small_dataset();
    let dir = tmp_dir("roundtrip");
    let p = dir.join("instances.json");
    ds.save(&p).unwrap();
    let (back, s) = Dataset::load(&p, &LoadOptions::default()).unwrap();
    assert!(s.is_clean(), "{s}");
    assert_eq!(back, ds);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_category_id_is_reported() {
    let mut v = as_value(&small_dataset());
    v["annotations"][1]["category_id"] = 7.into();
    expect_issue(v, IssueKind::UnknownCategoryId, "annotations[1] (id 11, image 2): field category_id 7", 2, 1);
}

#[test]
fn unknown_image_id_is_reported() {
    let mut v = as_value(&small_dataset());
    v["annotations"][0]["image_id"] = 99.into();
    expect_issue(v, IssueKind::UnknownImageId, "field image_id 99", 2, 1);
}

#[test]
fn zero_size_and_negative_boxes_are_reported() {
    for bbox in [[1.0, 1.0, 0.0, 5.0], [1.0, 1.0, 5.0, -2.0]] {
        let mut v = as_value(&small_dataset());
        v["annotations"][0]["bbox"] = serde_json::json!(bbox);
        expect_issue(v, IssueKind::EmptyBox, "annotations[0] (id 10, image 1): field bbox", 2, 1);
    }
}

#[test]
fn boxes_outside_the_image_are_reported() {
    for bbox in [[60.0, 0.0, 10.0, 10.0], [-5.0, 0.0, 10.0, 10.0], [0.0, 40.0, 10.0, 10.0]] {
        let mut v = as_value(&small_dataset());
        v["annotations"][1]["bbox"] = serde_json::json!(bbox);
        expect_issue(v, IssueKind::BoxOutsideImage, "reaches outside the 64x48 image", 2, 1);
    }
    // Within the tolerance (1 px by default) is accepted.
    let mut v = as_value(&small_dataset());
    v["annotations"][1]["bbox"] = serde_json::json!([0.0, 0.0, 64.5, 48.5]);
    load_json("ok.json", v, &LoadOptions::default()).unwrap();
}

#[test]
fn duplicate_ids_are_reported() {
    let mut v = as_value(&small_dataset());
    v["annotations"][1]["id"] = 10.into();
    expect_issue(v, IssueKind::DuplicateAnnotationId, "annotations[1] (id 10, image 2): field id 10 appears again", 2, 1);

    let mut v = as_value(&small_dataset());
    v["images"][1]["id"] = 1.into();
    // The second image is dropped, so the annotation of image 2 is reported too.
    let e = load_json("bad.json", v.clone(), &LoadOptions::default()).unwrap_err();
    let kinds: Vec<IssueKind> = e.issues().iter().map(|i| i.kind).collect();
    assert_eq!(kinds, vec![IssueKind::DuplicateImageId, IssueKind::UnknownImageId], "{e}");
    assert!(e.to_string().contains("images[1] (id 1, file 'b.jpg'): field id 1 appears again"), "{e}");
    let (ds, s) = load_json("bad.json", v, &LoadOptions::lenient()).unwrap();
    assert_eq!((ds.images.len(), ds.annotations.len(), s.skipped.len()), (1, 1, 2));

    let mut v = as_value(&small_dataset());
    v["categories"][1]["id"] = 1.into();
    // The duplicate category is dropped, so the annotation of category 2 is reported too.
    let e = load_json("bad.json", v.clone(), &LoadOptions::default()).unwrap_err();
    let kinds: Vec<IssueKind> = e.issues().iter().map(|i| i.kind).collect();
    assert_eq!(kinds, vec![IssueKind::DuplicateCategoryId, IssueKind::UnknownCategoryId], "{e}");
    assert!(e.to_string().contains("category id 1 ('dog') appears again"), "{e}");
    let (ds, s) = load_json("bad.json", v, &LoadOptions::lenient()).unwrap();
    assert_eq!((ds.categories.len(), ds.annotations.len(), s.skipped.len()), (1, 1, 2));
}

#[test]
fn non_finite_values_and_negative_areas_are_reported() {
    // JSON cannot carry NaN or infinity (serde_json rejects them), but datasets built in code can.
    let mut ds = small_dataset();
    ds.annotations[0].bbox[1] = f64::NAN;
    ds.annotations[1].area = f64::INFINITY;
    let e = ds.clone().validated(Path::new("mem.json"), &LoadOptions::default()).unwrap_err();
    let kinds: Vec<IssueKind> = e.issues().iter().map(|i| i.kind).collect();
    assert_eq!(kinds, vec![IssueKind::NonFinite, IssueKind::NonFinite], "{e}");
    assert!(e.to_string().contains("annotations[0] (id 10, image 1): field bbox [1.0, NaN, 10.0, 10.0] is not finite"), "{e}");
    assert!(e.to_string().contains("annotations[1] (id 11, image 2): field area inf is not finite"), "{e}");
    let (kept, s) = ds.validated(Path::new("mem.json"), &LoadOptions::lenient()).unwrap();
    assert_eq!((kept.annotations.len(), s.skipped.len()), (0, 2));

    let mut v = as_value(&small_dataset());
    v["annotations"][0]["area"] = serde_json::json!(-3.0);
    expect_issue(v, IssueKind::NegativeArea, "field area -3 is negative", 2, 1);
}

#[test]
fn zero_image_size_is_reported() {
    let mut v = as_value(&small_dataset());
    v["images"][0]["width"] = 0.into();
    let e = load_json("bad.json", v.clone(), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.issues().len(), 1, "{e}");
    assert_eq!(e.issues()[0].kind, IssueKind::BadImageSize);
    assert!(e.to_string().contains("images[0] (id 1, file 'a.png'): width 0 x height 48"), "{e}");
    let (ds, s) = load_json("bad.json", v, &LoadOptions::lenient()).unwrap();
    assert_eq!((ds.images.len(), ds.annotations.len()), (1, 1));
    assert_eq!(s.counts(), vec![(IssueKind::BadImageSize, 1), (IssueKind::ImageSkipped, 1)]);
}

#[test]
fn missing_area_is_filled_and_counted() {
    let mut v = as_value(&small_dataset());
    v["annotations"][0].as_object_mut().unwrap().remove("area");
    let (ds, s) = load_json("x.json", v, &LoadOptions::default()).unwrap();
    assert_eq!(ds.annotations[0].area, 100.0);
    assert_eq!(s.areas_filled, 1);
    assert!(s.to_string().contains("1 missing areas filled"), "{s}");
}

#[test]
fn missing_image_file_is_reported() {
    let dir = tmp_dir("images");
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]));
    coco::write_image(dir.join("a.png"), &img).unwrap();
    let opts = LoadOptions { image_root: Some(dir.clone()), check_image_sizes: true, ..Default::default() };
    let e = load_json("bad.json", as_value(&small_dataset()), &opts).unwrap_err();
    assert_eq!(e.issues().len(), 1, "{e}");
    assert_eq!(e.issues()[0].kind, IssueKind::MissingImageFile);
    assert!(e.to_string().contains("b.jpg does not exist"), "{e}");
    let (ds, s) = load_json("bad.json", as_value(&small_dataset()), &LoadOptions { policy: Policy::Lenient, ..opts.clone() }).unwrap();
    assert_eq!((ds.images.len(), ds.annotations.len()), (1, 1));
    let kinds: Vec<IssueKind> = s.counts().into_iter().map(|x| x.0).collect();
    assert_eq!(kinds, vec![IssueKind::MissingImageFile, IssueKind::ImageSkipped], "{s}");

    // With the file present but of another size.
    coco::write_image(dir.join("b.jpg"), &image::RgbImage::new(32, 48)).unwrap();
    let e = load_json("bad.json", as_value(&small_dataset()), &opts).unwrap_err();
    assert_eq!(e.issues()[0].kind, IssueKind::ImageSizeMismatch, "{e}");
    assert!(e.to_string().contains("is 32x48, JSON says 64x48"), "{e}");
    coco::write_image(dir.join("b.jpg"), &image::RgbImage::new(64, 48)).unwrap();
    load_json("ok.json", as_value(&small_dataset()), &opts).unwrap();

    // Images read back (PNG exactly, JPEG in size).
    let back = coco::read_image(dir.join("a.png")).unwrap();
    assert_eq!(back, img);
    assert_eq!(coco::read_image(dir.join("b.jpg")).unwrap().dimensions(), (64, 48));
    assert!(coco::write_image(dir.join("c.bmp"), &img).unwrap_err().to_string().contains("unsupported image extension"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let e = Dataset::from_json("broken.json", b"{\n  \"images\": [\n    {\"id\": 1,, }\n  ]\n}", &LoadOptions::default())
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CocoError::Json { .. }));
    assert!(msg.starts_with("broken.json: malformed COCO JSON"), "{msg}");
    assert!(msg.contains("line 3 column"), "{msg}");
    // A field of the wrong type is reported the same way.
    let e = Dataset::from_json("t.json", br#"{"images": [], "categories": [{"id": "x", "name": "a"}]}"#, &LoadOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("line 1 column"), "{e}");
    // A missing file names the path.
    let e = Dataset::load("/nonexistent/instances.json", &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/instances.json: "), "{e}");
}

#[test]
fn results_are_validated_and_written_atomically() {
    let gt = small_dataset();
    let good = Detection { image_id: 1, category_id: 1, bbox: [1.0, 2.0, 3.0, 4.0], score: 0.5 };
    let dir = tmp_dir("results");
    let p = dir.join("dets.json");
    coco::save_results(&p, &[good, Detection { score: 0.25, ..good }]).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text,
        r#"[{"image_id":1,"category_id":1,"bbox":[1.0,2.0,3.0,4.0],"score":0.5},{"image_id":1,"category_id":1,"bbox":[1.0,2.0,3.0,4.0],"score":0.25}]"#
    );
    let (back, s) = coco::load_results(&p, &gt, Policy::Strict).unwrap();
    assert_eq!(back.len(), 2);
    assert!(s.is_clean());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    let bad = [
        (Detection { image_id: 5, ..good }, IssueKind::UnknownImageId, "detections[1] (image 5, category 1): field image_id 5"),
        (Detection { category_id: 9, ..good }, IssueKind::UnknownCategoryId, "field category_id 9 is not a ground-truth category"),
        (Detection { bbox: [0.0, 0.0, 0.0, 1.0], ..good }, IssueKind::EmptyBox, "width or height <= 0"),
        (Detection { score: f64::NAN, ..good }, IssueKind::NonFinite, "field score NaN is not finite"),
        (Detection { bbox: [f64::INFINITY, 0.0, 1.0, 1.0], ..good }, IssueKind::NonFinite, "field bbox"),
    ];
    for (d, kind, needle) in bad {
        let e = coco::validate_results(Path::new("dt.json"), vec![good, d], &gt, Policy::Strict).unwrap_err();
        assert_eq!(e.issues().len(), 1, "{e}");
        assert_eq!(e.issues()[0].kind, kind, "{e}");
        assert!(e.to_string().contains(needle) && e.to_string().starts_with("dt.json: "), "{e}");
        let (kept, s) = coco::validate_results(Path::new("dt.json"), vec![good, d], &gt, Policy::Lenient).unwrap();
        assert_eq!(kept, vec![good]);
        assert_eq!(s.counts(), vec![(kind, 1)]);
        assert!(s.to_string().starts_with("dt.json: read 2 detections; skipped 1 record(s):"), "{s}");
    }
    let e = coco::results_from_json(Path::new("dt.json"), br#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]"#, &gt, Policy::Strict)
        .unwrap_err();
    assert!(e.to_string().contains("malformed COCO JSON") && e.to_string().contains("line 1 column"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cli_eval_reports_and_writes_json() {
    let Some(data) = data_dir() else { return };
    let gt = data.join("tiny_coco/annotations/instances_val2017.json");
    let dir = tmp_dir("cli");
    let out = dir.join("figures.json");
    let text = instagen::pipeline::eval::run(&gt, &fixtures().join("tinyval_jitter.json"), Some("ovcoco"), Some(&out), false).unwrap();
    assert!(text.contains(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = "), "{text}");
    assert!(text.contains("ovcoco: AP50 base"), "{text}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(j["stats_array"].as_array().unwrap().len(), 12);
    assert!(j["split"]["novel_ap50"].is_f64());
    let e = instagen::pipeline::eval::run(&gt, &fixtures().join("tinyval_jitter.json"), Some("lvis"), None, false).unwrap_err();
    assert!(e.to_string().contains("unknown split 'lvis'"), "{e}");
    // Detections on images that are not in this GT: a clear error.
    let e = instagen::pipeline::eval::run(&gt, &fixtures().join("coco128_jitter.json"), None, None, false).unwrap_err();
    assert!(e.to_string().contains("coco128_jitter.json: ") && e.to_string().contains("is not a ground-truth image"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lenient_skipping_of_unknown_categories_gives_pycocotools_figures() {
    // pycocotools silently ignores detections of categories that are not in the GT; strict loading refuses
    // them, lenient loading skips and counts them and must then give pycocotools' figures.
    let Some(data) = data_dir() else { return };
    let exp: Expected = serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let set = exp.sets.iter().find(|s| s.dt == "tinyval_jitter.json").unwrap();
    let (gt, _) = Dataset::load(data.join(&set.gt), &LoadOptions::default()).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join(&set.dt)).unwrap()).unwrap();
    let first = v[0].clone();
    for (i, cat) in [(0usize, 999u64), (5, 0), (17, 91)] {
        let mut d = first.clone();
        d["category_id"] = cat.into();
        d["score"] = serde_json::json!(0.999);
        v.as_array_mut().unwrap().insert(i, d);
    }
    let json = serde_json::to_vec(&v).unwrap();
    let e = coco::results_from_json(Path::new("extra.json"), &json, &gt, Policy::Strict).unwrap_err();
    assert_eq!(e.issues().len(), 3, "{e}");
    let (dts, s) = coco::results_from_json(Path::new("extra.json"), &json, &gt, Policy::Lenient).unwrap();
    assert_eq!(s.counts(), vec![(IssueKind::UnknownCategoryId, 3)]);
    let r = eval::evaluate(&gt, &dts, &EvalParams::default());
    for i in 0..12 {
        assert!((r.stats[i] - set.stats[i]).abs() <= exp.tolerance, "stat {i}: {} vs {}", r.stats[i], set.stats[i]);
    }
}
