//! The CPU engine's fast paths (`CpuBackend`, f32 accumulation, blocked, all cores) against the exact CPU
//! reference (`CpuReference`): every parity case of every op family (the tolerances the GPU kernels are held to,
//! `parity::Tol`), plus the fast paths' own larger cases (`ops::cpu_fast_cases`), random inputs from seed 1
//! (`INSTAGEN_PARITY_SEED=N|random` as in kernel_parity.rs), the engine's arena poisoned before each run.
//! `INSTAGEN_PARITY_FILTER=text` runs only the cases whose name contains `text`.

use instagen::backend::cpu::CpuBackend;
use instagen::parity;

fn seed() -> u64 {
    match std::env::var("INSTAGEN_PARITY_SEED").as_deref() {
        Err(_) => 1,
        Ok("random") => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer or `random`"),
    }
}

#[test]
fn the_fast_cpu_engine_matches_the_exact_reference() {
    let seed = seed();
    eprintln!("parity seed {seed} (rerun with INSTAGEN_PARITY_SEED={seed})");
    let start = std::time::Instant::now();
    let filter = std::env::var("INSTAGEN_PARITY_FILTER").unwrap_or_default();
    let cases = parity::all_cases().into_iter().chain(instagen::ops::cpu_fast_cases());
    let mut outcomes = Vec::new();
    for case in cases.filter(|c| c.name.contains(&filter)) {
        outcomes.push(parity::run_case(&case, CpuBackend, seed).unwrap_or_else(|e| panic!("{}: {e}", case.name)));
    }
    eprint!("{}", parity::format_outcomes(&outcomes));
    eprintln!("{} cases in {:.1} s", outcomes.len(), start.elapsed().as_secs_f64());
    parity::check_all(&outcomes).unwrap();
}
