//! The embedded kernel registry: PTX and cubins of every `kernels/*.cu`, compiled by `build.rs`
//! with NVRTC for sm_80 and sm_90, and the per-kernel figures `ptxas -v` reported for them.
//!
//! In a CPU-only build (no NVRTC when the crate was built) [`compiled`] is false and the module and
//! stats tables are empty; [`kernel_sources`] still lists the `.cu` files.

/// What `ptxas -v` reported for one entry function on one architecture (sizes in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStats {
    /// Stem of the `.cu` file, e.g. `"elementwise"`.
    pub file: &'static str,
    /// Kernel symbol, e.g. `"add_fwd_f32"`.
    pub name: &'static str,
    /// Real architecture, `"sm_80"` or `"sm_90"`.
    pub arch: &'static str,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    /// Static shared memory.
    pub shared_bytes: u32,
    /// Stack frame.
    pub stack_bytes: u32,
    /// Constant bank 0 (kernel parameters and driver constants).
    pub const_bytes: u32,
}

impl KernelStats {
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// One `.cu` file compiled for one architecture.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// Stem of the `.cu` file.
    pub file: &'static str,
    /// `"sm_80"` or `"sm_90"`; the PTX targets the matching `compute_*` virtual architecture.
    pub arch: &'static str,
    /// PTX text (JIT-compiled by the driver on any GPU at least as new as `arch`).
    pub ptx: &'static str,
    /// ptxas output for exactly `arch`.
    pub cubin: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));

/// Every compiled module, ordered by file then architecture.
pub fn modules() -> &'static [Module] {
    GEN_MODULES
}

/// ptxas figures of every kernel, ordered by file, kernel name, architecture.
pub fn stats() -> &'static [KernelStats] {
    GEN_STATS
}

/// NVRTC version ("major.minor") the kernels were compiled with; `None` in a CPU-only build.
pub fn nvrtc_version() -> Option<&'static str> {
    GEN_NVRTC_VERSION
}

/// Whether the kernels were compiled into this build.
pub fn compiled() -> bool {
    GEN_COMPILED
}

/// Stems of the `kernels/*.cu` files seen at build time, sorted.
pub fn kernel_sources() -> &'static [&'static str] {
    GEN_SOURCES
}

/// The module of `file` (a stem) for `arch`, if compiled.
pub fn module(file: &str, arch: &str) -> Option<&'static Module> {
    GEN_MODULES
        .iter()
        .find(|m| m.file == file && m.arch == arch)
}

/// The best module of `file` for a device of compute capability `major.minor`: the newest
/// compiled architecture not newer than the device (its PTX JIT-compiles forward).
pub fn module_for_capability(file: &str, major: i32, minor: i32) -> Option<&'static Module> {
    let cc = major * 10 + minor;
    GEN_MODULES
        .iter()
        .filter(|m| m.file == file)
        .filter_map(|m| arch_number(m.arch).filter(|&a| a <= cc).map(|a| (a, m)))
        .max_by_key(|&(a, _)| a)
        .map(|(_, m)| m)
}

/// 80 for "sm_80".
fn arch_number(arch: &str) -> Option<i32> {
    arch.strip_prefix("sm_").and_then(|n| n.parse().ok())
}

