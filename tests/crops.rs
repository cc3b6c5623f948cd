//! InstaGen stage-1 crops (`src/data/crops.rs`): geometry and prompts against an independent Python version of
//! the rules on the real coco128 annotations (`tools/make_crop_fixtures.py` -> `tests/fixtures/crops/`, skipped
//! with a message when `../shared/data` is absent), the resampler against PIL, the dataset on small files, and
//! bad input.

mod common;

use std::path::{Path, PathBuf};

use instagen::data::crops::{Categories, CropDataset, CropOptions, Draws};
use instagen::data::image::{flip_horizontal, resize_bilinear};
use instagen::data::Dataset as _;
use instagen::detection::coco::{self, LoadOptions};
use instagen::util::Rng;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crops")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Replays the fixture's draws, counting them.
struct Replay<'a> {
    vals: &'a [f64],
    used: usize,
}

impl Draws for Replay<'_> {
    fn uniform(&mut self) -> f64 {
        let v = *self.vals.get(self.used).unwrap_or_else(|| panic!("more than the {} draws the reference used", self.vals.len()));
        self.used += 1;
        v
    }
}

#[test]
fn crops_match_the_python_reference_on_coco128() {
    let fx = read_json(&fixtures().join("crops.json"));
    let Some(data) = common::shared_data("coco128") else { return };
    let ann = data.parent().unwrap().join(fx["source"].as_str().unwrap());
    let (ds, _) = coco::Dataset::load(&ann, &LoadOptions::default()).unwrap();
    let samples = fx["samples"].as_array().unwrap();
    let mut checked = 0;
    let mut max_err = 0f64;
    for (mode, n_anchors) in fx["anchors"].as_object().unwrap() {
        let opts = CropOptions { resolution: 8, categories: Categories::parse(mode), lenient: false };
        let crops = CropDataset::from_coco(&ds, &ann, &data.join("train2017"), Default::default(), &opts).unwrap();
        assert_eq!(crops.len() as u64, n_anchors.as_u64().unwrap(), "anchors of --categories {mode}");
        let index: std::collections::HashMap<u64, usize> = (0..crops.len()).map(|i| (crops.ids(i).1, i)).collect();
        for s in samples.iter().filter(|s| s["categories"] == *mode) {
            let aid = s["annotation_id"].as_u64().unwrap();
            let i = index[&aid];
            assert_eq!(crops.ids(i).0, s["image_id"].as_u64().unwrap());
            let draws: Vec<f64> = s["draws"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            let mut r = Replay { vals: &draws, used: 0 };
            let plan = crops.plan(i, &mut r);
            let what = format!("--categories {mode}, annotation {aid}");
            assert_eq!(r.used, draws.len(), "{what}: number of draws");
            for (k, want) in s["crop"].as_array().unwrap().iter().enumerate() {
                let e = (plan.crop[k] - want.as_f64().unwrap()).abs();
                max_err = max_err.max(e);
                assert!(e <= 1e-4, "{what}: crop {:?} vs {}", plan.crop, s["crop"]);
            }
            assert_eq!(plan.flip, s["flip"].as_bool().unwrap(), "{what}: flip");
            let picked: Vec<u64> = s["picked"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(plan.picked, picked, "{what}: picked boxes");
            assert_eq!(plan.prompt, s["prompt"].as_str().unwrap(), "{what}: prompt");
            checked += 1;
        }
    }
    assert_eq!(checked, samples.len());
    println!("{checked} crops equal to the Python reference; largest crop-box difference {max_err:e} px");

    // The real images decode and crop (strict: every coco128 image exists with the JSON's size).
    let t = std::time::Instant::now();
    let opts = CropOptions { resolution: 512, categories: Categories::Base, lenient: false };
    let crops = CropDataset::open(&ann, data.join("train2017"), &opts).unwrap();
    let opened = t.elapsed();
    let t = std::time::Instant::now();
    let picks: Vec<usize> = (0..crops.len()).step_by(crops.len() / 6).collect();
    for &i in &picks {
        let s = crops.get(i, &mut Rng::new(i as u64)).unwrap();
        assert_eq!(s.image.shape, vec![512, 512, 3]);
        assert!(s.image.to_f32().iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    println!("coco128 open {:.0} ms, get at 512x512 {:.1} ms/sample", opened.as_secs_f64() * 1e3, t.elapsed().as_secs_f64() * 1e3 / picks.len() as f64);
}

#[test]
fn resize_matches_pil_bilinear() {
    let p = fixtures().join("resize.json");
    let fx = read_json(&p);
    let (w, h) = (fx["width"].as_u64().unwrap() as usize, fx["height"].as_u64().unwrap() as usize);
    let src: Vec<f32> = fx["pixels"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let mut max_err = 0f64;
    for case in fx["cases"].as_array().unwrap() {
        let size: Vec<usize> = case["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let b: Vec<f64> = case["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want: Vec<f64> = case["out"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got = resize_bilinear(&src, w, h, 3, [b[0], b[1], b[2], b[3]], size[0], size[1]);
        assert_eq!(got.len(), want.len());
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let d = (*g as f64 - e).abs();
            max_err = max_err.max(d);
            // Both accumulate in f64 and store f32: equal up to summation order.
            assert!(d <= 1e-5, "box {b:?} -> {size:?}: value {i}: {g} vs PIL {e}");
        }
    }
    println!("resize equals PIL {} (mode F) to {max_err:e} (pixel values 0..255)", fx["pillow"]);
}

// ----------------------------------------------------------------------------------------------------------
// Small files

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_crops_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + seed) as u8, (y * 11) as u8, ((x * y + seed) % 256) as u8]))
}

/// Two 40x30 PNG images (ids 1, 2) with boxes, as an instances file; `edit` changes the JSON before writing.
fn write_set(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    coco::write_image(dir.join("a.png"), &pattern(40, 30, 0)).unwrap();
    coco::write_image(dir.join("b.png"), &pattern(40, 30, 50)).unwrap();
    let mut j = serde_json::json!({
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 8]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20, 10, 6, 12]},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [2, 3, 30, 20]},
            {"id": 13, "image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 30], "iscrowd": 1}
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}]
    });
    edit(&mut j);
    let p = dir.join("instances.json");
    std::fs::write(&p, serde_json::to_vec(&j).unwrap()).unwrap();
    p
}

