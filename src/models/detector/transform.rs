//! torchvision's `GeneralizedRCNNTransform`, on the host: normalise, resize, pad the batch to a multiple of 32,
//! scale target boxes, and (`postprocess_boxes`) scale detections back to the original image size.
//!
//! The order and arithmetic are torchvision 0.29's (checked by `tests/detect_transform.rs` against
//! `tools/make_rcnn_transform_fixtures.py`):
//! - images come as `[H, W, 3]` f32 in [0, 1] (`u8 / 255` in f32, as `to_tensor`); they are normalised
//!   first, `(x - mean) / std` in f32, then resized, so the padding is 0 in normalised units;
//! - the scale is `min(min_size / short, max_size / long)` in f64 (Python floats) and the resized size is
//!   `floor(side * scale)` in f64 (`interpolate(scale_factor=..., recompute_scale_factor=True)`);
//! - the resampling is `interpolate(mode="bilinear", align_corners=False)` at that integer size: the source
//!   coordinate is `(in / out) * (dst + 0.5) - 0.5` in f32 with one rounding (a fused multiply-add), clamped at 0, no antialiasing (so a shrink skips
//!   pixels, unlike PIL and `data::image::resize_bilinear`), and the two taps along each axis are combined as
//!   PyTorch's CPU kernel does: width first, then height;
//! - boxes are multiplied by `f32(new) / f32(old)` per axis (`resize_boxes`), in f32;
//! - the batch is zero-padded at the bottom and right to the largest height and width, each rounded up to a
//!   multiple of `size_divisible`. Graphs are built per padded size.
//!
//! In training torchvision draws the short side from `min_size` (a list: short-side jitter) per image; here the
//! caller draws (`pick_min_size`) with the sample's generator, so the choice is reproducible per (seed, epoch,
//! index).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};

/// torchvision's ImageNet statistics (`GeneralizedRCNNTransform` of every ResNet detector).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// Short-side targets; inference uses the last, training draws one per image (torchvision's `min_size`).
    pub min_size: Vec<usize>,
    pub max_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub size_divisible: usize,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig { min_size: vec![800], max_size: 1333, image_mean: IMAGENET_MEAN, image_std: IMAGENET_STD, size_divisible: 32 }
    }
}

/// One image after normalisation and resizing, before batching.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// `[h, w, 3]` normalised values.
    pub pixels: Vec<f32>,
    /// `(h, w)` after resizing (torchvision's `image_sizes`).
    pub size: (usize, usize),
    /// `(h, w)` of the input.
    pub original: (usize, usize),
}

/// A padded batch: `tensor` is `[B, Hp, Wp, 3]` f32 (NHWC).
#[derive(Clone, Debug)]
pub struct ImageBatch {
    pub tensor: HostTensor,
    pub image_sizes: Vec<(usize, usize)>,
    pub original_sizes: Vec<(usize, usize)>,
}

/// The size torchvision resizes an `h x w` image to for the short-side target `min_size` and the cap
/// `max_size`.
pub fn resized_size(h: usize, w: usize, min_size: usize, max_size: usize) -> (usize, usize) {
    let (short, long) = (h.min(w) as f64, h.max(w) as f64);
    let scale = (min_size as f64 / short).min(max_size as f64 / long);
    ((h as f64 * scale).floor() as usize, (w as f64 * scale).floor() as usize)
}

