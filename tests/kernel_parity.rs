//! Every kernel of `kernels/*.cu`, compiled for the CPU through the emulation header, against the Rust CPU
//! reference: random inputs (seed 1 by default so CI is reproducible; `INSTAGEN_PARITY_SEED=random` draws a
//! fresh seed, `=N` replays one; the seed is printed), odd shapes, every supported dtype, output arena poisoned
//! before the run. Also: every kernel symbol is launched by some parity case.
//! `INSTAGEN_PARITY_FILTER=text` runs only the cases whose name contains `text` (and skips the coverage check).

use std::collections::BTreeSet;

use instagen::backend::emu::EmuBackend;
use instagen::backend::launch::launched_kernels;
use instagen::parity;

fn seed() -> u64 {
    match std::env::var("INSTAGEN_PARITY_SEED").as_deref() {
        Err(_) => 1,
        Ok("random") => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        Ok(s) => s.parse().expect("INSTAGEN_PARITY_SEED must be an integer or `random`"),
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
        outcomes.push(parity::adamw::run_adamw_direct(EmuBackend::new, seed).unwrap());
    }
    if filter.is_empty() || "optim".contains(&filter) {
        outcomes.extend(parity::adamw::run_optim_direct(EmuBackend::new, seed).unwrap());
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

/// Every bench case launches the kernels it names (checked from the launch plan, without running the
/// SD-sized graphs), and every kernel family (a symbol without its dtype suffix) has at least one bench line.
#[test]
fn bench_cases_launch_their_kernels_and_cover_every_family() {
    use instagen::backend::launch::node_launches;
    use instagen::backend::{Loc, Space};
    use instagen::graph::{Graph, Op, Plan};

    let mut benched = BTreeSet::new();
    for (case, _) in parity::all_bench_cases() {
        let mut g = Graph::new();
        let ids: Vec<_> =
            case.inputs.iter().enumerate().map(|(i, (s, d, _))| g.param(&format!("in{i}"), s, *d).unwrap()).collect();
        let out = (case.build)(&mut g, &ids).unwrap();
        g.mark_output(out);
        let plan = Plan::new(&g);
        let loc = |id: instagen::NodeId| match plan.buffers[id.0] {
            Some(b) => Loc { space: Space::Arena, offset: b.offset, bytes: b.bytes },
            None => Loc { space: Space::Params, offset: 0, bytes: g.node(id).bytes() },
        };
        let mut launched = BTreeSet::new();
        for (i, n) in g.nodes().iter().enumerate() {
            let id = instagen::NodeId(i);
            if plan.buffers[i].is_none() || matches!(n.op, Op::Input { .. } | Op::Param { .. }) {
                continue;
            }
            let ins: Vec<Loc> = n.inputs.iter().map(|x| loc(*x)).collect();
            let (offset, bytes) = plan.workspace(id);
            let ws = Loc { space: Space::Arena, offset, bytes };
            for l in node_launches(&g, id, &ins, loc(id), ws).unwrap_or_else(|e| panic!("{}: {e}", case.name)) {
                launched.insert(l.kernel);
            }
        }
        for k in &case.kernels {
            assert!(launched.contains(k), "bench case {} does not launch {k} (launches {launched:?})", case.name);
        }
        benched.extend(launched);
    }
    benched.extend(["adamw_f32".to_string()]); // timed through Backend::adamw in benches/kernels.rs
    // Timed through parity::adamw::bench_optim (`instagen bench kernels`).
    benched.extend(["sgd_f32", "ema_f32", "accumulate_f32", "sumsq_partial_f32", "sumsq_final"].map(String::from));
    let family = |k: &str| {
        let mut parts: Vec<&str> = k.split('_').collect();
        while parts.last().is_some_and(|p| ["f32", "f16", "bf16", "i32", "i64", "u8"].contains(p)) {
            parts.pop();
        }
        let f = parts.join("_");
        // copy_strided_b1/b2/b4/b8 are one kernel per element size.
        f.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches("_b").to_string()
    };
    let benched_families: BTreeSet<String> = benched.iter().map(|k| family(k)).collect();
    let missing: BTreeSet<String> =
        all_kernel_symbols().iter().map(|k| family(k)).filter(|f| !benched_families.contains(f)).collect();
    assert!(missing.is_empty(), "kernel families without a bench line: {missing:?}");
}
