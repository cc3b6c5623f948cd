//! Parity cases: attention (`kernels/attention.cu`, launcher `ops/attention/launch.rs`).
//!
//! Attention shapes reach every path: each tensor-core head dimension (D = 40, 64, 80, 160 pad to 48, 64, 80,
//! 160) with a query tail (Tq = 70: a full and a partial 64-row block) and the cross-attention key length 77
//! (a key tail in the last tile), causal self-attention (CLIP's T = 77, and T = 130 where whole key tiles are
//! skipped), the SIMT kernels for f32 and for head dimensions the tensor-core kernels do not take (D = 20),
//! the statistics pass on both paths, and the backward (dq and dk/dv kernels) plain and causal.
//!
//! Tolerances: `Tol::for_dtype` for every f32 output, every SIMT path and every gradient, with one documented
//! widening for the tensor-core forward: like flash attention, it rounds the probabilities P to the storage
//! type to feed them to the P V tensor-core product (the row sum uses the unrounded values). Each p_j then
//! carries a relative error of at most u (2^-11 for f16, 2^-8 for bf16), so the output moves by at most
//! |sum_j p_j d_j v_j| / l <= u max|v| — an absolute error that does not shrink with |o| (seen on emu: 4.9e-4
//! for f16 and 7.8e-3 for bf16 where |o| is small). Those cases draw v uniformly in [-2, 2] and add 2u to atol.
//! The backward cases take o as an input (identical on both sides) so they test the backward kernels, not the
//! forward's rounding. The statistics are f32
//! outputs computed from f16/bf16 inputs: the logsumexp is within f32 rounding, but delta = sum_d o dy is a
//! cancelling sum of D products accumulated in f32 on the device (f64 on the CPU): its absolute error is about
//! sqrt(D) 2^-24 max|o dy| (~1e-6 at D = 160 for normal inputs), so the stats cases allow atol 1e-5 (rtol
//! stays 1e-5). The f32 backward inherits that absolute error and adds its own: dS = P (dP - delta) subtracts
//! two such sums (dP = dy . v in f32), and dq, dk sum dS times q or k over up to Tk or Tq rows, so a gradient
//! the reference puts near zero (a causal first row, where dP and delta nearly cancel) is off by a few 1e-6
//! however small it is (seen on emu: up to 3.3e-6 over 120 seeds at D = 64, against atol 1e-6 of
//! `Tol::for_dtype`). The f32 backward cases therefore allow atol 1e-5 too; f16/bf16 keep their dtype atol
//! (1e-4, 1e-3), which already covers it.

use crate::parity::{Case, Gen, Tol, Work};
use crate::graph::op::Op;
use crate::graph::{Graph, NodeId};
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The kernel variant (`d48`.. or `simt`) the launcher picks for aligned tensors.
fn variant(dt: DType, d: usize) -> String {
    if dt != DType::F32 && d % 8 == 0 && d <= 160 {
        format!("d{}", [48, 64, 80, 160].into_iter().find(|&p| d <= p).unwrap())
    } else {
        "simt".into()
    }
}

#[derive(Clone, Copy)]
struct Att {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    d: usize,
    causal: bool,
}

