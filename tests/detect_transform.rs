//! `models::detector::transform` against torchvision's `GeneralizedRCNNTransform`
//! (fixture: tools/make_rcnn_transform_fixtures.py, torchvision 0.29.2).

use instagen::models::detector::transform::{padded_size, postprocess_boxes, resize_boxes, resized_size, TransformConfig};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rcnn_transform/transform.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse fixture")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn resized_sizes_equal_torchvision() {
    let fx = fixture();
    let sizes = fx["sizes"].as_array().unwrap();
    assert!(sizes.len() > 50);
    for s in sizes {
        let (h, w, mn, mx) = (usize_of(&s["h"]), usize_of(&s["w"]), usize_of(&s["min_size"]), usize_of(&s["max_size"]));
        let want = (usize_of(&s["out"][0]), usize_of(&s["out"][1]));
        assert_eq!(resized_size(h, w, mn, mx), want, "{h}x{w} min {mn} max {mx}");
    }
}

#[test]
fn batches_and_boxes_equal_torchvision() {
    let fx = fixture();
    let mut worst = 0f32;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cfg = TransformConfig { min_size: vec![usize_of(&case["min_size"])], max_size: usize_of(&case["max_size"]), ..Default::default() };
        cfg.validate().unwrap();
        let mut prepared = Vec::new();
        for (i, im) in case["images"].as_array().unwrap().iter().enumerate() {
            let (h, w) = (usize_of(&im["h"]), usize_of(&im["w"]));
            let rgb: Vec<f32> = im["rgb"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as f32 / 255.0).collect();
            let p = cfg.prepare(&rgb, h, w, cfg.eval_min_size()).unwrap();
            let want = &case["image_sizes"][i];
            assert_eq!(p.size, (usize_of(&want[0]), usize_of(&want[1])), "{name} image {i} size");
            // boxes: resized as torchvision, then back
            let flat = floats(&im["boxes"]);
            let mut boxes: Vec<[f32; 4]> = flat.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
            resize_boxes(&mut boxes, (h, w), p.size);
            let got: Vec<f32> = boxes.iter().flatten().copied().collect();
            for (g, t) in got.iter().zip(floats(&case["resized_boxes"][i])) {
                assert!((g - t).abs() <= 1e-5 * t.abs().max(1.0), "{name} image {i} resized box {g} vs {t}");
            }
            postprocess_boxes(&mut boxes, p.size, (h, w));
            let back: Vec<f32> = boxes.iter().flatten().copied().collect();
            for (g, t) in back.iter().zip(floats(&case["postprocessed_boxes"][i])) {
                assert!((g - t).abs() <= 1e-5 * t.abs().max(1.0), "{name} image {i} postprocessed box {g} vs {t}");
            }
            prepared.push(p);
        }
        let batch = cfg.batch(&prepared).unwrap();
        let shape: Vec<usize> = case["batch_shape"].as_array().unwrap().iter().map(usize_of).collect();
        assert_eq!(batch.tensor.shape, shape, "{name} batch shape");
        let sizes: Vec<_> = prepared.iter().map(|p| p.size).collect();
        assert_eq!(padded_size(&sizes, 32), (shape[1], shape[2]));
        let got = batch.tensor.to_f32();
        let want = floats(&case["batch"]);
        assert_eq!(got.len(), want.len());
        for (k, (g, t)) in got.iter().zip(&want).enumerate() {
            let d = (g - t).abs();
            worst = worst.max(d);
            // f32 interpolation of values up to ~2.6: a few ulps, plus the fixture's 9 significant digits
            assert!(d <= 2e-6, "{name}: batch value {k} is {g}, torchvision {t}");
        }
    }
    println!("largest batch difference {worst:e}");
}

#[test]
fn bad_configs_and_images_are_errors() {
    let bad = TransformConfig { min_size: vec![], ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("min_size"));
    let bad = TransformConfig { image_std: [0.2, 0.0, 0.2], ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("image_std"));
    let cfg = TransformConfig::default();
    assert!(cfg.prepare(&[0.0; 5], 1, 2, 800).is_err());
    // a 1 x 10000 image with max_size 1333 rounds its height to 0
    let err = cfg.prepare(&vec![0.0; 30000], 1, 10000, 800).unwrap_err().to_string();
    assert!(err.contains("resizes to 0x1333"), "{err}");
    assert_eq!(TransformConfig { min_size: vec![640, 672, 704], ..Default::default() }.pick_min_size(0.999), 704);
}
