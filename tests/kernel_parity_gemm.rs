//! The gemm family's parity cases on the emulator (the all-families test is tests/kernel_parity.rs).

use instagen::backend::emu::EmuBackend;
use instagen::backend::launch::launched_kernels;
use instagen::parity;

#[test]
fn gemm_kernels_match_the_cpu_reference_on_emu() {
    let seed = match std::env::var("INSTAGEN_PARITY_SEED") {
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    eprintln!("parity seed {seed} (rerun with INSTAGEN_PARITY_SEED={seed})");
    let filter = std::env::var("GEMM_CASE").unwrap_or_default();
    let mut outcomes = Vec::new();
    for case in parity::gemm::cases().iter().filter(|c| c.name.contains(&filter)) {
        let o = parity::run_case(case, EmuBackend::new(), seed).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for k in &case.kernels {
            assert!(launched_kernels().contains(k), "{}: kernel {k} was never launched", case.name);
        }
        eprintln!("{}", parity::format_outcomes(std::slice::from_ref(&o)).lines().nth(1).unwrap_or(""));
        outcomes.push(o);
    }
    eprint!("{}", parity::format_outcomes(&outcomes));
    parity::check_all(&outcomes).unwrap();
}
