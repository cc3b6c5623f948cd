//! The assembled Faster R-CNN (transform, ResNet-18-FPN, RPN, RoI heads, postprocess) against torchvision's
//! `FasterRCNN` in eval mode: final detections in original-image coordinates, boxes to 1e-2 px and scores to
//! 1e-4 (fixture: tools/make_rcnn_e2e_fixtures.py; weights are a function of their key, computed here).

use instagen::backend::cpu::CpuBackend;
use instagen::models::detector::backbone::BackboneConfig;
use instagen::models::detector::faster_rcnn::{FasterRcnn, FasterRcnnConfig};
use instagen::models::detector::roi_heads::RoiHeadsConfig;
use instagen::models::detector::transform::TransformConfig;
use serde_json::Value;

mod common;
use common::rcnn_gen::{self, uniform};

fn usz(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn resnet18_fpn_detections_match_torchvision() {
    let fx = rcnn_gen::fixture();
    let store = rcnn_gen::store(&fx);
    let cfg = FasterRcnnConfig {
        backbone: BackboneConfig { depth: 18, out_channels: usz(&fx["out_channels"]), ..Default::default() },
        roi_heads: RoiHeadsConfig {
            num_classes: usz(&fx["num_classes"]),
            representation_size: usz(&fx["representation_size"]),
            detections_per_img: usz(&fx["detections_per_img"]),
            ..Default::default()
        },
        transform: TransformConfig { min_size: vec![usz(&fx["min_size"])], max_size: usz(&fx["max_size"]), ..Default::default() },
        ..Default::default()
    };
    let mut model = FasterRcnn::new(cfg, store, || Ok(CpuBackend)).unwrap();
    let shapes: Vec<(usize, usize)> = fx["images"].as_array().unwrap().iter().map(|s| (usz(&s[0]), usz(&s[1]))).collect();
    let images: Vec<Vec<f32>> =
        shapes.iter().enumerate().map(|(i, (h, w))| (0..(h * w * 3) as u64).map(|k| (0.5 + 0.5 * uniform(&format!("image{i}"), k)) as f32).collect()).collect();
    let inputs: Vec<(&[f32], usize, usize)> = images.iter().zip(&shapes).map(|(v, (h, w))| (v.as_slice(), *h, *w)).collect();
    let t0 = std::time::Instant::now();
    let dets = model.detect_images(&inputs).unwrap();
    println!("inference of 2 images: {:.2} s", t0.elapsed().as_secs_f64());
    let thresh = 0.05f32;
    let (mut wb, mut ws) = (0f32, 0f32);
    for (i, d) in dets.iter().enumerate() {
        let want = &fx["detections"][i];
        let wboxes: Vec<f32> = want["boxes"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let wscores: Vec<f32> = want["scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let wlabels: Vec<i64> = want["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert!(wscores.len() > 100, "fixture image {i} has {} detections", wscores.len());
        let mut used = vec![false; d.scores.len()];
        // Each of torchvision's detections has one of ours: same label, box within 1e-2 px, score within 1e-4
        // (order may differ between near-equal scores). Detections within 1e-4 of the score threshold may be
        // on either side of it.
        for (k, ((wb4, ws1), wl)) in wboxes.chunks(4).zip(&wscores).zip(&wlabels).enumerate() {
            let found = (0..d.scores.len()).find(|&j| {
                !used[j]
                    && d.labels[j] == *wl
                    && (d.scores[j] - ws1).abs() <= 1e-4
                    && d.boxes[j].iter().zip(wb4).all(|(a, b)| (a - b).abs() <= 1e-2)
            });
            match found {
                Some(j) => {
                    used[j] = true;
                    ws = ws.max((d.scores[j] - ws1).abs());
                    wb = d.boxes[j].iter().zip(wb4).map(|(a, b)| (a - b).abs()).fold(wb, f32::max);
                }
                None => assert!(*ws1 - thresh <= 1e-4, "image {i}: torchvision's detection {k} (label {wl}, score {ws1}, box {wb4:?}) has no match"),
            }
        }
        for (j, u) in used.iter().enumerate() {
            assert!(*u || d.scores[j] - thresh <= 1e-4, "image {i}: our detection {j} ({:?}, score {}) is not torchvision's", d.boxes[j], d.scores[j]);
        }
        println!("image {i}: {} detections (torchvision {})", d.scores.len(), wscores.len());
    }
    println!("largest box difference {wb} px, score difference {ws}");
}
