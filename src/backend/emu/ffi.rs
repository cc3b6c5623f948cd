//! FFI to the CPU emulator of the kernels: every `kernels/*.cu` compiled for the CPU by `build.rs`
//! (`build/emu.rs`) with `kernels/emu/cuda_emu.h`, linked with the scheduler `kernels/emu/runtime.cpp`.
//!
//! A launch takes what `cuLaunchKernel` takes (grid, block, dynamic shared memory bytes, one pointer per
//! kernel parameter pointing at its value) and runs the whole grid before returning. Errors of the kernel
//! (a divergent or deadlocked barrier, a warp collective missing a lane, an out-of-bounds access of a
//! [`GuardedBuf`], a fault, a kernel `assert`) come back as [`Error::Backend`] naming the kernel, the block
//! and, where one is to blame, the thread. Launches from several threads are serialised.
//!
//! The schedule is adversarial but reproducible: warps run in a seeded random order between barriers (one
//! runs ahead to the next barrier before the others start), `cp.async` copies land at a random moment between
//! issue and the covering wait. The seed is `INSTAGEN_EMU_SEED` (default 1; see [`set_seed`]).
//! [`EmuKernel::launch_checked`] runs the race-check copy of a kernel (compiled with `-fsanitize=thread`):
//! a shared-memory access racing with another warp's (no `__syncthreads` between) is an error naming both
//! sites.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Launch geometry as `kernels/emu/cuda_emu.h` declares it (`instagen_emu_dims`).
#[repr(C)]
struct Dims {
    grid: [u32; 3],
    block: [u32; 3],
    smem_bytes: u32,
    nargs: u32,
}

type LaunchFn = unsafe extern "C" fn(*const Dims, *mut *mut c_void) -> c_int;

unsafe extern "C" {
    fn instagen_emu_last_error() -> *const c_char;
    fn instagen_emu_set_workers(n: u32) -> c_int;
    fn instagen_emu_workers() -> u32;
    fn instagen_emu_set_seed(seed: u64);
    fn instagen_emu_seed() -> u64;
    fn instagen_emu_alloc_guarded(bytes: usize, align: usize) -> *mut c_void;
    fn instagen_emu_free_guarded(p: *mut c_void);
}

/// One kernel compiled for the emulator.
#[derive(Clone, Copy, Debug)]
pub struct EmuKernel {
    /// Stem of the `.cu` file, e.g. `"elementwise"`.
    pub file: &'static str,
    /// Kernel symbol, e.g. `"add_fwd_f32"`.
    pub name: &'static str,
    launch: LaunchFn,
    /// The race-check copy (see [`EmuKernel::launch_checked`]).
    launch_checked: LaunchFn,
}

include!(concat!(env!("OUT_DIR"), "/emu_gen.rs"));

thread_local! {
    static VARIANT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with kernel lookups on this thread ([`find`], [`launch`], the emu backend) answered by the race
/// variant `variant` where it has the kernel (build/emu.rs `VARIANTS`: a kernel built without one marked
/// barrier or wait), for tests that check the emulator catches the race.
pub fn with_variant<R>(variant: &'static str, f: impl FnOnce() -> R) -> Result<R> {
    if !GEN_EMU_VARIANTS.iter().any(|(v, _)| *v == variant) {
        return Err(emu_error(format!("no race variant named {variant:?}")));
    }
    struct Reset(Option<&'static str>);
    impl Drop for Reset {
        fn drop(&mut self) {
            VARIANT.with(|v| v.set(self.0));
        }
    }
    let _reset = Reset(VARIANT.with(|v| v.replace(Some(variant))));
    Ok(f())
}

/// Every emulated kernel, sorted by name.
pub fn kernels() -> &'static [EmuKernel] {
    GEN_EMU_KERNELS
}

/// The emulated kernel called `name`.
pub fn find(name: &str) -> Option<&'static EmuKernel> {
    if let Some(variant) = VARIANT.with(|v| v.get()) {
        if let Some((_, k)) = GEN_EMU_VARIANTS.iter().find(|(v, k)| *v == variant && k.name == name) {
            return Some(k);
        }
    }
    GEN_EMU_KERNELS
        .binary_search_by(|k| k.name.cmp(name))
        .ok()
        .map(|i| &GEN_EMU_KERNELS[i])
}

fn emu_error(msg: impl Into<String>) -> Error {
    Error::backend("emu", msg)
}

impl EmuKernel {
    /// Runs the whole grid on the CPU.
    ///
    /// # Safety
    /// `args` must hold one pointer per kernel parameter, each pointing at a value of exactly that
    /// parameter's type; pointer arguments must be valid for every access the kernel makes with them
    /// (use [`GuardedBuf`] to turn out-of-bounds accesses into errors).
    pub unsafe fn launch(
        &self,
        grid: [u32; 3],
        block: [u32; 3],
        smem_bytes: u32,
        args: &[*mut c_void],
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.run(self.launch, grid, block, smem_bytes, args) }
    }

    /// As [`EmuKernel::launch`], with the race-check copy of the kernel: every shared-memory access is
    /// checked against the other warps' since the last `__syncthreads` (read after write, write after read,
    /// write after write; a `cp.async` write spans its issue to the covering wait; accesses within one warp and
    /// atomics are never races). A race ends the launch with an error naming the kernel, the block and both
    /// sites (file:line). Several times slower than `launch`.
    ///
    /// # Safety
    /// As [`EmuKernel::launch`].
    pub unsafe fn launch_checked(
        &self,
        grid: [u32; 3],
        block: [u32; 3],
        smem_bytes: u32,
        args: &[*mut c_void],
    ) -> Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.run(self.launch_checked, grid, block, smem_bytes, args) }
    }

    /// # Safety
    /// As [`EmuKernel::launch`].
    unsafe fn run(
        &self,
        launch: LaunchFn,
        grid: [u32; 3],
        block: [u32; 3],
        smem_bytes: u32,
        args: &[*mut c_void],
    ) -> Result<()> {
        let nargs = u32::try_from(args.len())
            .map_err(|_| emu_error(format!("kernel {}: too many arguments", self.name)))?;
        let dims = Dims {
            grid,
            block,
            smem_bytes,
            nargs,
        };
        // SAFETY: `dims` lives across the call; the C side only reads `args` (the caller vouches for what the
        // pointers point at) and runs the grid to completion before returning.
        let rc = unsafe { launch(&dims, args.as_ptr().cast_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(emu_error(last_error()))
        }
    }
}