impl Att {
    fn q(&self) -> Vec<usize> {
        vec![self.b, self.tq, self.h, self.d]
    }
    fn k(&self) -> Vec<usize> {
        vec![self.b, self.tk, self.h, self.d]
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
    fn label(&self) -> String {
        format!("B{} Tq{} Tk{} H{} D{}{}", self.b, self.tq, self.tk, self.h, self.d, if self.causal { " causal" } else { "" })
    }
    /// Forward FLOPs: q k^T and p v, 2 per multiply-add, over the unmasked scores.
    fn flops(&self) -> u64 {
        let pairs = if self.causal {
            (0..self.tq).map(|i| (i + 1).min(self.tk)).sum::<usize>()
        } else {
            self.tq * self.tk
        };
        (4 * self.b * self.h * pairs * self.d) as u64
    }
}

fn fwd_case(dt: DType, a: Att) -> Case {
    let mut tol = Tol::for_dtype(dt);
    let mut vgen = Gen::Normal;
    if variant(dt, a.d) != "simt" {
        // P rounded to the storage type before P V: |error| <= u max|v| (module comment), with |v| <= 2.
        let u = if dt == DType::F16 { 1.0 / 2048.0 } else { 1.0 / 256.0 };
        tol.atol += 2.0 * u;
        vgen = Gen::Uniform(-2.0, 2.0);
    }
    fwd_case_with(dt, a, tol, vgen)
}

fn fwd_case_with(dt: DType, a: Att, tol: Tol, vgen: Gen) -> Case {
    let kernel = format!("attention_fwd_{}_{dt}", variant(dt, a.d));
    let ins = vec![(a.q(), dt, Gen::Normal), (a.k(), dt, Gen::Normal), (a.k(), dt, vgen)];
    let (causal, scale) = (a.causal, a.scale());
    Case::new(format!("attention {dt} {}", a.label()), ins, tol, &[&kernel], move |g, x| {
        g.push(Op::Attention { causal, scale }, &[x[0], x[1], x[2]])
    })
}

/// Statistics from independent random o and dy (the op is defined for any o).
fn stats_case(dt: DType, a: Att) -> Case {
    let kernel = format!("attention_stats_fwd_{}_{dt}", variant(dt, a.d));
    let ins = vec![(a.q(), dt, Gen::Normal), (a.k(), dt, Gen::Normal), (a.q(), dt, Gen::Normal), (a.q(), dt, Gen::Normal)];
    let (causal, scale) = (a.causal, a.scale());
    // Why atol 1e-5: see the module comment (delta is a cancelling f32 sum of D products).
    let tol = Tol { atol: 1e-5, rtol: 1e-5 };
    Case::new(format!("attention_stats {dt} {}", a.label()), ins, tol, &[&kernel], move |g, x| {
        g.push(Op::AttentionStats { causal, scale }, &[x[0], x[1], x[2], x[3]])
    })
}

/// The backward as autodiff builds it, with o an input (x[4]): stats(q, k, o, dy), then the gradients.
fn bwd_graph(g: &mut Graph, x: &[NodeId], causal: bool, scale: f32) -> crate::Result<NodeId> {
    let st = g.push(Op::AttentionStats { causal, scale }, &[x[0], x[1], x[4], x[3]])?;
    g.push(Op::AttentionBwd { causal, scale }, &[x[0], x[1], x[2], x[3], st])
}

fn bwd_case(dt: DType, a: Att) -> Case {
    let kernels = [format!("attention_bwd_dq_simt_{dt}"), format!("attention_bwd_dkv_simt_{dt}")];
    // o (the last input) stands for the forward output; any o defines the same op on both sides.
    let ins = vec![
        (a.q(), dt, Gen::Normal),
        (a.k(), dt, Gen::Normal),
        (a.k(), dt, Gen::Normal),
        (a.q(), dt, Gen::Normal),
        (a.q(), dt, Gen::Uniform(-1.0, 1.0)),
    ];
    let (causal, scale) = (a.causal, a.scale());
    let ks: Vec<&str> = kernels.iter().map(|s| s.as_str()).collect();
    // Why atol 1e-5 for f32: see the module comment (cancelling f32 sums feed every gradient).
    let tol = if dt == DType::F32 { Tol { atol: 1e-5, rtol: 1e-5 } } else { Tol::for_dtype(dt) };
    Case::new(format!("attention_bwd {dt} {}", a.label()), ins, tol, &ks, move |g, x| {
        bwd_graph(g, x, causal, scale)
    })
}

/// Parity cases.
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let att = |tq, tk, d, causal| Att { b: 1, tq, tk, h: 2, d, causal };
    for dt in DTYPES {
        for d in [40, 64, 80, 160] {
            v.push(fwd_case(dt, att(70, 77, d, false)));
            v.push(stats_case(dt, att(70, 77, d, false)));
        }
        v.push(fwd_case(dt, att(77, 77, 64, true)));
        v.push(stats_case(dt, att(77, 77, 64, true)));
        v.push(fwd_case(dt, Att { b: 2, tq: 9, tk: 13, h: 3, d: 20, causal: false }));
        v.push(stats_case(dt, Att { b: 2, tq: 9, tk: 13, h: 3, d: 20, causal: true }));
        v.push(bwd_case(dt, att(33, 77, 40, false)));
        v.push(bwd_case(dt, att(40, 40, 64, true)));
        v.push(bwd_case(dt, Att { b: 2, tq: 5, tk: 9, h: 3, d: 20, causal: false }));
    }
    // Whole key tiles above the diagonal are skipped (causal, 130 keys in tiles of 64 and 32).
    v.push(fwd_case(DType::F16, att(130, 130, 40, true)));
    v.push(fwd_case(DType::BF16, att(130, 130, 160, true)));
    v
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let mut v = Vec::new();
    let sd = |tq, tk, d| Att { b: 2, tq, tk, h: 8, d, causal: false };
    // SD 1.x attention at 512x512: 64x64 latents (D 40 at 8 heads), 32x32 (D 80), 16x16 (D 160); cross-attention
    // over the 77 text tokens; CLIP-L's causal self-attention.
    let shapes = [sd(4096, 4096, 40), sd(4096, 77, 40), sd(1024, 1024, 80), sd(256, 256, 160), sd(1024, 77, 80)];
    for a in shapes {
        v.push((fwd_case(DType::F16, a), Work::Flops(a.flops())));
    }
    let clip = Att { b: 2, tq: 77, tk: 77, h: 12, d: 64, causal: true };
    v.push((fwd_case(DType::F16, clip), Work::Flops(clip.flops())));
    v.push((fwd_case(DType::BF16, sd(4096, 4096, 40)), Work::Flops(sd(4096, 4096, 40).flops())));
    // The f32 SIMT path at the 32x32 level.
    v.push((fwd_case(DType::F32, sd(1024, 1024, 80)), Work::Flops(sd(1024, 1024, 80).flops())));
    // Statistics pass (q k^T only: half the forward FLOPs) and the backward (flash-attention 2's count of 2.5
    // forwards; our two-kernel backward recomputes q k^T and dy v^T once more than that).
    for a in [sd(4096, 4096, 40), sd(1024, 1024, 80)] {
        v.push((stats_case(DType::F16, a), Work::Flops(a.flops() / 2)));
    }
    v.push((stats_case(DType::F32, sd(1024, 1024, 80)), Work::Flops(sd(1024, 1024, 80).flops() / 2)));
    for a in [sd(4096, 4096, 40), sd(1024, 1024, 80), sd(4096, 77, 40)] {
        v.push((bwd_case(DType::F16, a), Work::Flops(a.flops() / 2 * 5 + a.flops() / 2)));
    }
    v
}

