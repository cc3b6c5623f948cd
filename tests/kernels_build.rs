//! Checks what build.rs embedded: every kernels/*.cu is known, and (when NVRTC was available)
//! compiled for sm_80 and sm_90 with exactly the entry points the emulator build found, each spill-free.
//! `INSTAGEN_REQUIRE_KERNELS=1` turns "NVRTC not installed" from a skip into a failure.

use std::fs;
use std::path::PathBuf;

use instagen::backend::cuda::probe;
use instagen::{info, kernels};

const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Sorted stems of kernels/*.cu on disk.
fn stems_on_disk() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(kernels_dir())
        .expect("kernels/ exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| {
            p.file_stem()
                .expect("file stem")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// The kernels of `stem.cu`, as the emulator build found them (in the preprocessed source, so entry points
/// stamped out by the INSTAGEN_KERNELS_* macros count), sorted.
fn global_symbols(stem: &str) -> Vec<String> {
    let all = instagen::backend::emu::kernels();
    let mut v: Vec<String> = all.iter().filter(|k| k.file == stem).map(|k| k.name.to_string()).collect();
    v.sort();
    v
}

/// The `.entry` functions of a PTX text, sorted.
fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut v: Vec<String> = ptx
        .lines()
        .filter_map(|l| l.split_once(".entry ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn require_kernels() -> bool {
    std::env::var("INSTAGEN_REQUIRE_KERNELS").is_ok_and(|v| v == "1")
}

#[test]
fn sources_match_disk() {
    let embedded: Vec<&str> = kernels::kernel_sources().to_vec();
    assert_eq!(
        embedded,
        stems_on_disk(),
        "kernel_sources() vs kernels/*.cu (stale build?)"
    );
}

#[test]
fn every_kernel_compiled_for_both_arches_without_spills() {
    if !kernels::compiled() {
        assert!(
            !require_kernels(),
            "INSTAGEN_REQUIRE_KERNELS=1 but the build found no NVRTC (run tools/setup_cuda.sh)"
        );
        eprintln!("skipping: NVRTC not installed (run tools/setup_cuda.sh)");
        return;
    }
    assert!(kernels::nvrtc_version().is_some());
    for stem in stems_on_disk() {
        let symbols = global_symbols(&stem);
        assert!(
            !symbols.is_empty(),
            "{stem}.cu has no extern \"C\" __global__ kernels"
        );
        for arch in ARCHES {
            let m =
                kernels::module(&stem, arch).unwrap_or_else(|| panic!("no module {stem} {arch}"));
            assert!(
                !m.ptx.is_empty() && !m.cubin.is_empty(),
                "{stem} {arch}: empty PTX or cubin"
            );
            assert!(
                m.cubin.starts_with(b"\x7fELF"),
                "{stem} {arch}: cubin is not an ELF image"
            );
            // NVRTC and the emulator build see the same entry points (a kernel only one of them finds is either
            // never emulated or never compiled for the GPU).
            assert_eq!(
                ptx_entries(m.ptx),
                symbols,
                "{stem} {arch}: PTX entry points vs the emulator's kernel table"
            );
            for sym in &symbols {
                assert!(
                    m.ptx.contains(&format!(".entry {sym}(")),
                    "{stem} {arch}: PTX lacks .entry {sym}"
                );
                let st = kernels::stats()
                    .iter()
                    .find(|k| k.file == stem && k.name == sym && k.arch == arch)
                    .unwrap_or_else(|| panic!("no ptxas stats for {sym} ({stem}.cu, {arch})"));
                assert!(
                    st.registers > 0,
                    "{sym} {arch}: 0 registers reported (parse error?)"
                );
                assert!(
                    st.spill_stores == 0 && st.spill_loads == 0,
                    "{sym} {arch} spills: {} B stores, {} B loads",
                    st.spill_stores,
                    st.spill_loads
                );
            }
        }
    }
}

#[test]
fn info_report_mentions_every_kernel() {
    let text = info::report();
    assert!(text.contains("cpu"), "{text}");
    if kernels::compiled() {
        for k in kernels::stats() {
            assert!(
                text.contains(k.name),
                "info report lacks {}:\n{text}",
                k.name
            );
        }
    } else {
        assert!(text.contains("CPU-only"), "{text}");
    }
}

#[test]
fn probe_does_not_panic() {
    let p = probe::probe();
    if !p.driver_found {
        assert!(
            p.devices.is_empty(),
            "devices reported without a driver: {p:?}"
        );
        assert_eq!(p.driver_version, None);
    }
}
