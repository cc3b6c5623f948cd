//! CPU emulation of the kernels: every `kernels/*.cu` is compiled with the host C++ compiler
//! (`-DINSTAGEN_EMU -std=c++17 -O2`, `kernels/emu/cuda_emu.h` force-included) together with the
//! emulator runtime (`kernels/emu/*.cpp`) into the static library `instagen_emu`, linked into the
//! crate. Needs only a C++17 compiler (no CUDA). Generates `OUT_DIR/emu_gen.rs` (included by
//! `src/backend/emu/ffi.rs`): the launcher declarations and the `(file, kernel, launcher)` table.
//!
//! Each `.cu` becomes one translation unit `OUT_DIR/emu/<stem>.cpp` that holds the `.cu` text (behind a
//! `#line`, with static `__shared__` arrays turned into the emulator's per-worker, per-block poisoned
//! copies, see [`emu_source`]; the `kernels/*.cuh` it includes get the same treatment in copies next to it)
//! inside an anonymous namespace (so helpers of different files
//! never collide; kernels lose their C linkage there) and defines, per `extern "C" __global__` kernel, `extern "C" int
//! instagen_emu_launch_<kernel>(const instagen_emu_dims*, void**)`. A second unit `<stem>.checked.cpp`
//! compiles the same text with `-fsanitize=thread -DINSTAGEN_EMU_RACECHECK` (launchers
//! `instagen_emu_launch_checked_<kernel>`): the race-check copy, whose shared-memory accesses reach the
//! emulator's `__tsan_*` hooks (the TSan runtime is never linked). Race variants (see [`VARIANTS`]) add units
//! of a `.cu` built with `-DINSTAGEN_DROP=<n>`. Objects are cached in `OUT_DIR/emu/` by a hash of their
//! inputs, so editing one kernel recompiles its units (editing a header recompiles all). A C++ error fails
//! the build with the compiler output.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One kernel found in a `.cu` file.
struct Kernel {
    file: String,
    name: String,
}

/// One C++ translation unit to compile.
struct Unit {
    /// What to call it in messages (`kernels/x.cu`, `kernels/emu/runtime.cpp`).
    label: String,
    source: PathBuf,
    /// Force-include the emulation header.
    include_header: bool,
    /// Extra compiler arguments (the race-check copies, the race variants).
    args: Vec<String>,
    /// Content hashed (besides the command line) to name the cached object.
    key_inputs: Vec<u8>,
}

/// Race variants of kernels for `tests/emu_races.rs`: `(variant, file stem, n)` compiles `kernels/<stem>.cu`
/// with `-DINSTAGEN_DROP=n`, which leaves out the barrier or `cp.async` wait marked `INSTAGEN_DROPPABLE(n)`
/// (kernels/common.cuh). The emulator must catch each (wrong results, and a race report in checked mode).
/// Found by `ffi::with_variant`, never by plain kernel lookups.
pub const VARIANTS: &[(&str, &str, u32)] = &[
    ("attention_no_end_barrier", "attention", 1),
    ("attention_no_tile_barrier", "attention", 2),
    ("gemm_no_wait", "gemm", 3),
];

/// Compiler arguments of the race-check copies.
fn racecheck_args(crate_dir: &Path) -> Vec<String> {
    vec![
        "-fsanitize=thread".into(),
        "--param=tsan-instrument-func-entry-exit=0".into(),
        "-DINSTAGEN_EMU_RACECHECK".into(),
        // Line tables, with kernels/x.cu paths, so races name file:line (addr2line).
        "-g1".into(),
        format!("-fdebug-prefix-map={}/=", crate_dir.display()),
    ]
}

