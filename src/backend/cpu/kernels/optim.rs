//! The optimiser steps (AdamW, SGD), the weight EMA, gradient accumulation and the sum of squares (for the
//! gradient norm).

use rayon::prelude::*;

use super::{COST_COPY, COST_TRANSCENDENTAL, View, decode, decode_into, encode, floats, worth_parallel};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::DType;

/// Elements per task, and per partial sum in [`sum_squares`] (fixed, so results do not depend on threads).
const CHUNK: usize = 1 << 14;

/// The per-step constants of the update.
#[derive(Clone, Copy)]
struct Step {
    decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step_size: f64,
    bc2_sqrt: f64,
    grad_scale: f64,
}

impl Step {
    /// One element: `p` is the f32 weight, `m` and `v` the moments, `g` the raw gradient.
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let g = g as f64 * self.grad_scale;
        *m = (self.beta1 * *m as f64 + (1.0 - self.beta1) * g) as f32;
        *v = (self.beta2 * *v as f64 + (1.0 - self.beta2) * g * g) as f32;
        let denom = (*v as f64).sqrt() / self.bc2_sqrt + self.eps;
        *p = (*p as f64 * self.decay - self.step_size * *m as f64 / denom) as f32;
    }

    fn run(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let n = p.len();
        if !worth_parallel(n * COST_TRANSCENDENTAL) {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                self.apply(p, m, v, g);
            }
            return;
        }
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    self.apply(p, m, v, g);
                }
            });
    }
}

/// PyTorch AdamW (`torch.optim.AdamW`): with g = grad * grad_scale,
/// p <- p - lr*wd*p; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
/// p <- p - lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps).
///
/// With `master`, the f32 master weights are updated and `param` (stored as `pdtype`) is rewritten from them;
/// without, `param` is updated through f32 (in place when it is aligned f32 storage). `step` counts from 1
/// (0 is treated as 1). The number of elements updated is the smallest of the buffers' lengths.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    param: &mut [u8],
    pdtype: DType,
    grad: &[u8],
    gdtype: DType,
    m: &mut [f32],
    v: &mut [f32],
    master: Option<&mut [f32]>,
    cfg: &AdamWConfig,
    step: u32,
    grad_scale: f32,
) {
    let (ps, gs) = (pdtype.size(), gdtype.size());
    let mut n = m.len().min(v.len()).min(param.len() / ps).min(grad.len() / gs);
    if let Some(w) = &master {
        n = n.min(w.len());
    }
    let t = step.max(1) as i32;
    let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
    let lr = cfg.lr as f64;
    let st = Step {
        decay: 1.0 - lr * cfg.weight_decay as f64,
        beta1: b1,
        beta2: b2,
        eps: cfg.eps as f64,
        step_size: lr / (1.0 - b1.powi(t)),
        bc2_sqrt: (1.0 - b2.powi(t)).sqrt(),
        grad_scale: grad_scale as f64,
    };
    let shape = [n];
    let g = floats(&View { shape: &shape, dtype: gdtype, data: &grad[..n * gs] });
    let (m, v, param) = (&mut m[..n], &mut v[..n], &mut param[..n * ps]);
    match master {
        Some(w) => {
            let w = &mut w[..n];
            st.run(w, m, v, &g);
            encode(pdtype, w, param);
        }
        None => {
            if pdtype == DType::F32
                && let Ok(p) = bytemuck::try_cast_slice_mut::<u8, f32>(param)
            {
                st.run(p, m, v, &g);
                return;
            }
            let mut p = decode(pdtype, param);
            st.run(&mut p, m, v, &g);
            encode(pdtype, &p, param);
        }
    }
}

/// PyTorch SGD (`torch.optim.SGD`) in f32: with g = grad * grad_scale, g += wd * p; with momentum mu,
/// buf = g on the first step, else buf = mu buf + (1 - dampening) g, and g = g + mu buf (Nesterov) or buf;
/// p -= lr g. `master` and the parameter storage as in [`adamw_update`].
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    param: &mut [u8],
    pdtype: DType,
    grad: &[u8],
    gdtype: DType,
    mut momentum: Option<&mut [f32]>,
    master: Option<&mut [f32]>,
    cfg: &SgdConfig,
    first: bool,
    grad_scale: f32,
) {
    let n = (param.len() / pdtype.size()).min(grad.len() / gdtype.size());
    let mut g = vec![0f32; n];
    decode_into(gdtype, &grad[..n * gdtype.size()], &mut g);
    let one_minus_damp = 1.0 - cfg.dampening;
    let mut step = |w: &mut [f32]| {
        for i in 0..n {
            let mut gi = g[i] * grad_scale;
            if cfg.weight_decay != 0.0 {
                gi += cfg.weight_decay * w[i];
            }
            if let Some(buf) = momentum.as_deref_mut()
                && cfg.momentum != 0.0
            {
                buf[i] = if first { gi } else { cfg.momentum * buf[i] + one_minus_damp * gi };
                gi = if cfg.nesterov { gi + cfg.momentum * buf[i] } else { buf[i] };
            }
            w[i] -= cfg.lr * gi;
        }
    };
    let param = &mut param[..n * pdtype.size()];
    match master {
        Some(w) => {
            step(&mut w[..n]);
            encode(pdtype, &w[..n], param);
        }
        None => {
            let mut w = decode(pdtype, param);
            step(&mut w[..]);
            encode(pdtype, &w[..], param);
        }
    }
}