fn opts(categories: &str, lenient: bool) -> CropOptions {
    CropOptions { resolution: 16, categories: Categories::parse(categories), lenient }
}

#[test]
fn dataset_gives_resized_flipped_scaled_crops() {
    let dir = tmp_dir("ok");
    let ann = write_set(&dir, |_| {});
    let ds = CropDataset::open(&ann, &dir, &opts("all", false)).unwrap();
    assert_eq!(ds.len(), 3, "crowd box 13 is not an anchor");
    let imgs = [pattern(40, 30, 0), pattern(40, 30, 50)];
    let mut flips = [0, 0];
    for seed in 0..12u64 {
        for i in 0..ds.len() {
            let mut rng = Rng::new(seed * 100 + i as u64);
            let plan = ds.plan(i, &mut rng.clone());
            let s = ds.get(i, &mut rng).unwrap();
            assert_eq!(s.image.shape, vec![16, 16, 3]);
            assert_eq!((s.image_id, s.annotation_id), ds.ids(i));
            assert_eq!((s.crop, s.flipped, &s.prompt), (plan.crop, plan.flip, &plan.prompt));
            // Independently: the crop of the pattern, mirrored by hand, scaled to [-1, 1].
            let src: Vec<f32> = imgs[s.image_id as usize - 1].as_raw().iter().map(|&v| v as f32).collect();
            let r = resize_bilinear(&src, 40, 30, 3, s.crop, 16, 16);
            let got = s.image.to_f32();
            for y in 0..16 {
                for x in 0..16 {
                    let sx = if s.flipped { 15 - x } else { x };
                    for c in 0..3 {
                        let want = r[(y * 16 + sx) * 3 + c] / 127.5 - 1.0;
                        assert!((got[(y * 16 + x) * 3 + c] - want).abs() < 1e-6);
                    }
                }
            }
            assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
            flips[s.flipped as usize] += 1;
            if s.annotation_id == 12 {
                // The crowd "dog" covers the whole image: named.
                assert!(s.prompt == "a photograph of person and dog" || s.prompt == "a photograph of dog and person", "{}", s.prompt);
            }
        }
    }
    assert!(flips[0] > 0 && flips[1] > 0, "both flips occur: {flips:?}");
    // The same draws give the same sample.
    let a = ds.get(1, &mut Rng::new(5)).unwrap();
    let b = ds.get(1, &mut Rng::new(5)).unwrap();
    assert_eq!((a.image, a.prompt), (b.image, b.prompt));
    let mut flipped = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    flip_horizontal(&mut flipped, 2, 1, 3);
    assert_eq!(flipped, vec![4.0, 5.0, 6.0, 1.0, 2.0, 3.0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn category_selection_and_unknown_names() {
    let dir = tmp_dir("cats");
    let ann = write_set(&dir, |_| {});
    let ds = CropDataset::open(&ann, &dir, &opts("dog", false)).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.ids(0), (1, 11));
    let p = ds.plan(0, &mut Rng::new(1));
    assert_eq!(p.prompt, "a photograph of dog", "person boxes are not selected, so not named");

    let e = CropDataset::open(&ann, &dir, &opts("person,unicorn", false)).err().unwrap().to_string();
    assert!(e.contains("instances.json") && e.contains("'unicorn'") && e.contains("cat, dog, person"), "{e}");
    // `base` needs the 48 base names in the file.
    let e = CropDataset::open(&ann, &dir, &opts("base", false)).err().unwrap().to_string();
    assert!(e.contains("base") && e.contains("'bicycle'"), "{e}");
    // A category with no box: no usable crop.
    let e = CropDataset::open(&ann, &dir, &opts("cat", false)).err().unwrap().to_string();
    assert!(e.contains("instances.json") && e.contains("no usable crop"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_boxes_and_categories_name_the_record_or_are_skipped() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 3] = [
        ("outside", |j| j["annotations"][0]["bbox"] = serde_json::json!([30, 5, 20, 8]), "reaches outside"),
        ("empty", |j| j["annotations"][0]["bbox"] = serde_json::json!([5, 5, 0, 8]), "width or height <= 0"),
        ("unknowncat", |j| j["annotations"][0]["category_id"] = serde_json::json!(9), "category_id 9"),
    ];
    for (name, edit, msg) in cases {
        let dir = tmp_dir(name);
        let ann = write_set(&dir, edit);
        let e = CropDataset::open(&ann, &dir, &opts("all", false)).err().unwrap().to_string();
        assert!(e.contains("instances.json") && e.contains("id 10") && e.contains(msg), "{name}: {e}");
        let ds = CropDataset::open(&ann, &dir, &opts("all", true)).unwrap();
        assert_eq!(ds.len(), 2, "{name}: annotation 10 skipped");
        let s = ds.summary();
        assert_eq!(s.load.skipped.len(), 1, "{name}: {s}");
        assert!(!s.is_clean() && s.to_string().contains("id 10"), "{name}: {s}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_box_with_no_area_inside_its_image_is_an_error_or_skipped() {
    // Within the 1 px validation tolerance, but nothing left once clipped to the 40 px wide image.
    let dir = tmp_dir("sliver");
    let ann = write_set(&dir, |j| j["annotations"][1]["bbox"] = serde_json::json!([40.5, 5, 0.4, 8]));
    let e = CropDataset::open(&ann, &dir, &opts("all", false)).err().unwrap().to_string();
    assert!(e.contains("instances.json") && e.contains("annotation 11") && e.contains("no area inside"), "{e}");
    let ds = CropDataset::open(&ann, &dir, &opts("all", true)).unwrap();
    assert_eq!(ds.len(), 2);
    let s = ds.summary();
    assert_eq!(s.load.skipped.len(), 1, "{s}");
    assert!(s.to_string().contains("annotation 11"), "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreadable_images_are_errors_or_skipped() {
    // Missing file and a file that is not an image: found when the dataset is opened.
    for (name, bad) in [("missing", None), ("notimage", Some(b"not a png at all".to_vec()))] {
        let dir = tmp_dir(name);
        let ann = write_set(&dir, |_| {});
        std::fs::remove_file(dir.join("a.png")).unwrap();
        if let Some(bytes) = bad {
            std::fs::write(dir.join("a.png"), bytes).unwrap();
        }
        let e = CropDataset::open(&ann, &dir, &opts("all", false)).err().unwrap().to_string();
        assert!(e.contains("instances.json") && e.contains("a.png") && e.contains("id 1"), "{name}: {e}");
        let ds = CropDataset::open(&ann, &dir, &opts("all", true)).unwrap();
        assert_eq!(ds.len(), 1, "{name}: only image 2's box is left");
        let s = ds.summary().to_string();
        assert!(s.contains("a.png") && s.contains("its image was skipped"), "{name}: {s}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // A truncated PNG: its header reads, its pixels do not; found when a sample needs it.
    let dir = tmp_dir("truncated");
    let ann = write_set(&dir, |_| {});
    let full = std::fs::read(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("a.png"), &full[..full.len() / 2]).unwrap();
    let ds = CropDataset::open(&ann, &dir, &opts("all", false)).unwrap();
    let e = ds.get(0, &mut Rng::new(0)).err().unwrap().to_string();
    assert!(e.contains("a.png") && e.contains("annotation 10") && e.contains("instances.json"), "{e}");
    assert!(ds.get(2, &mut Rng::new(0)).is_ok());

    let ds = CropDataset::open(&ann, &dir, &opts("all", true)).unwrap();
    for i in 0..2 {
        let s = ds.get(i, &mut Rng::new(0)).unwrap();
        assert_eq!((s.image_id, s.annotation_id), (2, 12), "served from the next readable anchor");
    }
    let s = ds.summary();
    assert_eq!((s.image_skips.len(), s.substituted), (1, 2));
    assert_eq!(s.image_skips[0].annotation_id, 10);
    assert!(s.to_string().contains("a.png"), "{s}");

    // Nothing readable at all.
    std::fs::write(dir.join("b.png"), &full[..full.len() / 2]).unwrap();
    let ds = CropDataset::open(&ann, &dir, &opts("all", true)).unwrap();
    let e = ds.get(1, &mut Rng::new(0)).err().unwrap().to_string();
    assert!(e.contains("no usable crop"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