/// Larger cases for the CPU fast path only (`ops::cpu_fast_cases`, too slow for the emulator): lengths that
/// cross its 64-row query and key blocks and split a head into several task ranges (so the backward adds
/// several dq partials), causal with Tq != Tk, and an odd head dimension. The forward is held to
/// `Tol::for_dtype` without the tensor-core widening (the fast path does not round P); statistics and
/// backward keep the tolerances above.
pub fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::F16] {
        for d in [40, 80] {
            for causal in [false, true] {
                let a = Att { b: 1, tq: 200, tk: 333, h: 2, d, causal };
                v.push(fwd_case_with(dt, a, Tol::for_dtype(dt), Gen::Normal));
                v.push(stats_case(dt, a));
                v.push(bwd_case(dt, a));
            }
        }
    }
    for dt in [DType::F32, DType::BF16] {
        let a = Att { b: 2, tq: 129, tk: 65, h: 3, d: 7, causal: true };
        v.push(fwd_case_with(dt, a, Tol::for_dtype(dt), Gen::Normal));
        v.push(stats_case(dt, a));
        v.push(bwd_case(dt, a));
    }
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks: cross-attention shapes (Tk != Tq, several heads and batches), causal self-attention, and
/// only some inputs on the path to the loss (the dq and dv slices alone).
fn grad_cases() -> Vec<Case> {
    let (q, kv): (&[usize], &[usize]) = (&[2, 3, 2, 4], &[2, 5, 2, 4]);
    let s: &[usize] = &[1, 4, 2, 3];
    vec![
        Case::grad("attention", &[(q, Gen::Normal), (kv, Gen::Normal), (kv, Gen::Normal)], |g, x| {
            g.push(Op::Attention { causal: false, scale: 0.6 }, &[x[0], x[1], x[2]])
        }),
        Case::grad("attention causal", &[(s, Gen::Normal), (s, Gen::Normal), (s, Gen::Normal)], |g, x| {
            g.push(Op::Attention { causal: true, scale: 0.8 }, &[x[0], x[1], x[2]])
        }),
        Case::grad("attention q and v only", &[(q, Gen::Normal), (kv, Gen::Normal)], move |g, x| {
            let k = g.fill(0.3, kv, DType::F32);
            g.push(Op::Attention { causal: false, scale: 1.0 }, &[x[0], k, x[1]])
        }),
    ]
}
