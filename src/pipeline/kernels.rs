//! `instagen parity` and `instagen bench kernels`: the kernel parity suite and kernel benches on a chosen
//! backend (the GPU check script runs both on `cuda`).

use crate::backend::{Backend, BackendKind};
use crate::error::Result;
use crate::parity::{self, BenchResult, Outcome};

fn parity_on<B: Backend + Clone>(backend: B, filter: &str, seed: u64, progress: bool) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for case in parity::all_cases().iter().filter(|c| c.name.contains(filter)) {
        let o = parity::run_case(case, backend.clone(), seed)?;
        if progress {
            eprint!("{}", parity::format_outcomes(std::slice::from_ref(&o)).lines().nth(1).unwrap_or_default());
            eprintln!();
        }
        out.push(o);
    }
    if "adamw".contains(filter) || filter.is_empty() {
        out.push(parity::run_adamw(|| backend.clone(), seed)?);
        out.push(parity::adamw::run_adamw_direct(|| backend.clone(), seed)?);
    }
    if "optim".contains(filter) || filter.is_empty() {
        out.extend(parity::adamw::run_optim_direct(|| backend.clone(), seed)?);
    }
    Ok(out)
}

/// Run every parity case whose name contains `filter` on `kind`; the table, or an error listing failures.
pub fn parity(kind: BackendKind, filter: &str, seed: u64) -> Result<String> {
    let outcomes = crate::with_backend!(kind, |mk| parity_on(mk()?, filter, seed, true)?);
    if outcomes.is_empty() {
        return Err(crate::error::Error::Other(format!("no parity case name contains '{filter}'")));
    }
    let table = parity::format_outcomes(&outcomes);
    parity::check_all(&outcomes)?;
    Ok(format!("{table}{} cases passed (seed {seed})\n", outcomes.len()))
}

fn bench_on<B: Backend + Clone>(backend: B, filter: &str, min_seconds: f64) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    for (case, work) in parity::all_bench_cases().iter().filter(|(c, _)| c.name.contains(filter)) {
        let r = parity::bench_case(case, *work, backend.clone(), 3, min_seconds)?;
        eprintln!("{}", parity::format_bench(std::slice::from_ref(&r), "").lines().nth(1).unwrap_or_default());
        out.push(r);
    }
    if "adamw".contains(filter) || filter.is_empty() {
        let r = parity::adamw::bench_adamw(backend.clone(), parity::adamw::ADAMW_BENCH_NUMEL, 3, min_seconds)?;
        eprintln!("{}", parity::format_bench(std::slice::from_ref(&r), "").lines().nth(1).unwrap_or_default());
        out.push(r);
    }
    if "optim".contains(filter) || filter.is_empty() {
        for r in parity::adamw::bench_optim(backend, parity::adamw::ADAMW_BENCH_NUMEL, 3, min_seconds)? {
            eprintln!("{}", parity::format_bench(std::slice::from_ref(&r), "").lines().nth(1).unwrap_or_default());
            out.push(r);
        }
    }
    Ok(out)
}

/// Time every bench case whose name contains `filter` on `kind`; a table with rates and, on known GPUs, the
/// fraction of the device's measured ceiling.
pub fn bench(kind: BackendKind, filter: &str, min_seconds: f64) -> Result<String> {
    let (results, device) = crate::with_backend!(kind, |mk| {
        let b = mk()?;
        let name = b.device_name();
        (bench_on(b, filter, min_seconds)?, name)
    });
    if results.is_empty() {
        return Err(crate::error::Error::Other(format!("no bench case name contains '{filter}'")));
    }
    Ok(format!("device: {device}\n{}", parity::format_bench(&results, &device)))
}

/// `instagen bench exec`: the executor's cost per node. Chains of `n` small elementwise nodes run through
/// the executor on `kind`: `x -> -x` (in place) and `x -> x + w_i` with a parameter per node (as a bias add);
/// each line gives the time per node and per element at one tensor size. At small sizes the figure is the
/// host work per node (dispatch, checks, allocation); at large sizes, memory traffic and threads.
pub fn bench_exec(kind: BackendKind, min_seconds: f64) -> Result<String> {
    crate::with_backend!(kind, |mk| bench_exec_on(mk()?, min_seconds))
}

fn bench_exec_on<B: Backend + Clone>(backend: B, min_seconds: f64) -> Result<String> {
    use crate::graph::{Graph, UnaryOp};
    use crate::runtime::Executor;
    use crate::tensor::{DType, HostTensor};
    let mut s = format!("executor per-node cost on {} ({} rayon threads), f32\n", backend.name(), rayon::current_num_threads());
    s += "chain          elements  nodes   us/node   ns/element\n";
    for size in [16usize, 1 << 10, 1 << 14, 1 << 16, 1 << 18, 1 << 20] {
        let nodes = (1usize << 24).div_ceil(size).clamp(20, 1000);
        for chain in ["neg", "add-param"] {
            let mut g = Graph::new();
            let mut x = g.input("x", &[size], DType::F32)?;
            for i in 0..nodes {
                x = match chain {
                    "neg" => g.unary(UnaryOp::Neg, x)?,
                    _ => {
                        let w = g.param(&format!("w{i}"), &[size], DType::F32)?;
                        g.add(x, w)?
                    }
                };
            }
            g.mark_output(x);
            let store = crate::nn::init_params(&g, 1)?;
            let input = HostTensor::from_f32(&[size], DType::F32, &vec![0.5; size])?;
            let mut ex = Executor::new(backend.clone(), g, &store)?;
            ex.run(&[("x", &input)])?;
            let (mut calls, start) = (0usize, std::time::Instant::now());
            while calls < 3 || start.elapsed().as_secs_f64() < min_seconds {
                ex.run(&[("x", &input)])?;
                calls += 1;
            }
            let per_node = start.elapsed().as_secs_f64() / (calls * nodes) as f64;
            s += &format!("{chain:<12} {size:>10} {nodes:>6} {:>9.3} {:>12.3}\n", per_node * 1e6, per_node * 1e9 / size as f64);
        }
    }
    Ok(s)
}