/// Builds the emulator library and writes `emu_gen.rs`. Panics (failing the build) on any error.
pub fn build(kernels_dir: &Path, out_dir: &Path, sources: &[PathBuf]) {
    let crate_dir = kernels_dir.parent().unwrap_or(kernels_dir);
    let emu_dir = kernels_dir.join("emu");
    let header = emu_dir.join("cuda_emu.h");
    let gen_dir = out_dir.join("emu");
    fs::create_dir_all(&gen_dir)
        .unwrap_or_else(|e| panic!("instagen build: cannot create {}: {e}", gen_dir.display()));
    let headers = header_bytes(kernels_dir, &emu_dir);

    let base = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .extra_warnings(false)
        .define("INSTAGEN_EMU", None)
        .include(kernels_dir)
        // Messages name kernels/x.cu rather than an absolute path.
        .flag_if_supported(format!("-fmacro-prefix-map={}/=", crate_dir.display()))
        // Kernels pun types freely (float4 loads, half2 <-> unsigned), as CUDA allows.
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-fno-math-errno")
        // Large kernel frames probe every page, so a fibre stack overflow hits its guard page.
        .flag_if_supported("-fstack-clash-protection")
        .to_owned();
    let compiler = base.get_compiler();

    let mut kernels: Vec<Kernel> = Vec::new();
    // The runtime: every kernels/emu/*.cpp.
    let mut units: Vec<Unit> = list(&emu_dir, "cpp")
        .into_iter()
        .map(|source| Unit {
            label: format!(
                "kernels/emu/{}",
                source.file_name().unwrap_or_default().to_string_lossy()
            ),
            key_inputs: [read(&source), headers.clone()].concat(),
            source,
            include_header: false,
            args: Vec::new(),
        })
        .collect();
    let mut variant_kernels: Vec<(&str, Kernel)> = Vec::new();
    // Headers with static __shared__ arrays registered too: the TUs' directory comes first in the search for
    // a quoted #include, so these copies stand in for kernels/*.cuh.
    let mut keep: Vec<PathBuf> = Vec::new();
    for h in list(kernels_dir, "cuh") {
        let text = String::from_utf8_lossy(&read(&h)).into_owned();
        let copy = gen_dir.join(h.file_name().unwrap_or_default());
        let body = format!(
            "#line 1 {:?}\n{}",
            h.display().to_string(),
            emu_source(&text)
        );
        write_if_changed(&copy, body.as_bytes());
        keep.push(copy);
    }
    for src in sources {
        let file = super::stem(src);
        let text = String::from_utf8_lossy(&read(src)).into_owned();
        let names = kernel_names(&preprocess(&compiler, src));
        if names.is_empty() {
            continue;
        }
        let body = emu_source(&text);
        let mut add_unit = |name: String, prefix: &str, args: Vec<String>| {
            let tu = translation_unit(src, &body, &names, prefix);
            let tu_path = gen_dir.join(format!("{name}.cpp"));
            write_if_changed(&tu_path, tu.as_bytes());
            units.push(Unit {
                label: format!("kernels/{file}.cu ({name})"),
                source: tu_path,
                include_header: true,
                args,
                key_inputs: [tu.into_bytes(), headers.clone()].concat(),
            });
        };
        add_unit(file.clone(), "", Vec::new());
        add_unit(
            format!("{file}.checked"),
            "checked_",
            racecheck_args(crate_dir),
        );
        for (i, (variant, stem, n)) in VARIANTS.iter().enumerate() {
            if *stem != file {
                continue;
            }
            let drop = format!("-DINSTAGEN_DROP={n}");
            add_unit(
                format!("{file}.v{i}"),
                &format!("v{i}_"),
                vec![drop.clone()],
            );
            add_unit(
                format!("{file}.v{i}.checked"),
                &format!("checked_v{i}_"),
                [racecheck_args(crate_dir), vec![drop]].concat(),
            );
            for name in &names {
                variant_kernels.push((
                    *variant,
                    Kernel {
                        file: format!("v{i}_"),
                        name: name.clone(),
                    },
                ));
            }
        }
        for name in names {
            if let Some(k) = kernels.iter().find(|k| k.name == name) {
                panic!(
                    "instagen build: kernel {name} is defined in both kernels/{}.cu and kernels/{file}.cu; \
                     kernel names must be unique",
                    k.file
                );
            }
            kernels.push(Kernel {
                file: file.clone(),
                name,
            });
        }
    }
    for (variant, stem, _) in VARIANTS {
        if !variant_kernels.iter().any(|(v, _)| v == variant) {
            panic!(
                "instagen build: race variant {variant} names kernels/{stem}.cu, which has no kernels"
            );
        }
    }

    let objects = compile_all(&compiler, &units, &header, &gen_dir);
    prune(&gen_dir, &units, &[objects.clone(), keep].concat());
    let mut archive = cc::Build::new();
    archive.cpp(true).objects(&objects);
    if let Err(e) = archive.try_compile("instagen_emu") {
        panic!("instagen build: cannot archive the emulator library: {e}");
    }

    kernels.sort_by(|a, b| a.name.cmp(&b.name));
    variant_kernels.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    super::write(
        &out_dir.join("emu_gen.rs"),
        generated_rs(&kernels, &variant_kernels).as_bytes(),
    );
}

