//! Kernel parity: every op family's cases (`ops/<family>/parity.rs`), run on a backend (`emu` in CI, `cuda` on
//! a GPU) and compared with the CPU reference on fresh random inputs, with the backend's activation arena
//! poisoned (NaN bytes) before each run so unwritten elements show. Cases flagged `gradcheck` are the
//! finite-difference gradient checks of `tests/gradcheck.rs` (CPU backend, f32).
//!
//! Used by `tests/kernel_parity.rs` (emu), `tests/gradcheck.rs`, `instagen parity --backend cuda` (the GPU
//! check script) and the kernel benches (the same graphs at bench shapes).

pub mod adamw;

use crate::backend::cpu::CpuReference;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{autodiff, Graph, NodeId};
use crate::runtime::Executor;
use crate::optim::AdamWConfig;
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// How a case's inputs are drawn.
#[derive(Clone, Copy, Debug)]
pub enum Gen {
    /// Standard normal.
    Normal,
    /// Uniform in [lo, hi).
    Uniform(f32, f32),
    /// Integers in [0, n) (for integer inputs and casts).
    Index(usize),
    /// |x| in [0.2, 1.5], either sign: away from the kinks of relu and abs (gradient checks).
    AwayFromZero,
    /// Multiples of 1/64 in [-2, 2]: exact in f16, so a cast round trip is exact under a step of 1/64.
    F16Grid,
    /// Odd multiples of 1/8 in [-2, 2]; never within 1/8 of a [`Gen::GridB`] value (no ties in max/min).
    GridA,
    /// Multiples of 1/4 in [-2, 2].
    GridB,
    /// Distinct values 0.07 apart, shuffled: no two within 0.02 (no ties in a reduce-max under a step of 0.01).
    Distinct,
    /// Valid `x1, y1, x2, y2` boxes (last axis 4) inside a `size` x `size` image, sides 1% to 50% of `size`.
    Boxes(f32),
    /// RoIs `batch_index, x1, y1, x2, y2` (last axis 5): a batch index below `images`, then a box as in `Boxes`.
    Rois { images: usize, size: f32 },
}

/// Accept `|got - ref| <= atol + rtol * |ref|` elementwise (NaN or inf where the reference is finite fails).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

impl Tol {
    /// The default for a storage dtype: f32 paths 1e-5 relative; f16 / bf16 allow one unit in the last
    /// place of the stored result (both sides compute in f32 and round once, so results may straddle a
    /// rounding boundary), 2^-10 and 2^-7 relative.
    pub fn for_dtype(d: DType) -> Tol {
        match d {
            DType::F16 => Tol { atol: 1e-4, rtol: 1.0 / 1024.0 },
            DType::BF16 => Tol { atol: 1e-3, rtol: 1.0 / 128.0 },
            _ => Tol { atol: 1e-6, rtol: 1e-5 },
        }
    }
}

/// The work of one run of a bench case, for rates (GB/s or TFLOP/s).
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Bytes read plus bytes written.
    Bytes(u64),
    /// Floating-point operations (a multiply-add counts 2).
    Flops(u64),
}

/// Build the graph of a case from its input nodes; returns the node compared.
pub type Build = Box<dyn Fn(&mut Graph, &[NodeId]) -> Result<NodeId> + Send + Sync>;

pub struct Case {
    /// e.g. `softmax f16 [3, 37] axis 1`.
    pub name: String,
    pub inputs: Vec<(Vec<usize>, DType, Gen)>,
    pub build: Build,
    pub tol: Tol,
    /// Kernels this case must launch (checked against what the backend launched).
    pub kernels: Vec<String>,
    /// Run as a parity case (backend against the CPU reference).
    pub parity: bool,
    /// Run as a finite-difference gradient check of every input and parameter (`tests/gradcheck.rs`).
    pub gradcheck: bool,
}

