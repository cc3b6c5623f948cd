//! A minimal NVRTC binding for the build script: the library is opened by absolute path with
//! libloading, so no system CUDA install and no LD_LIBRARY_PATH are needed.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr;

use libloading::Library;

type Program = *mut c_void;
type Status = c_int;

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> Status;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> Status;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> Status;
type TextFn = unsafe extern "C" fn(Program, *mut c_char) -> Status;
type ErrorStringFn = unsafe extern "C" fn(Status) -> *const c_char;

/// A loaded libnvrtc. Field order matters: the function pointers die first, then libnvrtc, then
/// the builtins library that libnvrtc dlopens by soname.
pub struct Nvrtc {
    version: VersionFn,
    create: CreateFn,
    destroy: DestroyFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: TextFn,
    ptx_size: SizeFn,
    ptx: TextFn,
    error_string: ErrorStringFn,
    _lib: Library,
    _builtins: Library,
}

/// What one successful compilation gives back.
pub struct Output {
    pub ptx: String,
    /// Compiler warnings (empty when the source compiled cleanly).
    pub log: String,
}

fn open(path: &Path) -> Result<Library, String> {
    // SAFETY: loading NVIDIA's libraries runs their initialisers, which have no preconditions.
    unsafe { Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))
}

fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    // SAFETY: every `T` used below is the C signature documented in nvrtc.h for `name`.
    unsafe { lib.get::<T>(name) }
        .map(|s| *s)
        .map_err(|e| format!("libnvrtc lacks {name}: {e}"))
}

impl Nvrtc {
    /// Loads `<lib_dir>/libnvrtc-builtins.so.13.0` then `<lib_dir>/libnvrtc.so.13`.
    pub fn load(lib_dir: &Path) -> Result<Self, String> {
        // libnvrtc dlopens its builtins by soname; loading them first by absolute path makes that
        // lookup find the already-loaded copy.
        let builtins = open(&lib_dir.join("libnvrtc-builtins.so.13.0"))?;
        let lib = open(&lib_dir.join("libnvrtc.so.13"))?;
        Ok(Nvrtc {
            version: symbol(&lib, "nvrtcVersion")?,
            create: symbol(&lib, "nvrtcCreateProgram")?,
            destroy: symbol(&lib, "nvrtcDestroyProgram")?,
            compile: symbol(&lib, "nvrtcCompileProgram")?,
            log_size: symbol(&lib, "nvrtcGetProgramLogSize")?,
            log: symbol(&lib, "nvrtcGetProgramLog")?,
            ptx_size: symbol(&lib, "nvrtcGetPTXSize")?,
            ptx: symbol(&lib, "nvrtcGetPTX")?,
            error_string: symbol(&lib, "nvrtcGetErrorString")?,
            _lib: lib,
            _builtins: builtins,
        })
    }

    /// "major.minor" of the loaded NVRTC.
    pub fn version(&self) -> Result<String, String> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        self.check(
            unsafe { (self.version)(&mut major, &mut minor) },
            "nvrtcVersion",
        )?;
        Ok(format!("{major}.{minor}"))
    }

    fn error_name(&self, status: Status) -> String {
        // SAFETY: nvrtcGetErrorString returns a static C string (or null) for any value.
        let p = unsafe { (self.error_string)(status) };
        if p.is_null() {
            return format!("NVRTC error {status}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, status: Status, call: &str) -> Result<(), String> {
        if status == 0 {
            Ok(())
        } else {
            Err(format!("{call}: {}", self.error_name(status)))
        }
    }

    /// Reads a NUL-terminated text (log or PTX) of the program through its size/get pair.
    fn text(&self, prog: Program, size: SizeFn, get: TextFn, what: &str) -> Result<String, String> {
        let mut n = 0usize;
        // SAFETY: `prog` is a live program; `n` a valid out-pointer.
        self.check(unsafe { size(prog, &mut n) }, what)?;
        let mut buf = vec![0u8; n.max(1)];
        // SAFETY: the buffer holds the `n` bytes NVRTC said it would write.
        self.check(unsafe { get(prog, buf.as_mut_ptr().cast()) }, what)?;
        while buf.last() == Some(&0) {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|e| format!("{what}: not UTF-8: {e}"))
    }

    /// Compiles one CUDA source to PTX. `name` appears in diagnostics. On failure the error holds
    /// NVRTC's full log.
    pub fn compile(&self, source: &str, name: &str, options: &[String]) -> Result<Output, String> {
        let c = |s: &str| CString::new(s).map_err(|_| format!("{name}: interior NUL in {s:?}"));
        let src = c(source)?;
        let cname = c(name)?;
        let copts = options
            .iter()
            .map(|o| c(o))
            .collect::<Result<Vec<_>, _>>()?;
        let opt_ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();

        let mut prog: Program = ptr::null_mut();
        // SAFETY: valid C strings; zero headers with null arrays is allowed.
        let status = unsafe {
            (self.create)(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                ptr::null(),
                ptr::null(),
            )
        };
        self.check(status, "nvrtcCreateProgram")?;

        // SAFETY: `prog` is live; the option pointers outlive the call.
        let status = unsafe { (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        let log = self.text(prog, self.log_size, self.log, "nvrtcGetProgramLog");
        let result = match (status, log) {
            (0, Ok(log)) => self
                .text(prog, self.ptx_size, self.ptx, "nvrtcGetPTX")
                .map(|ptx| Output { ptx, log }),
            (0, Err(e)) => Err(e),
            (s, log) => Err(format!(
                "{}\n{}",
                self.error_name(s),
                log.unwrap_or_else(|e| format!("(no log: {e})"))
            )),
        };
        // SAFETY: `prog` was created above and is destroyed exactly once.
        let _ = unsafe { (self.destroy)(&mut prog) };
        result
    }
}
