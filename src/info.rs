//! The text of `instagen info`: backends, the build's NVRTC, every compiled kernel with its ptxas
//! figures, and the GPUs present.

use std::fmt::Write as _;

use crate::backend::cuda::probe::{self, GpuProbe};
use crate::kernels;

/// Probes the GPUs and renders the report.
pub fn report() -> String {
    report_with(&probe::probe())
}

/// Renders the report for an already-made probe.
pub fn report_with(gpus: &GpuProbe) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "instagen {}", env!("CARGO_PKG_VERSION"));

    let _ = writeln!(r, "\nbackends:");
    let _ = writeln!(r, "  cpu   available");
    let cuda = match (gpus.has_gpu(), kernels::compiled()) {
        (true, true) => format!("available ({} GPU(s))", gpus.devices.len()),
        (false, true) => "unavailable: no GPU found".to_string(),
        (true, false) => "unavailable: kernels not compiled (CPU-only build)".to_string(),
        (false, false) => {
            "unavailable: no GPU found, kernels not compiled (CPU-only build)".to_string()
        }
    };
    let _ = writeln!(r, "  cuda  {cuda}");
    let _ = writeln!(
        r,
        "  emu   available: {} kernels compiled for the CPU through the CUDA emulator",
        crate::backend::emu::kernels().len()
    );

    let _ = writeln!(
        r,
        "\nNVRTC at build time: {}",
        kernels::nvrtc_version().unwrap_or("not found: CPU-only build")
    );
    let _ = writeln!(
        r,
        "kernel sources: {}",
        kernels::kernel_sources().join(", ")
    );

    if kernels::compiled() {
        let _ = writeln!(r, "\nkernels (ptxas -O3; sizes in bytes):");
        r.push_str(&kernel_table());
    }

    let _ = writeln!(r, "\nGPUs:");
    if !gpus.driver_found {
        let _ = writeln!(r, "  no NVIDIA driver (libcuda) found");
    } else {
        let driver = gpus
            .driver_version_string()
            .unwrap_or_else(|| "unknown".to_string());
        let _ = writeln!(r, "  driver: CUDA {driver}");
        if gpus.devices.is_empty() {
            let _ = writeln!(r, "  no devices");
        }
        for d in &gpus.devices {
            let (major, minor) = d.compute_capability;
            let gib = d.total_memory_bytes as f64 / (1u64 << 30) as f64;
            let _ = writeln!(
                r,
                "  {}: {}, sm_{major}{minor}, {gib:.1} GiB, {} SMs",
                d.ordinal, d.name, d.multiprocessors
            );
        }
    }
    if let Some(e) = &gpus.error {
        let _ = writeln!(r, "  driver error: {e}");
    }
    r
}

/// One row per (kernel, arch), columns aligned.
fn kernel_table() -> String {
    let header = [
        "file", "kernel", "arch", "regs", "spill_st", "spill_ld", "smem", "stack",
    ];
    let rows: Vec<[String; 8]> = kernels::stats()
        .iter()
        .map(|k| {
            [
                k.file.to_string(),
                k.name.to_string(),
                k.arch.to_string(),
                k.registers.to_string(),
                k.spill_stores.to_string(),
                k.spill_loads.to_string(),
                k.shared_bytes.to_string(),
                k.stack_bytes.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut t = String::new();
    let mut line = |cells: &[&str]| {
        let mut s = String::from(" ");
        for (i, (cell, &w)) in cells.iter().zip(&width).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            let _ = if i < 3 {
                write!(s, " {cell:<w$}")
            } else {
                write!(s, " {cell:>w$}")
            };
        }
        let _ = writeln!(t, "{}", s.trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    t
}