/// Source taps and weights along one axis, as PyTorch's `compute_source_index_and_lambda` (f32).
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    (0..output)
        .map(|o| {
            if input == output {
                return (o, o, 1.0, 0.0);
            }
            let scale = input as f32 / output as f32;
            // One rounding for `scale * (o + 0.5) - 0.5` (PyTorch's build contracts it to a fused multiply-add;
            // rounding twice moved a weight by one ulp of the coordinate, 3e-6 in the output).
            let src = scale.mul_add(o as f32 + 0.5, -0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `interpolate(mode="bilinear", align_corners=False)` of an `[h, w, c]` image to `[oh, ow, c]`.
pub fn interpolate_bilinear(src: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w * c, "interpolate_bilinear: {h}x{w}x{c} image has {} values", src.len());
    let ys = taps(h, oh);
    let xs = taps(w, ow);
    let mut out = vec![0f32; oh * ow * c];
    for (oy, &(y0, y1, hy0, hy1)) in ys.iter().enumerate() {
        let (r0, r1) = (&src[y0 * w * c..(y0 + 1) * w * c], &src[y1 * w * c..(y1 + 1) * w * c]);
        for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
            let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            for (ch, v) in o.iter_mut().enumerate() {
                let t0 = r0[x0 * c + ch] * wx0 + r0[x1 * c + ch] * wx1;
                let t1 = r1[x0 * c + ch] * wx0 + r1[x1 * c + ch] * wx1;
                *v = t0 * hy0 + t1 * hy1;
            }
        }
    }
    out
}

/// torchvision's `resize_boxes`: `[x0, y0, x1, y1]` scaled from an image of size `from` (h, w) to `to`.
pub fn resize_boxes(boxes: &mut [[f32; 4]], from: (usize, usize), to: (usize, usize)) {
    let ry = to.0 as f32 / from.0 as f32;
    let rx = to.1 as f32 / from.1 as f32;
    for b in boxes {
        b[0] *= rx;
        b[1] *= ry;
        b[2] *= rx;
        b[3] *= ry;
    }
}

/// `GeneralizedRCNNTransform.postprocess` for boxes: from the resized size back to the original.
pub fn postprocess_boxes(boxes: &mut [[f32; 4]], image_size: (usize, usize), original: (usize, usize)) {
    resize_boxes(boxes, image_size, original)
}

/// `[b, h, w, c]`-padded size of a batch of `(h, w)` images: each maximum rounded up to a multiple of `divisible`.
pub fn padded_size(sizes: &[(usize, usize)], divisible: usize) -> (usize, usize) {
    let d = divisible.max(1);
    let h = sizes.iter().map(|s| s.0).max().unwrap_or(0);
    let w = sizes.iter().map(|s| s.1).max().unwrap_or(0);
    (h.div_ceil(d) * d, w.div_ceil(d) * d)
}

impl TransformConfig {
    /// Checks the fields (called when a config is read): names the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Other(format!("transform config: {m}")));
        if self.min_size.is_empty() || self.min_size.contains(&0) {
            return bad(format!("min_size must be a non-empty list of positive sizes, got {:?}", self.min_size));
        }
        if self.max_size == 0 {
            return bad("max_size must be positive".into());
        }
        if self.size_divisible == 0 {
            return bad("size_divisible must be positive".into());
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s <= 0.0) || self.image_mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("image_mean {:?} / image_std {:?} must be finite with std > 0", self.image_mean, self.image_std));
        }
        Ok(())
    }

    /// The short side used at inference (`min_size[-1]`).
    pub fn eval_min_size(&self) -> usize {
        *self.min_size.last().expect("validated min_size")
    }

    /// torchvision's `torch_choice`: index `floor(u * len)` for a uniform draw `u` in [0, 1).
    pub fn pick_min_size(&self, u: f32) -> usize {
        let n = self.min_size.len();
        self.min_size[((u * n as f32) as usize).min(n - 1)]
    }

    /// Normalises and resizes one `[h, w, 3]` image in [0, 1] to the short side `min_size`.
    pub fn prepare(&self, rgb: &[f32], h: usize, w: usize, min_size: usize) -> Result<Prepared> {
        if h == 0 || w == 0 || rgb.len() != h * w * 3 {
            return Err(Error::Other(format!("transform: image of {h}x{w}x3 given {} values", rgb.len())));
        }
        let mut norm = rgb.to_vec();
        for px in norm.chunks_exact_mut(3) {
            for ((v, m), s) in px.iter_mut().zip(self.image_mean).zip(self.image_std) {
                *v = (*v - m) / s;
            }
        }
        let (oh, ow) = resized_size(h, w, min_size, self.max_size);
        if oh == 0 || ow == 0 {
            return Err(Error::Other(format!(
                "transform: a {h}x{w} image resizes to {oh}x{ow} (min_size {min_size}, max_size {})",
                self.max_size
            )));
        }
        Ok(Prepared { pixels: interpolate_bilinear(&norm, h, w, 3, oh, ow), size: (oh, ow), original: (h, w) })
    }

    /// Zero-pads prepared images into one `[B, Hp, Wp, 3]` batch.
    pub fn batch(&self, images: &[Prepared]) -> Result<ImageBatch> {
        if images.is_empty() {
            return Err(Error::Other("transform: empty batch".into()));
        }
        let sizes: Vec<_> = images.iter().map(|p| p.size).collect();
        let (hp, wp) = padded_size(&sizes, self.size_divisible);
        let mut data = vec![0f32; images.len() * hp * wp * 3];
        for (i, p) in images.iter().enumerate() {
            let (h, w) = p.size;
            for y in 0..h {
                let dst = ((i * hp + y) * wp) * 3;
                data[dst..dst + w * 3].copy_from_slice(&p.pixels[y * w * 3..(y + 1) * w * 3]);
            }
        }
        Ok(ImageBatch {
            tensor: HostTensor::from_f32(&[images.len(), hp, wp, 3], DType::F32, &data)?,
            image_sizes: sizes,
            original_sizes: images.iter().map(|p| p.original).collect(),
        })
    }
}
