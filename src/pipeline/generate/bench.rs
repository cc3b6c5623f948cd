//! `instagen bench generate`: images per second with boxes on a backend, and where the time goes (text encoder,
//! UNet loop, features + head, VAE decoder, PNG encode + write), from [`Session`]'s per-part clocks over whole
//! batches after one warm-up batch. On cuda the rate is also given as a fraction of the arithmetic floor of
//! ../shared/docs/ANCHORS.md (SD v1.x at 512x512: 0.80 TFLOP per UNet call, 2.5 TFLOP per VAE decode, at 800
//! TFLOP/s dense f16), scaled by the run's steps (two UNet rows per step with guidance). That path is written
//! but was not run (no GPU where it was written).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::plan::Plan;
use super::session::{PartTimes, Session, SessionOptions};
use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::pipeline::ground::infer::PostProcess;
use crate::tensor::DType;

/// What `bench generate` is given.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub sd: PathBuf,
    /// A head folder; `None`: a random head of the paper's sizes for `sd` (`ground init --config default`).
    pub head: Option<PathBuf>,
    pub batch: usize,
    pub steps: usize,
    pub dtype: DType,
    pub min_seconds: f64,
}

/// Categories of the bench's prompts (COCO names).
const NAMES: [&str; 8] = ["person", "dog", "cat", "car", "chair", "cup", "bus", "umbrella"];

/// ANCHORS.md: SD v1.x UNet forward at 64x64 latents, batch 1 (TFLOP); VAE decode at 512x512; dense f16 ceiling.
const UNET_TFLOP: f64 = 0.80;
const VAE_TFLOP: f64 = 2.5;
const PEAK_TFLOPS: f64 = 800.0;

pub fn bench(kind: BackendKind, o: &BenchOptions) -> Result<String> {
    crate::with_backend!(kind, |mk| bench_with(mk, kind, o))
}

fn bench_with<B: Backend>(mk: impl Fn() -> Result<B>, kind: BackendKind, o: &BenchOptions) -> Result<String> {
    crate::pipeline::sample::check_bench_args(o.batch, o.min_seconds)?;
    let tmp = std::env::temp_dir().join(format!("instagen_bench_generate_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let head = match &o.head {
            Some(h) => h.clone(),
            None => {
                let h = tmp.join("head");
                crate::pipeline::ground::init("default", &o.sd, &h, 0)?;
                h
            }
        };
        let plan = Plan::new(NAMES.iter().map(|s| s.to_string()).collect(), None, 1 << 20, 2, 42)?;
        let so = SessionOptions {
            sd: o.sd.clone(),
            features_sd: None,
            head: head.clone(),
            dtype: o.dtype,
            batch: o.batch,
            steps: o.steps,
            guidance: 5.0,
            post: PostProcess { top_k: 100, score: 0.4, nms: 0.5 },
            text_tokens: plan.max_per_prompt(),
        };
        let t = Instant::now();
        let mut s = Session::open(&mk, &so)?;
        let load = t.elapsed().as_secs_f64();
        let mut next = 0u64;
        let mut batch = |s: &mut Session<B>| -> Result<usize> {
            let planned: Vec<_> = (next..next + o.batch as u64).map(|i| plan.image(i)).collect();
            next += o.batch as u64;
            let imgs = s.generate(&planned)?;
            let t = Instant::now();
            let mut boxes = 0;
            for g in &imgs {
                boxes += g.boxes.len();
                let mut png = Vec::new();
                use image::ImageEncoder;
                image::codecs::png::PngEncoder::new(&mut png)
                    .write_image(&g.rgb, g.width as u32, g.height as u32, image::ExtendedColorType::Rgb8)
                    .map_err(|e| Error::Other(format!("PNG encode: {e}")))?;
                let p = tmp.join(format!("{:08}.png", g.index));
                crate::util::files::write_atomic(&p, &png).map_err(|e| Error::io(&p, e))?;
            }
            s.times.write += t.elapsed().as_secs_f64();
            Ok(boxes)
        };
        batch(&mut s)?; // warm-up
        s.times = PartTimes::default();
        let t = Instant::now();
        let (mut images, mut boxes) = (0usize, 0usize);
        while images == 0 || t.elapsed().as_secs_f64() < o.min_seconds {
            boxes += batch(&mut s)?;
            images += o.batch;
        }
        let secs = t.elapsed().as_secs_f64();
        Ok(report(kind, o, &head, &s, load, images, boxes, secs))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

#[allow(clippy::too_many_arguments)]
fn report<B: Backend>(kind: BackendKind, o: &BenchOptions, head: &Path, s: &Session<B>, load: f64, images: usize, boxes: usize, secs: f64) -> String {
    let t = &s.times;
    let pct = |x: f64| 100.0 * x / t.total().max(1e-12);
    let rate = images as f64 / secs.max(1e-12);
    let mut out = format!(
        "generate: {} ({}x{} images), head {}, batch {}, {} steps, guidance 5, {}, backend {kind:?}\n\
         models loaded in {load:.1} s; {images} images with {boxes} boxes in {secs:.2} s after 1 warm-up batch\n\
         {rate:.3} images/s ({:.3} s per image)\n\
         time split: text {:.1}%, UNet loop {:.1}%, features + head {:.1}%, VAE decode {:.1}%, PNG encode + write {:.1}%\n",
        o.sd.display(),
        s.image_side(),
        s.image_side(),
        head.display(),
        o.batch,
        o.steps,
        o.dtype,
        1.0 / rate.max(1e-12),
        pct(t.text),
        pct(t.unet),
        pct(t.features_head),
        pct(t.vae),
        pct(t.write),
    );
    for p in &s.plans {
        out += &format!("memory {p}\n");
    }
    if kind == BackendKind::Cuda {
        // The arithmetic per image at SD v1.x's 512x512, scaled by the steps (2 UNet rows per step).
        let tflop = o.steps as f64 * 2.0 * UNET_TFLOP + VAE_TFLOP;
        let floor = PEAK_TFLOPS / tflop;
        out += &format!(
            "arithmetic floor (ANCHORS.md, SD v1.x 512x512: {tflop:.1} TFLOP per image at {PEAK_TFLOPS} TFLOP/s) = {floor:.2} images/s; this run: {:.1}% of it (meaningful for SD v1.x sizes only)\n",
            100.0 * rate / floor
        );
    }
    out
}
