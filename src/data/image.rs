//! Image helpers for data loading: PIL-compatible bilinear resampling of a sub-rectangle, flips, scaling to
//! [-1, 1].
//!
//! [`resize_bilinear`] is the separable resampling of PIL's `Image.resize(size, BILINEAR, box=...)`: for each
//! output pixel the triangle filter is centred on `box0 + (i + 0.5) * scale` and, when shrinking
//! (`scale > 1`), stretched by `scale` so every input pixel under the footprint contributes (antialiasing);
//! weights are normalised to sum 1, input pixels outside the image get no weight. The horizontal pass runs
//! first, then the vertical one, as in PIL. The arithmetic is f64 accumulation of f32 pixels (PIL's 32-bit
//! float mode `F`); PIL's 8-bit mode rounds to integers after each pass, which this does not.

/// Filter weights of one output pixel along one axis: the first input index and the weights that follow.
struct Taps {
    first: usize,
    weights: Vec<f64>,
}

/// PIL's coefficient table for resampling the interval `[in0, in1)` of an axis of length `in_size` to
/// `out_size` pixels with the triangle (bilinear) filter.
fn taps(in_size: usize, in0: f64, in1: f64, out_size: usize) -> Vec<Taps> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let inv = 1.0 / filterscale;
    (0..out_size)
        .map(|i| {
            let center = in0 + (i as f64 + 0.5) * scale;
            // PIL truncates toward zero (a C cast), then clamps.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let mut weights: Vec<f64> =
                (lo..hi.max(lo)).map(|x| (1.0 - ((x as f64 - center + 0.5) * inv).abs()).max(0.0)).collect();
            let sum: f64 = weights.iter().sum();
            if sum != 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            Taps { first: lo, weights }
        })
        .collect()
}

/// Resamples the rectangle `bx = [x0, y0, x1, y1]` (pixels, fractional allowed, inside the image) of an
/// interleaved `[h, w, c]` image to `[out_h, out_w, c]`, as PIL's `resize((out_w, out_h), BILINEAR, box=bx)`.
pub fn resize_bilinear(src: &[f32], w: usize, h: usize, c: usize, bx: [f64; 4], out_w: usize, out_h: usize) -> Vec<f32> {
    assert_eq!(src.len(), w * h * c, "resize_bilinear: {} values for a {w}x{h}x{c} image", src.len());
    let tx = taps(w, bx[0], bx[2], out_w);
    let ty = taps(h, bx[1], bx[3], out_h);
    // Horizontal pass, only over the rows the vertical pass reads.
    let row0 = ty.iter().map(|t| t.first).min().unwrap_or(0);
    let row1 = ty.iter().map(|t| t.first + t.weights.len()).max().unwrap_or(0).max(row0);
    let mut mid = vec![0f32; (row1 - row0) * out_w * c];
    let mut acc = vec![0f64; c];
    for y in row0..row1 {
        let src_row = &src[y * w * c..(y + 1) * w * c];
        for (ox, t) in tx.iter().enumerate() {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (k, wt) in t.weights.iter().enumerate() {
                let px = &src_row[(t.first + k) * c..(t.first + k + 1) * c];
                for ch in 0..c {
                    acc[ch] += px[ch] as f64 * wt;
                }
            }
            let o = ((y - row0) * out_w + ox) * c;
            for ch in 0..c {
                mid[o + ch] = acc[ch] as f32;
            }
        }
    }
    // Vertical pass.
    let mut out = vec![0f32; out_h * out_w * c];
    let row = out_w * c;
    let mut acc = vec![0f64; row];
    for (oy, t) in ty.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, wt) in t.weights.iter().enumerate() {
            let r = &mid[(t.first + k - row0) * row..(t.first + k - row0 + 1) * row];
            for (a, v) in acc.iter_mut().zip(r) {
                *a += *v as f64 * wt;
            }
        }
        for (o, a) in out[oy * row..(oy + 1) * row].iter_mut().zip(&acc) {
            *o = *a as f32;
        }
    }
    out
}

/// Mirrors an interleaved `[h, w, c]` image left to right, in place.
pub fn flip_horizontal(img: &mut [f32], w: usize, h: usize, c: usize) {
    for y in 0..h {
        let r = &mut img[y * w * c..(y + 1) * w * c];
        for x in 0..w / 2 {
            for ch in 0..c {
                r.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

/// 8-bit RGB as f32 values 0..=255, interleaved `[h, w, 3]`.
pub fn rgb8_to_f32(img: &image::RgbImage) -> Vec<f32> {
    img.as_raw().iter().map(|&v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked: halving 4 pixels [0, 10, 20, 30] to 2 uses scale 2, footprint +-2 px around centres 1 and
    /// 3, triangle weights (0.25, 0.75, 0.75, 0.25) / 2 clamped at the border.
    #[test]
    fn halving_a_row_matches_hand_computation() {
        let src = [0.0, 10.0, 20.0, 30.0];
        let out = resize_bilinear(&src, 4, 1, 1, [0.0, 0.0, 4.0, 1.0], 2, 1);
        // Output 0: centre 1, taps x = 0..3 at distances 0.5, 0.5, 1.5 (scaled by 1/2): 0.75, 0.75, 0.25.
        let w0 = [0.75, 0.75, 0.25];
        let e0 = (w0[0] * 0.0 + w0[1] * 10.0 + w0[2] * 20.0) / (w0.iter().sum::<f64>());
        // Output 1: centre 3, taps x = 1..4: 0.25, 0.75, 0.75.
        let e1 = (0.25 * 10.0 + 0.75 * 20.0 + 0.75 * 30.0) / 1.75;
        assert!((out[0] as f64 - e0).abs() < 1e-5, "{out:?} vs {e0}");
        assert!((out[1] as f64 - e1).abs() < 1e-5, "{out:?} vs {e1}");
    }

    #[test]
    fn identity_box_is_identity_and_flip_mirrors() {
        let src: Vec<f32> = (0..5 * 3 * 2).map(|v| (v * 7 % 11) as f32).collect();
        let out = resize_bilinear(&src, 5, 3, 2, [0.0, 0.0, 5.0, 3.0], 5, 3);
        assert_eq!(out, src);
        let mut f = src.clone();
        flip_horizontal(&mut f, 5, 3, 2);
        assert_eq!(&f[0..2], &src[8..10]);
        flip_horizontal(&mut f, 5, 3, 2);
        assert_eq!(f, src);
    }
}
