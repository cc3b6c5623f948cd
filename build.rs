//! Build script: compiles every `kernels/*.cu` with NVRTC to PTX for compute_80 and compute_90,
//! assembles each PTX with `ptxas -v` for sm_80 / sm_90, and generates `OUT_DIR/kernels_gen.rs`,
//! which embeds the PTX, the cubins and the per-kernel ptxas figures (used by `src/kernels.rs`).
//!
//! The toolkit (NVRTC, headers, ptxas from NVIDIA's PyPI wheels) is `$INSTAGEN_CUDA_DIR`, else
//! `<crate>/.cuda/py/nvidia/cu13` as installed by `tools/setup_cuda.sh`. Without it the build
//! succeeds CPU-only with a warning; with it, a kernel that fails to compile fails the build.

#[path = "build/nvrtc.rs"]
mod nvrtc;
#[path = "build/ptxas.rs"]
mod ptxas;
// ---- CPU emulation of the kernels (build/emu.rs) ----
#[path = "build/emu.rs"]
mod emu;
// ---- end CPU emulation ----

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// (virtual architecture given to NVRTC, real architecture given to ptxas).
const ARCHES: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

struct Toolkit {
    dir: PathBuf,
    nvrtc: nvrtc::Nvrtc,
    ptxas: PathBuf,
}

struct BuiltModule {
    file: String,
    arch: &'static str,
    ptx: PathBuf,
    cubin: PathBuf,
}

struct KernelStats {
    file: String,
    arch: &'static str,
    stats: ptxas::Stats,
}

#[derive(Default)]
struct Built {
    nvrtc_version: Option<String>,
    modules: Vec<BuiltModule>,
    stats: Vec<KernelStats>,
}

fn main() {
    let crate_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels_dir = crate_dir.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=INSTAGEN_CUDA_DIR");

    let sources = list_sources(&kernels_dir);
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    // ---- CPU emulation of the kernels (build/emu.rs): needs only a C++17 compiler, never CUDA ----
    emu::build(&kernels_dir, &out_dir, &sources);
    // ---- end CPU emulation ----

    let cuda_dir = env::var_os("INSTAGEN_CUDA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join(".cuda/py/nvidia/cu13"));
    let built = match open_toolkit(&cuda_dir) {
        Ok(tk) => compile_all(&tk, &sources, &kernels_dir, &out_dir),
        Err(why) => {
            println!("cargo:warning=instagen: {why}; building CPU-only (run tools/setup_cuda.sh)");
            Built::default()
        }
    };

    let report = report_text(&built, &cuda_dir);
    print!("{report}");
    write(&out_dir.join("ptxas_report.txt"), report.as_bytes());
    let target_dir = crate_dir.join("target");
    if let Err(e) = fs::create_dir_all(&target_dir)
        .and_then(|()| fs::write(target_dir.join("ptxas_report.txt"), &report))
    {
        println!(
            "cargo:warning=instagen: cannot write {}/ptxas_report.txt: {e}",
            target_dir.display()
        );
    }
    write(
        &out_dir.join("kernels_gen.rs"),
        generated_rs(&built, &sources).as_bytes(),
    );
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = fs::write(path, bytes) {
        panic!("instagen build: cannot write {}: {e}", path.display());
    }
}

/// `kernels/*.cu`, sorted by file name. A missing directory means no kernels.
fn list_sources(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "cu"))
        .collect();
    v.sort();
    v
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Finds NVRTC and ptxas; an error here means "build CPU-only", not "fail".
fn open_toolkit(dir: &Path) -> Result<Toolkit, String> {
    let lib_dir = dir.join("lib");
    let nvrtc_path = lib_dir.join("libnvrtc.so.13");
    if !nvrtc_path.is_file() {
        return Err(format!("NVRTC not found at {}", nvrtc_path.display()));
    }
    let ptxas = dir.join("bin/ptxas");
    if !ptxas.is_file() {
        return Err(format!("ptxas not found at {}", ptxas.display()));
    }
    let nvrtc = nvrtc::Nvrtc::load(&lib_dir)
        .map_err(|e| format!("NVRTC at {} unusable: {e}", nvrtc_path.display()))?;
    // Reinstalling the toolkit (tools/setup_cuda.sh) reruns this script.
    println!("cargo:rerun-if-changed={}", nvrtc_path.display());
    println!("cargo:rerun-if-changed={}", ptxas.display());
    Ok(Toolkit {
        dir: dir.to_path_buf(),
        nvrtc,
        ptxas,
    })
}

/// Names of the `.entry` functions of a PTX text.
fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| l.split_once(".entry ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next())
        .collect()
}

