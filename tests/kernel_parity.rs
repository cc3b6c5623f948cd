//! Every kernel of `kernels/*.cu`, compiled for the CPU through the emulation header, against the Rust CPU
//! reference: fresh random inputs each run (the seed is printed), odd shapes, every supported dtype, output
//! arena poisoned before the run. Also: every kernel symbol is launched by some parity case.
//! `INSTAGEN_PARITY_FILTER=text` runs only the cases whose name contains `text` (and skips the coverage check).

use std::collections::BTreeSet;

use instagen::backend::emu::EmuBackend;
use instagen::backend::launch::launched_kernels;
use instagen::parity;

fn seed() -> u64 {
    match std::env::var("INSTAGEN_PARITY_SEED") {
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

/// Every kernel of `kernels/*.cu` (the emulator's own self-test kernels are tested in emu_runtime.rs).
fn all_kernel_symbols() -> BTreeSet<String> {
    let all = instagen::backend::emu::kernels();
    all.iter().filter(|k| k.file != "selftest").map(|k| k.name.to_string()).collect()
}

#[test]
fn every_kernel_matches_the_cpu_reference_on_emu() {
    let seed = seed();
    eprintln!("parity seed {seed} (rerun with INSTAGEN_PARITY_SEED={seed})");
    let start = std::time::Instant::now();
    let filter = std::env::var("INSTAGEN_PARITY_FILTER").unwrap_or_default();
    let mut outcomes = Vec::new();
    for case in parity::all_cases().into_iter().filter(|c| c.name.contains(&filter)) {
        let o = parity::run_case(&case, EmuBackend::new(), seed).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let after = launched_kernels();
        for k in &case.kernels {
            assert!(after.contains(k), "{}: kernel {k} was never launched", case.name);
        }
        outcomes.push(o);
    }
    if filter.is_empty() || "adamw".contains(&filter) {
        outcomes.push(parity::run_adamw(EmuBackend::new, seed).unwrap());
        outcomes.push(parity::norm::run_adamw_direct(EmuBackend::new, seed).unwrap());
    }
    eprint!("{}", parity::format_outcomes(&outcomes));
    eprintln!("{} parity cases in {:.1} s", outcomes.len(), start.elapsed().as_secs_f64());
    parity::check_all(&outcomes).unwrap();
    if !filter.is_empty() {
        return;
    }
    let launched = launched_kernels();
    let missing: Vec<String> = all_kernel_symbols().into_iter().filter(|k| !launched.contains(k)).collect();
    assert!(missing.is_empty(), "kernels with no emulated parity case: {missing:?}");
}