impl Case {
    pub fn new(
        name: impl Into<String>,
        inputs: Vec<(Vec<usize>, DType, Gen)>,
        tol: Tol,
        kernels: &[&str],
        build: impl Fn(&mut Graph, &[NodeId]) -> Result<NodeId> + Send + Sync + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            inputs,
            build: Box::new(build),
            tol,
            kernels: kernels.iter().map(|k| k.to_string()).collect(),
            parity: true,
            gradcheck: false,
        }
    }

    /// A gradient-check case only (not a parity case): f32 inputs drawn by `inputs`' generators, the loss
    /// `sum(build(inputs) * r)` differentiated w.r.t. every input and parameter and compared with central
    /// differences on the CPU backend.
    pub fn grad(
        name: impl Into<String>,
        inputs: &[(&[usize], Gen)],
        build: impl Fn(&mut Graph, &[NodeId]) -> Result<NodeId> + Send + Sync + 'static,
    ) -> Case {
        let inputs = inputs.iter().map(|(s, g)| (s.to_vec(), DType::F32, *g)).collect();
        Case { parity: false, gradcheck: true, ..Case::new(name, inputs, Tol::for_dtype(DType::F32), &[], build) }
    }

    /// Also run this case as a gradient check (its inputs must be f32).
    pub fn with_gradcheck(mut self) -> Case {
        self.gradcheck = true;
        self
    }
}

/// Every family's parity cases.
pub fn all_cases() -> Vec<Case> {
    crate::ops::cases().into_iter().filter(|c| c.parity).collect()
}

/// Every family's gradient-check cases.
pub fn gradcheck_cases() -> Vec<Case> {
    crate::ops::cases().into_iter().filter(|c| c.gradcheck).collect()
}

/// The outcome of one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub elements: usize,
    /// Largest `|got - ref| / (atol + rtol * |ref|)`: <= 1 passes.
    pub worst_ratio: f32,
    pub max_abs_err: f32,
    pub passed: bool,
    pub seconds: f64,
}

pub fn random_tensor(shape: &[usize], dtype: DType, g: Gen, rng: &mut Rng) -> Result<HostTensor> {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = match g {
        Gen::Normal => rng.normal_vec(n, 1.0),
        Gen::Uniform(lo, hi) => rng.uniform_vec(n, lo, hi),
        Gen::Index(k) => (0..n).map(|_| rng.below(k) as f32).collect(),
        Gen::Distinct => {
            let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.07 - 0.035 * n as f32).collect();
            for i in (1..n).rev() {
                v.swap(i, rng.below(i + 1));
            }
            v
        }
        Gen::AwayFromZero => (0..n).map(|_| rng.range(0.2, 1.5) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 }).collect(),
        Gen::F16Grid => (0..n).map(|_| (rng.range(-2.0, 2.0) * 64.0).round() / 64.0).collect(),
        Gen::GridA => (0..n).map(|_| (rng.range(-2.0, 2.0) * 4.0).floor() / 4.0 + 0.125).collect(),
        Gen::GridB => (0..n).map(|_| (rng.range(-2.0, 2.0) * 4.0).round() / 4.0).collect(),
        Gen::Boxes(size) => random_boxes(n / 4, size, rng).concat(),
        Gen::Rois { images, size } => {
            let boxes = random_boxes(n / 5, size, rng);
            boxes.iter().flat_map(|b| [rng.below(images) as f32, b[0], b[1], b[2], b[3]]).collect()
        }
    };
    if vals.len() != n {
        return Err(crate::Error::Other(format!("{g:?} cannot fill shape {shape:?} (last axis must be 4 / 5)")));
    }
    let t = HostTensor::from_f32(shape, DType::F32, &vals)?;
    Ok(t.cast(dtype))
}

