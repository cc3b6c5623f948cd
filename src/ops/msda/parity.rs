//! Parity, gradient-check and bench cases of the MSDA ops (`kernels/msda.cu`, launcher `ops/msda/launch.rs`).
//!
//! Level shapes include non-square maps and 1-pixel levels; locations are drawn in [-0.2, 1.2] (some samples
//! partly or wholly in the zero padding), or on a 1/8 grid of [-0.5, 1.5], which puts samples exactly on pixel
//! centres, on the borders of the map and on the kinks of the bilinear weights.

use crate::graph::{Graph, NodeId, Op};
use crate::error::Result;
use crate::parity::{Case, Gen, Tol, Work};
use crate::tensor::DType;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// f32 outputs: sums of a few dozen weighted samples (and dot products over D), in f32 in another order than
/// the reference's f64; the location gradients carry a factor of the level size.
fn tol(dt: DType) -> Tol {
    if dt == DType::F32 { Tol { atol: 2e-5, rtol: 1e-5 } } else { Tol::for_dtype(dt) }
}

/// The location / weight gradients (f32 outputs): `attn * size * (four dot products over D)`, whose terms
/// cancel, so the rounding error of the f32 sums grows with the level size and D (about 1e-6 of size * D here).
fn loc_attn_tol(sh: &Shape) -> Tol {
    let side = sh.levels.iter().flatten().copied().max().unwrap_or(1) as f32;
    Tol { atol: (1e-6 * side * sh.d as f32).max(2e-5), rtol: 1e-5 }
}

/// The tolerance of a pass.
fn pass_tol(dt: DType, sh: &Shape, pass: Pass) -> Tol {
    if pass == Pass::BwdLocAttn { loc_attn_tol(sh) } else { tol(dt) }
}

/// One MSDA call's shape: batch, queries, heads, head width, points, levels.
#[derive(Clone, Debug)]
pub struct Shape {
    pub b: usize,
    pub q: usize,
    pub h: usize,
    pub d: usize,
    pub p: usize,
    pub levels: Vec<[usize; 2]>,
}

impl Shape {
    pub fn s(&self) -> usize {
        self.levels.iter().map(|[h, w]| h * w).sum()
    }
    pub fn value(&self) -> Vec<usize> {
        vec![self.b, self.s(), self.h, self.d]
    }
    pub fn attn(&self) -> Vec<usize> {
        vec![self.b, self.q, self.h, self.levels.len(), self.p]
    }
    pub fn loc(&self) -> Vec<usize> {
        let mut v = self.attn();
        v.push(2);
        v
    }
    pub fn dy(&self) -> Vec<usize> {
        vec![self.b, self.q, self.h * self.d]
    }
    fn label(&self) -> String {
        format!("B{} Q{} H{} D{} P{} levels {:?}", self.b, self.q, self.h, self.d, self.p, self.levels)
    }
}

/// How the locations are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Locs {
    /// Uniform in [-0.2, 1.2].
    Spread,
    /// Multiples of 1/8 in [-0.5, 1.5] (`Gen::GridB` mapped by x / 2 + 1/2): pixel centres, borders, kinks.
    Grid,
}

fn loc_input(sh: &Shape, locs: Locs) -> (Vec<usize>, DType, Gen) {
    let g = match locs {
        Locs::Spread => Gen::Uniform(-0.2, 1.2),
        Locs::Grid => Gen::GridB,
    };
    (sh.loc(), DType::F32, g)
}

fn loc_node(g: &mut Graph, x: NodeId, locs: Locs) -> Result<NodeId> {
    match locs {
        Locs::Spread => Ok(x),
        Locs::Grid => g.affine(x, 0.5, 0.5),
    }
}

/// Which op of the family a case runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pass {
    Fwd,
    BwdValue,
    BwdLocAttn,
}

/// The kernels a pass launches.
fn kernels(pass: Pass, dt: DType) -> Vec<String> {
    match pass {
        Pass::Fwd => vec![format!("msda_fwd_{dt}")],
        Pass::BwdValue => vec![format!("msda_bwd_value_part_{dt}"), format!("msda_bwd_value_fin_{dt}")],
        Pass::BwdLocAttn => vec![format!("msda_bwd_loc_attn_{dt}")],
    }
}

/// A case running one op of the family on random inputs.
pub fn case(dt: DType, sh: &Shape, locs: Locs, pass: Pass, tol: Tol) -> Case {
    let name = format!("msda {pass:?} {dt} {} locs {locs:?}", sh.label());
    let levels = sh.levels.clone();
    let loc = loc_input(sh, locs);
    let attn = (sh.attn(), dt, Gen::Normal);
    let ks = kernels(pass, dt);
    let ks: Vec<&str> = ks.iter().map(|s| s.as_str()).collect();
    match pass {
        Pass::Fwd => {
            let ins = vec![(sh.value(), dt, Gen::Normal), loc, attn];
            Case::new(name, ins, tol, &ks, move |g, x| {
                let l = loc_node(g, x[1], locs)?;
                g.push(Op::Msda { levels: levels.clone() }, &[x[0], l, x[2]])
            })
        }
        Pass::BwdValue => {
            let ins = vec![loc, attn, (sh.dy(), dt, Gen::Normal)];
            Case::new(name, ins, tol, &ks, move |g, x| {
                let l = loc_node(g, x[0], locs)?;
                g.push(Op::MsdaBwdValue { levels: levels.clone() }, &[l, x[1], x[2]])
            })
        }
        Pass::BwdLocAttn => {
            let ins = vec![(sh.value(), dt, Gen::Normal), loc, attn, (sh.dy(), dt, Gen::Normal)];
            Case::new(name, ins, tol, &ks, move |g, x| {
                let l = loc_node(g, x[1], locs)?;
                g.push(Op::MsdaBwdLocAttn { levels: levels.clone() }, &[x[0], l, x[2], x[3]])
            })
        }
    }
}

