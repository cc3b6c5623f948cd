//! Parity on the emulator for the reduction, softmax, layer-norm and AdamW kernels (the family cases of
//! `parity::reduce` and `parity::norm`, and the direct AdamW check). `INSTAGEN_PARITY_FILTER` picks cases by name.

use instagen::backend::emu::EmuBackend;
use instagen::backend::launch::launched_kernels;
use instagen::parity::{self, Case};

fn seed() -> u64 {
    match std::env::var("INSTAGEN_PARITY_SEED") {
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

fn run(cases: Vec<Case>) {
    let seed = seed();
    let filter = std::env::var("INSTAGEN_PARITY_FILTER").unwrap_or_default();
    eprintln!("parity seed {seed} (rerun with INSTAGEN_PARITY_SEED={seed})");
    let mut outcomes = Vec::new();
    for case in cases.iter().filter(|c| c.name.contains(&filter)) {
        let o = parity::run_case(case, EmuBackend::new(), seed).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let launched = launched_kernels();
        for k in &case.kernels {
            assert!(launched.contains(k), "{}: kernel {k} was never launched", case.name);
        }
        outcomes.push(o);
    }
    eprint!("{}", parity::format_outcomes(&outcomes));
    parity::check_all(&outcomes).unwrap();
}

#[test]
fn reduce_kernels_match_the_cpu_reference() {
    run(parity::reduce::cases());
}

#[test]
fn softmax_and_layer_norm_kernels_match_the_cpu_reference() {
    run(parity::norm::cases());
}

#[test]
fn adamw_kernel_matches_the_cpu_reference() {
    let o = parity::norm::run_adamw_direct(EmuBackend::new, seed()).unwrap();
    eprint!("{}", parity::format_outcomes(std::slice::from_ref(&o)));
    parity::check_all(&[o]).unwrap();
}
