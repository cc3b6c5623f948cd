//! CPU reference of max pooling (`Op::MaxPool2d`) and its gradient (`Op::MaxPool2dBwd`) on NHWC maps. Also what
//! the CPU engine runs: a pixel's channels are contiguous, so the inner loops are over channels; rows of the
//! output are computed in parallel.
//!
//! The gradient is a gather, not a scatter: each input pixel visits the windows that contain it (in output
//! order), finds the element each window picked, and sums the `dy` of the windows that picked it (in f64). No
//! two tasks write the same element, so the result is independent of the thread count.

use super::window;
use crate::backend::cpu::kernels::{View, cpu_err, floats, par_chunks_unit, with_f32_out};
use crate::error::Result;
use crate::ops::Op;

/// Geometry of one pooling node.
#[derive(Clone, Copy)]
struct Geom {
    h: usize,
    w: usize,
    c: usize,
    ho: usize,
    wo: usize,
    k: usize,
    s: usize,
    p: usize,
}

impl Geom {
    fn new(x: &[usize], k: usize, s: usize, p: usize) -> Geom {
        let ho = super::out_size(x[1], k, s, p).unwrap_or(0);
        let wo = super::out_size(x[2], k, s, p).unwrap_or(0);
        Geom { h: x[1], w: x[2], c: x[3], ho, wo, k, s, p }
    }

    /// Picks PyTorch's element of window (oh, ow) of image `n` for every channel: `m[c]` the max, `at[c]` the
    /// flat pixel index (`ih * w + iw`) in the image.
    fn pick(&self, xs: &[f32], n: usize, oh: usize, ow: usize, m: &mut [f32], at: &mut [usize]) {
        let (h0, h1) = window(oh, self.h, self.k, self.s, self.p);
        let (w0, w1) = window(ow, self.w, self.k, self.s, self.p);
        m.fill(f32::NEG_INFINITY);
        at.fill(h0 * self.w + w0);
        for ih in h0..h1 {
            for iw in w0..w1 {
                let pix = ih * self.w + iw;
                let row = &xs[(n * self.h * self.w + pix) * self.c..][..self.c];
                for ((mc, ac), &v) in m.iter_mut().zip(at.iter_mut()).zip(row) {
                    if v > *mc || v.is_nan() {
                        *mc = v;
                        *ac = pix;
                    }
                }
            }
        }
    }

    /// The outputs along one axis whose window holds input position `i`: `[lo, hi)`.
    fn reach(&self, i: usize, out: usize) -> (usize, usize) {
        // o * s - p <= i  and  i < o * s - p + k.
        let lo = (i + self.p + 1).saturating_sub(self.k).div_ceil(self.s);
        let hi = ((i + self.p) / self.s + 1).min(out);
        (lo, hi.max(lo))
    }
}

fn max_pool(g: Geom, x: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let xs = floats(x);
    let c = g.c;
    with_f32_out(out.dtype, out_bytes, |o| {
        let row = g.wo * c;
        if row == 0 {
            return Ok(());
        }
        par_chunks_unit(o, row, g.k * g.k * 2, |start, chunk| {
            let (mut m, mut at) = (vec![0f32; c], vec![0usize; c]);
            for (r, orow) in chunk.chunks_mut(row).enumerate() {
                let gr = start / row + r; // n * ho + oh
                let (n, oh) = (gr / g.ho, gr % g.ho);
                for ow in 0..g.wo {
                    g.pick(&xs, n, oh, ow, &mut m, &mut at);
                    orow[ow * c..][..c].copy_from_slice(&m);
                }
            }
        });
        Ok(())
    })
}

fn max_pool_bwd(g: Geom, x: &View, dy: &View, out: &View, out_bytes: &mut [u8]) -> Result<()> {
    let (xs, dys) = (floats(x), floats(dy));
    let c = g.c;
    with_f32_out(out.dtype, out_bytes, |o| {
        let row = g.w * c;
        if row == 0 {
            return Ok(());
        }
        par_chunks_unit(o, row, g.k * g.k * 4, |start, chunk| {
            let (mut m, mut at) = (vec![0f32; c], vec![0usize; c]);
            let mut acc = vec![0f64; c];
            for (r, irow) in chunk.chunks_mut(row).enumerate() {
                let gr = start / row + r; // n * h + ih
                let (n, ih) = (gr / g.h, gr % g.h);
                let (oh0, oh1) = g.reach(ih, g.ho);
                for iw in 0..g.w {
                    acc.fill(0.0);
                    let (ow0, ow1) = g.reach(iw, g.wo);
                    let pix = ih * g.w + iw;
                    for oh in oh0..oh1 {
                        for ow in ow0..ow1 {
                            g.pick(&xs, n, oh, ow, &mut m, &mut at);
                            let d = &dys[((n * g.ho + oh) * g.wo + ow) * c..][..c];
                            for ((a, &t), &dv) in acc.iter_mut().zip(at.iter()).zip(d) {
                                if t == pix {
                                    *a += dv as f64;
                                }
                            }
                        }
                    }
                    for (v, a) in irow[iw * c..][..c].iter_mut().zip(&acc) {
                        *v = *a as f32;
                    }
                }
            }
        });
        Ok(())
    })
}

/// Runs one of this family's ops (called by `backend::cpu::run_op` once it has checked the inputs, output
/// shape and byte counts).
pub fn run(op: &Op, ins: &[View], out: &View, out_bytes: &mut [u8]) -> Result<()> {
    match op {
        Op::MaxPool2d { kernel, stride, padding } => {
            max_pool(Geom::new(ins[0].shape, *kernel, *stride, *padding), &ins[0], out, out_bytes)
        }
        Op::MaxPool2dBwd { kernel, stride, padding } => {
            max_pool_bwd(Geom::new(ins[0].shape, *kernel, *stride, *padding), &ins[0], &ins[1], out, out_bytes)
        }
        _ => Err(cpu_err(format!("{} is not a pool op", op.describe()))),
    }
}
