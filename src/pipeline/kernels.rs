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