fn random_boxes(n: usize, size: f32, rng: &mut Rng) -> Vec<[f32; 4]> {
    (0..n)
        .map(|_| {
            let mut u = |lo: f32, hi: f32| lo + (hi - lo) * rng.uniform();
            let (w, h) = (u(0.01, 0.5) * size, u(0.01, 0.5) * size);
            let (x1, y1) = (u(0.0, size - w), u(0.0, size - h));
            [x1, y1, x1 + w, y1 + h]
        })
        .collect()
}

/// Compare `got` with `want` under `tol`: (worst ratio, max abs error).
pub fn compare(got: &[f32], want: &[f32], tol: Tol) -> (f32, f32) {
    let mut worst = 0f32;
    let mut max_abs = 0f32;
    for (g, w) in got.iter().zip(want) {
        let err = (g - w).abs();
        let ratio = if w.is_finite() {
            if g.is_finite() { err / (tol.atol + tol.rtol * w.abs()) } else { f32::INFINITY }
        } else if g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) {
            0.0
        } else {
            f32::INFINITY
        };
        worst = worst.max(ratio);
        if err.is_finite() {
            max_abs = max_abs.max(err);
        }
    }
    (worst, max_abs)
}

/// Run `case` on `backend` and on the CPU reference with the same fresh inputs (from `seed`).
pub fn run_case<B: Backend>(case: &Case, backend: B, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let mut g = Graph::new();
    let mut names = Vec::new();
    let mut ids = Vec::new();
    for (i, (shape, dtype, _)) in case.inputs.iter().enumerate() {
        names.push(format!("in{i}"));
        ids.push(g.input(&names[i], shape, *dtype)?);
    }
    let out = (case.build)(&mut g, &ids)?;
    g.mark_output(out);
    let mut rng = Rng::new(seed);
    let feed: Vec<HostTensor> =
        case.inputs.iter().map(|(s, d, how)| random_tensor(s, *d, *how, &mut rng)).collect::<Result<_>>()?;
    let feed_ref: Vec<(&str, &HostTensor)> = names.iter().map(|n| n.as_str()).zip(feed.iter()).collect();
    let store = ParamStore::new();

    let mut reference = Executor::new(CpuReference, g.clone(), &store)?;
    reference.run(&feed_ref)?;
    let want = reference.get(out)?.to_f32();

    let mut ex = Executor::new(backend, g, &store)?;
    ex.poison_arena()?;
    ex.run(&feed_ref)?;
    let got = ex.get(out)?.to_f32();
    let (worst, max_abs) = compare(&got, &want, case.tol);
    Ok(Outcome {
        name: case.name.clone(),
        elements: want.len(),
        worst_ratio: worst,
        max_abs_err: max_abs,
        passed: worst <= 1.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// AdamW parity: three steps on f32 and f16 parameters with gradients from `loss = sum(w * x)`, parameters
/// compared with the CPU backend's after each step.
pub fn run_adamw<B: Backend, F: Fn() -> B>(make: F, seed: u64) -> Result<Outcome> {
    let start = std::time::Instant::now();
    let mut worst = 0f32;
    let mut max_abs = 0f32;
    let mut elements = 0;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let shape = [37, 5];
        let mut g = Graph::new();
        let x = g.input("x", &shape, dtype)?;
        let w = g.param("w", &shape, dtype)?;
        let y = g.mul(w, x)?;
        let y = g.unary(crate::graph::UnaryOp::Square, y)?;
        let loss = g.sum_all(y)?;
        let grads = autodiff::param_grads(&mut g, loss)?;
        let mut rng = Rng::new(seed ^ dtype.size() as u64);
        let mut store = ParamStore::new();
        store.insert("w", random_tensor(&shape, dtype, Gen::Normal, &mut rng)?);
        let xt = random_tensor(&shape, dtype, Gen::Normal, &mut rng)?;
        let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..AdamWConfig::default() };
        let mut a = Executor::new(CpuReference, g.clone(), &store)?;
        let mut b = Executor::new(make(), g, &store)?;
        for _ in 0..3 {
            a.run(&[("x", &xt)])?;
            b.run(&[("x", &xt)])?;
            a.adamw_step(&grads, &cfg, Some(1.0))?;
            b.adamw_step(&grads, &cfg, Some(1.0))?;
            let (want, got) = (a.param("w")?.to_f32(), b.param("w")?.to_f32());
            let (r, m) = compare(&got, &want, Tol::for_dtype(dtype));
            worst = worst.max(r);
            max_abs = max_abs.max(m);
            elements += want.len();
        }
    }
    Ok(Outcome {
        name: "adamw f32/f16/bf16 [37, 5], 3 steps".into(),
        elements,
        worst_ratio: worst,
        max_abs_err: max_abs,
        passed: worst <= 1.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One line per outcome, for the CLI and the GPU report.
pub fn format_outcomes(outcomes: &[Outcome]) -> String {
    let mut s = format!("{:<52} {:>9} {:>10} {:>10} {:>8}  {}\n", "case", "elements", "max|err|", "err/tol", "seconds", "");
    for o in outcomes {
        s += &format!(
            "{:<52} {:>9} {:>10.3e} {:>10.3} {:>8.3}  {}\n",
            o.name,
            o.elements,
            o.max_abs_err,
            o.worst_ratio,
            o.seconds,
            if o.passed { "ok" } else { "FAIL" }
        );
    }
    s
}

/// Fail with a table of the failing outcomes only (a full table of a thousand cases would bury them in a
/// truncated log).
pub fn check_all(outcomes: &[Outcome]) -> Result<()> {
    let failed: Vec<Outcome> = outcomes.iter().filter(|o| !o.passed).cloned().collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::Other(format!(
        "kernel parity failed in {} of {} cases:\n{}",
        failed.len(),
        outcomes.len(),
        format_outcomes(&failed)
    )))
}

/// One bench measurement.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub name: String,
    pub work: Work,
    pub seconds_per_run: f64,
}

impl BenchResult {
    /// GB/s or TFLOP/s.
    pub fn rate(&self) -> (f64, &'static str) {
        match self.work {
            Work::Bytes(b) => (b as f64 / self.seconds_per_run / 1e9, "GB/s"),
            Work::Flops(f) => (f as f64 / self.seconds_per_run / 1e12, "TFLOP/s"),
        }
    }
}

/// Time `case` on `backend`: its inputs become parameters (uploaded once), so a run is the kernels alone.
/// Two warm-up runs, then at least `min_runs` timed runs and at least `min_seconds` of them.
pub fn bench_case<B: Backend>(case: &Case, work: Work, backend: B, min_runs: usize, min_seconds: f64) -> Result<BenchResult> {
    let mut g = Graph::new();
    let mut rng = Rng::new(1);
    let mut store = ParamStore::new();
    let mut ids = Vec::new();
    for (i, (shape, dtype, how)) in case.inputs.iter().enumerate() {
        let name = format!("in{i}");
        ids.push(g.param(&name, shape, *dtype)?);
        store.insert(&name, random_tensor(shape, *dtype, *how, &mut rng)?);
    }
    let out = (case.build)(&mut g, &ids)?;
    g.mark_output(out);
    let mut ex = Executor::new(backend, g, &store)?;
    for _ in 0..2 {
        ex.run(&[])?;
    }
    ex.backend().synchronize()?;
    let start = std::time::Instant::now();
    let mut runs = 0;
    while runs < min_runs || start.elapsed().as_secs_f64() < min_seconds {
        ex.run(&[])?;
        runs += 1;
        if runs % 8 == 0 {
            ex.backend().synchronize()?;
        }
    }
    ex.backend().synchronize()?;
    Ok(BenchResult { name: case.name.clone(), work, seconds_per_run: start.elapsed().as_secs_f64() / runs as f64 })
}

/// Every family's bench cases.
pub fn all_bench_cases() -> Vec<(Case, Work)> {
    crate::ops::bench_cases()
}

/// Measured ceilings of known devices (`../shared/docs/ANCHORS.md`): dense f16/bf16 tensor TFLOP/s and
/// memory GB/s.
pub fn device_ceiling(device_name: &str) -> Option<(f64, f64)> {
    if device_name.contains("H200") {
        Some((790.0, 4300.0))
    } else if device_name.contains("H100") {
        Some((800.0, 3000.0))
    } else {
        None
    }
}

/// The bench table: name, time, rate, and the fraction of the device ceiling where it is known (tensor-core
/// TFLOP/s for f16/bf16 FLOP work, memory GB/s for byte work).
pub fn format_bench(results: &[BenchResult], device_name: &str) -> String {
    let ceiling = device_ceiling(device_name);
    let mut s = format!("{:<56} {:>11} {:>12} {:>9}\n", "kernel case", "time", "rate", "of peak");
    for r in results {
        let (rate, unit) = r.rate();
        let frac = match (ceiling, r.work) {
            (Some((_, gbs)), Work::Bytes(_)) => format!("{:.0}%", 100.0 * rate / gbs),
            (Some((tf, _)), Work::Flops(_)) if !r.name.contains("f32") => format!("{:.0}%", 100.0 * rate / tf),
            _ => "-".into(),
        };
        s += &format!("{:<56} {:>8.3} ms {:>7.2} {unit:<7} {frac:>6}\n", r.name, r.seconds_per_run * 1e3, rate);
    }
    s
}

// ---- helpers for gradient-check cases -----------------------------------------------------------------------

/// A constant f32 tensor built from fills (the non-differentiable ops of a gradient check get fixed inputs, so
/// the finite differences see only the differentiable path).
pub fn constant(g: &mut Graph, vals: &[f32], shape: &[usize]) -> Result<NodeId> {
    let parts: Vec<NodeId> = vals.iter().map(|&v| g.fill(v, &[1], DType::F32)).collect();
    let c = g.concat(&parts, 0)?;
    g.reshape(c, shape)
}

/// `x` (values on the 1/4 grid of [`Gen::GridB`]) times 4, through an i32 cast: the same values, but constant
/// under the finite-difference steps and without a gradient (for inputs the ops do not differentiate).
pub fn frozen(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let s = g.affine(x, 4.0, 64.5)?;
    let i = g.cast(s, DType::I32)?;
    let f = g.cast(i, DType::F32)?;
    g.affine(f, 1.0, -64.0)
}

/// RoIs [K,5] from frozen grid values: batch index 0/1, boxes of 0.3 to 7.5 pixels starting in [0.4, 11.6]
/// (partly off a 10x12 map), times `scale` (so that `scale * spatial_scale` maps them onto the map).
pub fn frozen_rois(g: &mut Graph, x: NodeId, scale: f32) -> Result<NodeId> {
    use crate::graph::{BinaryOp, UnaryOp};
    let t = frozen(g, x)?;
    let col = |g: &mut Graph, i: usize| g.slice(t, 1, i, i + 1);
    let (c0, c1, c2, c3, c4) = (col(g, 0)?, col(g, 1)?, col(g, 2)?, col(g, 3)?, col(g, 4)?);
    let zero = g.fill(0.0, &[1], DType::F32);
    let b = g.binary(BinaryOp::Gt, c0, zero)?;
    let x1 = g.affine(c1, 0.7 * scale, 6.0 * scale)?;
    let y1 = g.affine(c2, 0.7 * scale, 6.0 * scale)?;
    let w = g.unary(UnaryOp::Abs, c3)?;
    let w = g.affine(w, 0.9 * scale, 0.3 * scale)?;
    let h = g.unary(UnaryOp::Abs, c4)?;
    let h = g.affine(h, 0.9 * scale, 0.3 * scale)?;
    let x2 = g.add(x1, w)?;
    let y2 = g.add(y1, h)?;
    g.concat(&[b, x1, y1, x2, y2], 1)
}