/// Files of `dir` with extension `ext`, sorted.
fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("instagen build: cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("instagen build: cannot read {}: {e}", path.display()))
}

/// Writes only when the content differs, so unchanged generated sources keep their mtime.
fn write_if_changed(path: &Path, bytes: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return;
    }
    super::write(path, bytes);
}

/// Every header a kernel may include (`kernels/*.cuh`, `kernels/*.h`, `kernels/emu/*.h`), with names,
/// in a stable order: part of every object's cache key.
fn header_bytes(kernels_dir: &Path, emu_dir: &Path) -> Vec<u8> {
    let mut paths: Vec<PathBuf> = [kernels_dir, emu_dir]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "cuh" || x == "h"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.to_string_lossy().as_bytes());
        out.extend_from_slice(&read(&p));
    }
    out
}

/// Removes `//` and `/* */` comments (string literals are left alone).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.extend_from_slice(&b[start..i]);
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i = (i + 2).min(b.len());
            out.push(b' ');
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `.cu` file after the C++ preprocessor, with the defines and include path of its compilation but without
/// the force-included emulation header (which defines `__global__` away): kernels made by macros
/// (`INSTAGEN_KERNELS_FLOAT` and friends in common.cuh) appear as `extern "C" __global__` text. Kernel sources
/// choose code by `INSTAGEN_EMU` only, never by a macro of that header, so the same kernels are seen.
fn preprocess(compiler: &cc::Tool, cu: &Path) -> String {
    let mut cmd = compiler.to_command();
    cmd.arg("-E").arg("-P").arg("-x").arg("c++").arg(cu);
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!(
            "instagen build: preprocessing {} for the CPU emulator failed ({}):\n{}",
            cu.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("instagen build: cannot run the C++ preprocessor on {}: {e}", cu.display()),
    }
}

/// Names of the `extern "C" __global__` kernels of a `.cu` source (preprocessed: see [`preprocess`]), in order.
/// `__launch_bounds__(...)` may appear before or after the return type.
fn kernel_names(src: &str) -> Vec<String> {
    const MARK: &str = "extern \"C\" __global__";
    let text = strip_comments(src);
    let mut names = Vec::new();
    for (at, _) in text.match_indices(MARK) {
        let rest = &text[at + MARK.len()..];
        let mut last_ident = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c.is_ascii_alphanumeric() || c == '_' {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                last_ident = rest[i..end].to_string();
            } else if c == '(' {
                if last_ident != "__launch_bounds__" {
                    break;
                }
                let mut depth = 1;
                for (_, d) in chars.by_ref() {
                    depth += match d {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        break;
                    }
                }
                last_ident.clear();
            }
        }
        if last_ident.is_empty() {
            panic!("instagen build: cannot find the kernel name after {MARK:?}");
        }
        names.push(last_ident);
    }
    names
}

/// A kernel source (`.cu` or `.cuh`) as the emulator compiles it, line for line: kernels lose their C
/// linkage (`extern "C" __global__` becomes `__global__`, so the several units of one file, inside anonymous
/// namespaces, never clash; only the launchers are global symbols), and every static `__shared__`
/// declaration becomes a reference to the running block's copy of the array, which the emulator keeps per
/// worker and poisons in every block (a `static thread_local` array would sit in every thread's static TLS
/// block, and there are many):
/// `__shared__ __align__(16) float s[2][64];` becomes
/// `static char instagen_emu_key_s; float (&s)[2][64] = INSTAGEN_EMU_STATIC_SMEM(s, instagen_emu_key_s);`
/// (the alignment is the emulator's, 128 bytes). One declarator per declaration, no initializer; also inside
/// macros. Comments, strings and `extern __shared__` are left alone.
fn emu_source(src: &str) -> String {
    static_shared_as_references(&without_c_linkage(src))
}