fn compile_all(tk: &Toolkit, sources: &[PathBuf], kernels_dir: &Path, out_dir: &Path) -> Built {
    let version = tk
        .nvrtc
        .version()
        .unwrap_or_else(|e| panic!("instagen build: {e}"));
    let mut built = Built {
        nvrtc_version: Some(version),
        ..Built::default()
    };
    for src_path in sources {
        let file = stem(src_path);
        let source = fs::read_to_string(src_path)
            .unwrap_or_else(|e| panic!("instagen build: cannot read {}: {e}", src_path.display()));
        let mut last_log = String::new();
        for (virt, sm) in ARCHES {
            let options = vec![
                format!("--gpu-architecture={virt}"),
                "--std=c++17".to_string(),
                "-lineinfo".to_string(),
                format!("-I{}", tk.dir.join("include").display()),
                format!("-I{}", kernels_dir.display()),
            ];
            let name = src_path.display().to_string();
            let out = tk
                .nvrtc
                .compile(&source, &name, &options)
                .unwrap_or_else(|log| {
                    panic!("instagen build: NVRTC failed to compile {name} for {virt}:\n{log}")
                });
            // The same source usually warns identically for every arch: report a log once.
            if out.log != last_log {
                for line in out.log.lines().filter(|l| !l.trim().is_empty()) {
                    println!("cargo:warning=instagen: NVRTC {file}.cu ({virt}): {line}");
                }
            }
            last_log = out.log;
            let ptx = out_dir.join(format!("{file}.{sm}.ptx"));
            let cubin = out_dir.join(format!("{file}.{sm}.cubin"));
            write(&ptx, out.ptx.as_bytes());
            let stats = ptxas::assemble(&tk.ptxas, &ptx, &cubin, sm)
                .unwrap_or_else(|e| panic!("instagen build: {name}: {e}"));
            for entry in ptx_entries(&out.ptx) {
                if !stats.iter().any(|s| s.name == entry) {
                    panic!(
                        "instagen build: ptxas -v reported no figures for {entry} ({file}.cu, {sm})"
                    );
                }
            }
            for s in stats {
                if s.spill_stores > 0 || s.spill_loads > 0 {
                    println!(
                        "cargo:warning=instagen: {file}.cu {} {sm} spills ({} B stores, {} B loads)",
                        s.name, s.spill_stores, s.spill_loads
                    );
                }
                built.stats.push(KernelStats {
                    file: file.clone(),
                    arch: sm,
                    stats: s,
                });
            }
            built.modules.push(BuiltModule {
                file: file.clone(),
                arch: sm,
                ptx,
                cubin,
            });
        }
    }
    built
        .stats
        .sort_by(|a, b| (&a.file, &a.stats.name, a.arch).cmp(&(&b.file, &b.stats.name, b.arch)));
    built
}

/// The human table written to `ptxas_report.txt`.
fn report_text(built: &Built, cuda_dir: &Path) -> String {
    let mut r = String::new();
    let Some(version) = &built.nvrtc_version else {
        let _ = writeln!(
            r,
            "instagen ptxas report: CPU-only build, no NVRTC in {}",
            cuda_dir.display()
        );
        return r;
    };
    let _ = writeln!(
        r,
        "instagen ptxas report: NVRTC {version}, ptxas -O3, toolkit {}",
        cuda_dir.display()
    );
    let _ = writeln!(
        r,
        "(spill and memory figures in bytes; smem = static shared memory)"
    );
    let header = [
        "file", "kernel", "arch", "regs", "spill_st", "spill_ld", "smem", "stack", "cmem",
    ];
    let rows: Vec<[String; 9]> = built
        .stats
        .iter()
        .map(|k| {
            let s = &k.stats;
            [
                k.file.clone(),
                s.name.clone(),
                k.arch.to_string(),
                s.registers.to_string(),
                s.spill_stores.to_string(),
                s.spill_loads.to_string(),
                s.shared_bytes.to_string(),
                s.stack_bytes.to_string(),
                s.const_bytes.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i < 3 {
                let _ = write!(s, "{cell:<w$}  ");
            } else {
                let _ = write!(s, "{cell:>w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(r, "{}", line(&header));
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        let _ = writeln!(r, "{}", line(&cells));
    }
    r
}

/// Rust source included by `src/kernels.rs`; it uses that module's `Module` and `KernelStats`.
fn generated_rs(built: &Built, sources: &[PathBuf]) -> String {
    let mut g =
        String::from("// @generated by build.rs: embedded kernels and their ptxas figures.\n\n");
    let _ = writeln!(
        g,
        "const GEN_COMPILED: bool = {};",
        built.nvrtc_version.is_some()
    );
    let _ = writeln!(
        g,
        "const GEN_NVRTC_VERSION: Option<&str> = {:?};",
        built.nvrtc_version
    );
    let stems: Vec<String> = sources.iter().map(|p| format!("{:?}", stem(p))).collect();
    let _ = writeln!(g, "static GEN_SOURCES: &[&str] = &[{}];", stems.join(", "));
    let _ = writeln!(g, "static GEN_MODULES: &[Module] = &[");
    for m in &built.modules {
        let _ = writeln!(
            g,
            "    Module {{ file: {:?}, arch: {:?}, ptx: include_str!({:?}), cubin: include_bytes!({:?}) }},",
            m.file,
            m.arch,
            m.ptx.display().to_string(),
            m.cubin.display().to_string()
        );
    }
    let _ = writeln!(g, "];\nstatic GEN_STATS: &[KernelStats] = &[");
    for k in &built.stats {
        let s = &k.stats;
        let _ = writeln!(
            g,
            "    KernelStats {{ file: {:?}, name: {:?}, arch: {:?}, registers: {}, spill_stores: {}, \
             spill_loads: {}, shared_bytes: {}, stack_bytes: {}, const_bytes: {} }},",
            k.file,
            s.name,
            k.arch,
            s.registers,
            s.spill_stores,
            s.spill_loads,
            s.shared_bytes,
            s.stack_bytes,
            s.const_bytes
        );
    }
    g.push_str("];\n");
    g
}
