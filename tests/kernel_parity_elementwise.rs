//! The elementwise and movement families on the emulator against the CPU reference (the all-family test is
//! tests/kernel_parity.rs). `INSTAGEN_PARITY_SEED` fixes the seed; `INSTAGEN_WIDE_INDEX=1` runs the strided
//! kernels' 64-bit index path; `INSTAGEN_PARITY_FILTER=text` runs only the cases whose name contains `text`.

use instagen::backend::emu::EmuBackend;
use instagen::backend::launch::launched_kernels;
use instagen::parity::{self, Case};

fn seed() -> u64 {
    match std::env::var("INSTAGEN_PARITY_SEED") {
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

/// The `extern "C" __global__ void` symbols of a `.cu` source.
fn kernel_symbols(source: &str) -> Vec<String> {
    let pat = "extern \"C\" __global__ void ";
    source
        .match_indices(pat)
        .map(|(i, _)| source[i + pat.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// Runs `cases`; without a filter, also checks that they launch every kernel of `kernels/<file>.cu`.
fn run(family: &str, file: &str, cases: Vec<Case>) {
    let seed = seed();
    let filter = std::env::var("INSTAGEN_PARITY_FILTER").unwrap_or_default();
    eprintln!("{family}: parity seed {seed}");
    let start = std::time::Instant::now();
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
    let worst = outcomes.iter().map(|o| o.worst_ratio).fold(0f32, f32::max);
    eprintln!("{family}: {} cases in {:.1} s, worst err/tol {worst:.3}", outcomes.len(), start.elapsed().as_secs_f64());
    parity::check_all(&outcomes).unwrap();
    if filter.is_empty() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels").join(format!("{file}.cu"));
        let launched = launched_kernels();
        let symbols = kernel_symbols(&std::fs::read_to_string(path).unwrap());
        let missing: Vec<&String> = symbols.iter().filter(|k| !launched.contains(*k)).collect();
        assert!(missing.is_empty(), "{file}.cu kernels no case launched: {missing:?}");
    }
}

#[test]
fn elementwise_kernels_match_the_cpu_reference() {
    run("elementwise", "elementwise", parity::elementwise::cases());
}

#[test]
fn movement_kernels_match_the_cpu_reference() {
    run("movement", "movement", parity::movement::cases());
}