/// `src` with every `extern "C" __global__` (any whitespace between, kept) turned into `__global__`.
fn without_c_linkage(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("extern") {
        let after = &rest[at + "extern".len()..];
        let tail = after
            .trim_start()
            .strip_prefix("\"C\"")
            .map(str::trim_start);
        match tail.filter(|t| t.starts_with("__global__")) {
            Some(t) => {
                let gap = &rest[at..rest.len() - t.len()];
                out.push_str(&rest[..at]);
                // Keep the line breaks between, so line numbers stay.
                out.extend(gap.chars().filter(|&c| c == '\n'));
                rest = t;
            }
            None => {
                out.push_str(&rest[..at + "extern".len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn static_shared_as_references(src: &str) -> String {
    const KEY: &str = "__shared__";
    let b = src.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(src.len() + 256);
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i += b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .unwrap_or(b.len() - i);
        } else if b[i..].starts_with(b"/*") {
            i += src[i..].find("*/").map_or(b.len() - i, |e| e + 2);
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b[i..].starts_with(KEY.as_bytes())
            && (i == 0 || !ident(b[i - 1]))
            && !b.get(i + KEY.len()).is_some_and(|&c| ident(c))
            && !src[..i].trim_end().ends_with("extern")
        {
            // The declaration ends at the first `;` outside brackets; its name is the last identifier before
            // the first `[` at depth 0 (or the `;`).
            let (mut j, mut depth, mut dims) = (i + KEY.len(), 0i32, None);
            while j < b.len() && !(b[j] == b';' && depth == 0) {
                match b[j] {
                    b'[' if depth == 0 && dims.is_none() => {
                        dims = Some(j);
                        depth += 1;
                    }
                    b'(' | b'[' | b'{' => depth += 1,
                    b')' | b']' | b'}' => depth -= 1,
                    b'=' | b',' if depth == 0 => {
                        panic!(
                            "instagen build: a __shared__ declaration with an initializer or several names"
                        )
                    }
                    _ => {}
                }
                j += 1;
            }
            let dims = dims.unwrap_or(j);
            let head = src[i + KEY.len()..dims].trim_end();
            let name_len = head.bytes().rev().take_while(|&c| ident(c)).count();
            if j >= b.len() || name_len == 0 {
                panic!(
                    "instagen build: cannot parse the __shared__ declaration at byte {i} of a kernel source"
                );
            }
            let (specs, name) = head.split_at(head.len() - name_len);
            let specs = without_align(specs);
            out.push_str(&src[copied..i]);
            let _ = write!(
                out,
                "static char instagen_emu_key_{name}; {} (&{name}){} = INSTAGEN_EMU_STATIC_SMEM({name}, instagen_emu_key_{name});",
                specs.trim(),
                &src[dims..j]
            );
            copied = j + 1;
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out.push_str(&src[copied..]);
    out
}

/// `s` without its `__align__(...)` attributes.
fn without_align(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("__align__(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "__align__(".len()..];
        rest = after.find(')').map_or("", |e| &after[e + 1..]);
    }
    out.push_str(rest);
    out
}

/// The C++ translation unit of one `.cu` file (its text `body`), with launchers
/// `instagen_emu_launch_<prefix><kernel>`.
fn translation_unit(cu: &Path, body: &str, names: &[String], prefix: &str) -> String {
    let mut s = format!(
        "// @generated by build.rs (build/emu.rs): {} compiled for the CPU emulator.\n\
         namespace {{\n#line 1 {:?}\n{body}\n}}  // namespace\n\n",
        cu.display(),
        cu.display().to_string()
    );
    for n in names {
        let _ = writeln!(
            s,
            "extern \"C\" int instagen_emu_launch_{prefix}{n}(const instagen_emu_dims* d, void** args) {{\n    \
             return ::instagen_emu::launch<&{n}>(d, \"{n}\", args);\n}}"
        );
    }
    s
}

/// Compiles every unit (in parallel, reusing cached objects); returns the object paths.
fn compile_all(compiler: &cc::Tool, units: &[Unit], header: &Path, gen_dir: &Path) -> Vec<PathBuf> {
    let command = |u: &Unit, obj: Option<&Path>| {
        let mut cmd = compiler.to_command();
        if u.include_header {
            cmd.arg("-include").arg(header);
        }
        cmd.args(&u.args);
        cmd.arg("-c").arg(&u.source);
        if let Some(obj) = obj {
            cmd.arg("-o").arg(obj);
        }
        cmd
    };
    let objects: Vec<PathBuf> = units
        .iter()
        .map(|u| {
            let mut h = DefaultHasher::new();
            format!("{:?}", command(u, None)).hash(&mut h);
            u.key_inputs.hash(&mut h);
            let stem = u
                .source
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            gen_dir.join(format!("{stem}-{:016x}.o", h.finish()))
        })
        .collect();
    let todo: Vec<(&Unit, &PathBuf)> = units
        .iter()
        .zip(&objects)
        .filter(|(_, obj)| !obj.is_file())
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(todo.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    while let Some((unit, obj)) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let tmp = obj.with_extension("o.tmp");
                        let result = command(unit, Some(&tmp)).output();
                        match result {
                            Ok(out) if out.status.success() => {
                                if let Err(e) = fs::rename(&tmp, obj) {
                                    failed.push(format!(
                                        "{}: cannot rename {}: {e}",
                                        unit.label,
                                        tmp.display()
                                    ));
                                }
                            }
                            Ok(out) => failed.push(format!(
                                "{} ({}):\n{}{}",
                                unit.label,
                                out.status,
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            )),
                            Err(e) => failed
                                .push(format!("{}: cannot run the C++ compiler: {e}", unit.label)),
                        }
                    }
                    failed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a compiler thread panicked".to_string()])
            })
            .collect()
    });
    if !failures.is_empty() {
        panic!(
            "instagen build: compiling for the CPU emulator (kernels/emu/cuda_emu.h) failed:\n{}",
            failures.join("\n")
        );
    }
    objects
}

/// Removes generated sources and cached objects of earlier builds that this one no longer uses.
fn prune(gen_dir: &Path, units: &[Unit], keep: &[PathBuf]) {
    let Ok(entries) = fs::read_dir(gen_dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if !keep.contains(&path) && !units.iter().any(|u| u.source == path) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Rust source included by `src/backend/emu/ffi.rs` (which defines `Dims`, `EmuKernel`). `variants` hold
/// the launcher prefix (`v<i>_`) in `file`.
fn generated_rs(kernels: &[Kernel], variants: &[(&str, Kernel)]) -> String {
    let mut g = String::from(
        "// @generated by build.rs (build/emu.rs): the kernels compiled for the CPU emulator.\n\n\
         unsafe extern \"C\" {\n",
    );
    let launchers = kernels
        .iter()
        .map(|k| (String::new(), &k.name))
        .chain(variants.iter().map(|(_, k)| (k.file.clone(), &k.name)));
    for (prefix, name) in launchers {
        for checked in ["", "checked_"] {
            let _ = writeln!(
                g,
                "    fn instagen_emu_launch_{checked}{prefix}{name}(dims: *const Dims, args: *mut *mut c_void) -> c_int;"
            );
        }
    }
    let entry = |file: &str, prefix: &str, name: &str| {
        format!(
            "EmuKernel {{ file: {file:?}, name: {name:?}, launch: instagen_emu_launch_{prefix}{name}, \
             launch_checked: instagen_emu_launch_checked_{prefix}{name} }}"
        )
    };
    g.push_str("}\n\n/// Sorted by kernel name.\nstatic GEN_EMU_KERNELS: &[EmuKernel] = &[\n");
    for k in kernels {
        let _ = writeln!(g, "    {},", entry(&k.file, "", &k.name));
    }
    g.push_str(
        "];\n\n/// Race variants (build/emu.rs `VARIANTS`), sorted by variant and kernel name.\n\
                static GEN_EMU_VARIANTS: &[(&str, EmuKernel)] = &[\n",
    );
    for (v, k) in variants {
        let file = VARIANTS.iter().find(|x| x.0 == *v).map_or("", |x| x.1);
        let _ = writeln!(g, "    ({v:?}, {}),", entry(file, &k.file, &k.name));
    }
    g.push_str("];\n");
    g
}