/// Runs kernel `name` on the CPU, like `cuLaunchKernel` followed by a synchronize.
///
/// # Safety
/// As [`EmuKernel::launch`].
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    smem_bytes: u32,
    args: &[*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { find_or_err(name)?.launch(grid, block, smem_bytes, args) }
}

/// As [`launch`], with the race check ([`EmuKernel::launch_checked`]).
///
/// # Safety
/// As [`EmuKernel::launch`].
pub unsafe fn launch_checked(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    smem_bytes: u32,
    args: &[*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { find_or_err(name)?.launch_checked(grid, block, smem_bytes, args) }
}

fn find_or_err(name: &str) -> Result<&'static EmuKernel> {
    find(name).ok_or_else(|| {
        emu_error(format!(
            "no emulated kernel named {name:?} ({} kernels are built in)",
            GEN_EMU_KERNELS.len()
        ))
    })
}

/// The error message of the last failed launch on this thread.
fn last_error() -> String {
    // SAFETY: returns a NUL-terminated thread-local string (possibly empty), valid until the next launch on
    // this thread.
    let p = unsafe { instagen_emu_last_error() };
    if p.is_null() {
        return "unknown emulator error".to_string();
    }
    // SAFETY: non-null and NUL-terminated (see above).
    let msg = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    if msg.is_empty() {
        "unknown emulator error".to_string()
    } else {
        msg
    }
}

/// Number of OS worker threads a launch spreads its blocks over (one block per worker at a time). The
/// default is `INSTAGEN_EMU_WORKERS` if set, else min(2, available cores).
pub fn workers() -> usize {
    // SAFETY: no preconditions.
    unsafe { instagen_emu_workers() as usize }
}

/// The seed of the emulator's schedule (warp order, `cp.async` landing moments), mixed with the kernel name
/// and block index so a launch runs the same way every time: `INSTAGEN_EMU_SEED` (an integer, `0x` for hex)
/// if set, else 1.
pub fn seed() -> u64 {
    // SAFETY: no preconditions.
    unsafe { instagen_emu_seed() }
}

/// Sets [`seed`] for later launches (of every thread).
pub fn set_seed(seed: u64) {
    // SAFETY: no preconditions.
    unsafe { instagen_emu_set_seed(seed) }
}

/// Sets [`workers`] for later launches (1 to 64).
pub fn set_workers(n: usize) -> Result<()> {
    let ok = u32::try_from(n).is_ok_and(|n| {
        // SAFETY: no preconditions; invalid counts are rejected by the C side.
        unsafe { instagen_emu_set_workers(n) == 0 }
    });
    if ok {
        Ok(())
    } else {
        Err(emu_error(format!(
            "invalid emulator worker count {n} (1 to 64)"
        )))
    }
}

/// Host memory for a checked launch: the data ends exactly where a PROT_NONE guard page begins, and another
/// guard page precedes it, so a kernel that reads or writes past the end (or far enough before the start)
/// ends its launch with an "out-of-bounds access" error instead of touching other memory. Zeroed on
/// allocation.
pub struct GuardedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; access goes through `&`/`&mut` borrows.
unsafe impl Send for GuardedBuf {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for GuardedBuf {}

impl GuardedBuf {
    /// `bytes` bytes whose start is aligned to 16 or, when `bytes` is not a multiple of 16, to the largest
    /// power of two dividing it, so that the end always touches the guard page.
    pub fn new(bytes: usize) -> Result<Self> {
        let align = if bytes == 0 {
            16
        } else {
            1usize << bytes.trailing_zeros().min(4)
        };
        Self::with_align(bytes, align)
    }

    /// `bytes` bytes starting at a multiple of `align` (a power of two up to the page size); up to
    /// `align - 1` unguarded bytes may then follow the data.
    pub fn with_align(bytes: usize, align: usize) -> Result<Self> {
        // SAFETY: no preconditions; failure is a null pointer.
        let p = unsafe { instagen_emu_alloc_guarded(bytes, align) };
        NonNull::new(p.cast::<u8>())
            .map(|ptr| GuardedBuf { ptr, len: bytes })
            .ok_or_else(|| {
                emu_error(format!(
                    "cannot allocate a guarded buffer of {bytes} bytes aligned to {align}"
                ))
            })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the data, for kernel arguments.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `len` initialised (zeroed) bytes owned by `self`, non-null and aligned for u8.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for GuardedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by instagen_emu_alloc_guarded and freed once.
        unsafe { instagen_emu_free_guarded(self.ptr.as_ptr().cast()) }
    }
}

impl std::fmt::Debug for GuardedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuardedBuf({:p}, {} bytes)", self.ptr, self.len)
    }
}