/// `ema = decay * ema + (1 - decay) * src` in f32, `src` stored as `sdtype`.
pub fn ema_update(ema: &mut [f32], src: &[u8], sdtype: DType, decay: f32) {
    let n = ema.len().min(src.len() / sdtype.size());
    let mut x = vec![0f32; n];
    decode_into(sdtype, &src[..n * sdtype.size()], &mut x);
    let rest = (1.0 - decay as f64) as f32;
    for (e, &x) in ema[..n].iter_mut().zip(&x) {
        *e = decay * *e + rest * x;
    }
}

/// `acc = grad` (`first`) or `acc += grad`, in f32.
pub fn accumulate(acc: &mut [f32], grad: &[u8], gdtype: DType, first: bool) {
    let n = acc.len().min(grad.len() / gdtype.size());
    let mut g = vec![0f32; n];
    decode_into(gdtype, &grad[..n * gdtype.size()], &mut g);
    for (a, &g) in acc[..n].iter_mut().zip(&g) {
        *a = if first { g } else { *a + g };
    }
}

/// Sum of squares of a tensor's elements (decoded to f32), accumulated in f64.
pub fn sum_squares(data: &[u8], dtype: DType) -> f64 {
    let es = dtype.size();
    let n = data.len() / es;
    let part = |c: usize| -> f64 {
        let (s, e) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        let mut buf = vec![0f32; e - s];
        decode_into(dtype, &data[s * es..e * es], &mut buf);
        let mut acc = [0f64; 4];
        let mut quads = buf.chunks_exact(4);
        for q in &mut quads {
            for (a, &x) in acc.iter_mut().zip(q) {
                *a += x as f64 * x as f64;
            }
        }
        let tail: f64 = quads.remainder().iter().map(|&x| x as f64 * x as f64).sum();
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    };
    let parts = n.div_ceil(CHUNK);
    let sums: Vec<f64> = if !worth_parallel(n * COST_COPY) {
        (0..parts).map(part).collect()
    } else {
        (0..parts).into_par_iter().map(part).collect()
    };
    sums.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::kernels::test_util::{bytes_of, rand_vals};

    /// The update written out for one scalar, in f64, following the documented formula literally.
    #[allow(clippy::too_many_arguments)]
    fn scalar(p: &mut f64, m: &mut f64, v: &mut f64, g: f64, cfg: &AdamWConfig, step: i32, scale: f64) {
        let (lr, b1, b2, eps, wd) =
            (cfg.lr as f64, cfg.beta1 as f64, cfg.beta2 as f64, cfg.eps as f64, cfg.weight_decay as f64);
        let g = g * scale;
        *p -= lr * wd * *p;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let mhat = *m / (1.0 - b1.powi(step));
        let vhat = *v / (1.0 - b2.powi(step));
        *p -= lr * mhat / (vhat.sqrt() + eps);
    }

    #[test]
    fn adamw_matches_scalar_formula_for_three_steps() {
        let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
        let n = 40_000; // large enough for the parallel path
        let p0 = rand_vals(n, 51);
        for (pdtype, use_master) in [(DType::F32, false), (DType::BF16, true), (DType::F16, true), (DType::F32, true)] {
            let mut param = bytes_of(pdtype, &p0);
            let mut master: Vec<f32> = {
                let mut v = vec![0f32; n];
                crate::tensor::decode_f32(pdtype, &param, &mut v);
                v
            };
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let mut refp: Vec<f64> = master.iter().map(|&x| x as f64).collect();
            let (mut rm, mut rv) = (vec![0f64; n], vec![0f64; n]);
            for step in 1..=3u32 {
                let g = rand_vals(n, 60 + step as u64);
                let gb = bytes_of(DType::F16, &g);
                let gr = crate::backend::cpu::kernels::test_util::round_to(DType::F16, &g);
                let mw = if use_master { Some(&mut master[..]) } else { None };
                adamw_update(&mut param, pdtype, &gb, DType::F16, &mut m, &mut v, mw, &cfg, step, 0.5);
                for i in 0..n {
                    scalar(&mut refp[i], &mut rm[i], &mut rv[i], gr[i] as f64, &cfg, step as i32, 0.5);
                }
            }
            let mut got = vec![0f32; n];
            crate::tensor::decode_f32(pdtype, &param, &mut got);
            let tol = if pdtype == DType::F32 { 1e-6 } else { 1e-2 };
            for i in 0..n {
                assert!(
                    (got[i] as f64 - refp[i]).abs() <= tol * refp[i].abs().max(1e-1),
                    "{pdtype} [{i}]: {} vs {}",
                    got[i],
                    refp[i]
                );
                assert!((m[i] as f64 - rm[i]).abs() <= 1e-6 * rm[i].abs().max(1e-2), "m {} vs {}", m[i], rm[i]);
                assert!((v[i] as f64 - rv[i]).abs() <= 1e-6 * rv[i].abs().max(1e-6));
                if use_master {
                    assert!((master[i] as f64 - refp[i]).abs() <= 1e-6 * refp[i].abs().max(1e-1));
                }
            }
        }
    }

    #[test]
    fn sum_squares_f64() {
        let x = rand_vals(50_000, 71);
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = sum_squares(&bytes_of(DType::F32, &x), DType::F32);
        assert!((got - want).abs() <= 1e-9 * want);
        // Unaligned f32 bytes decode too.
        let mut b = vec![0u8; 1];
        b.extend(bytes_of(DType::F32, &x[..10]));
        let want: f64 = x[..10].iter().map(|&v| v as f64 * v as f64).sum();
        assert!((sum_squares(&b[1..], DType::F32) - want).abs() <= 1e-12);
    }
}