const PASSES: [Pass; 3] = [Pass::Fwd, Pass::BwdValue, Pass::BwdLocAttn];

/// Parity cases (small, for the emulator).
fn kernel_cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Non-square levels, 1-pixel levels, odd head widths; one with D over a warp's 32 lanes.
    let shapes = [
        (Shape { b: 2, q: 7, h: 3, d: 5, p: 3, levels: vec![[3, 5], [1, 1], [2, 1], [4, 4]] }, Locs::Spread),
        (Shape { b: 1, q: 5, h: 2, d: 8, p: 2, levels: vec![[4, 4], [2, 4], [1, 2]] }, Locs::Grid),
        (Shape { b: 1, q: 3, h: 1, d: 37, p: 1, levels: vec![[5, 3]] }, Locs::Spread),
    ];
    for dt in DTYPES {
        for (sh, locs) in &shapes {
            for pass in PASSES {
                v.push(case(dt, sh, *locs, pass, pass_tol(dt, sh, pass)));
            }
        }
    }
    v
}

/// Larger cases for the CPU fast path (`tests/cpu_fast.rs`): the head's 8 x 32 with four levels, many queries.
pub fn cpu_fast_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let big = Shape { b: 2, q: 50, h: 8, d: 32, p: 4, levels: vec![[16, 16], [8, 8], [4, 4], [2, 2]] };
    let odd = Shape { b: 1, q: 33, h: 3, d: 7, p: 3, levels: vec![[9, 5], [1, 1], [3, 7]] };
    for dt in [DType::F32, DType::F16] {
        for (sh, locs) in [(&big, Locs::Spread), (&odd, Locs::Grid)] {
            for pass in PASSES {
                v.push(case(dt, sh, locs, pass, pass_tol(dt, sh, pass)));
            }
        }
    }
    v
}

/// The grounding head's deformable attention: 4 levels (64^2 .. 8^2, 512 px images), 8 heads of 32, 4 points,
/// 900 decoder queries.
pub fn head_shape(b: usize) -> Shape {
    Shape { b, q: 900, h: 8, d: 32, p: 4, levels: vec![[64, 64], [32, 32], [16, 16], [8, 8]] }
}

pub fn bench_cases() -> Vec<(Case, Work)> {
    let sh = head_shape(2);
    let dt = DType::F16;
    let es = dt.size() as u64;
    let value = sh.value().iter().product::<usize>() as u64 * es;
    let samples = sh.attn().iter().product::<usize>() as u64;
    let out = sh.dy().iter().product::<usize>() as u64 * es;
    // Bytes: value (or dvalue) once, locations, weights, output (or dy) once: the least traffic possible.
    let io = value + samples * (8 + es) + out;
    let mut v = Vec::new();
    for pass in PASSES {
        let extra = if pass == Pass::BwdLocAttn { value + samples * 12 } else { 0 };
        v.push((case(dt, &sh, Locs::Spread, pass, pass_tol(dt, &sh, pass)), Work::Bytes(io + extra)));
    }
    v
}

/// Parity cases and gradient checks.
pub fn cases() -> Vec<Case> {
    let mut v = kernel_cases();
    v.extend(grad_cases());
    v
}

/// Gradient checks of value, locations and weights. The locations are `x * 3/8 + 1/2` of odd multiples of 1/8
/// (`Gen::GridA`), i.e. odd multiples of 1/64 in [-0.2, 1.2]: on levels of 1, 2, 4 or 8 pixels the bilinear
/// kinks lie at multiples of 1/16, so every sample is at least 1/8 pixel from a kink and the finite-difference
/// steps (0.0375 pixel at most) never cross one.
fn grad_cases() -> Vec<Case> {
    let shapes = [
        Shape { b: 1, q: 3, h: 2, d: 3, p: 2, levels: vec![[2, 4], [1, 1], [4, 2]] },
        Shape { b: 2, q: 2, h: 1, d: 2, p: 3, levels: vec![[8, 4], [2, 2]] },
    ];
    shapes
        .into_iter()
        .map(|sh| {
            let levels = sh.levels.clone();
            let ins: [(&[usize], Gen); 3] = [(&sh.value(), Gen::Normal), (&sh.loc(), Gen::GridA), (&sh.attn(), Gen::Normal)];
            Case::grad(format!("msda {}", sh.label()), &ins, move |g, x| {
                let loc = g.affine(x[1], 0.375, 0.5)?;
                crate::nn::msda::msda(g, x[0], loc, x[2], &levels)
            })
        })
        .collect()
}
