//! `instagen bench cpu` from the command line, without PyTorch: our side alone on the smallest case, the
//! PyTorch side replaced by fake "python" scripts (what we send them, how their JSON lines are read, the ratio),
//! and bad input (an unknown filter, a Python that is missing, fails, or prints garbage; flags that do not
//! apply).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CASE: &str = "unet-fixture.fwd";

fn instagen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_instagen"))
        .args(args)
        .env_remove("INSTAGEN_BACKEND")
        .env_remove("INSTAGEN_TORCH_PYTHON")
        .output()
        .expect("run instagen")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_bench_cpu_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An executable shell script `name` in `dir` standing in for python.
fn fake_python(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[track_caller]
fn succeeds(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A clean failure (non-zero exit, no panic, no signal) whose stderr names every one of `culprits`.
#[track_caller]
fn fails_naming(out: &Output, culprits: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code();
    assert!(code.is_some() && code != Some(0) && code != Some(101) && !err.contains("panicked"), "{:?}\n{err}", out.status);
    for c in culprits {
        assert!(err.contains(c), "the message does not name {c:?}:\n{err}");
    }
    err
}

/// The table row of `case`: its whitespace-separated fields.
fn row<'a>(table: &'a str, case: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.starts_with(case)).unwrap_or_else(|| panic!("no row {case} in\n{table}"));
    line.split_whitespace().collect()
}

#[test]
fn ours_alone_says_how_to_get_the_peer() {
    let out = instagen(&["bench", "cpu", "--filter", CASE, "--min-seconds", "0", "--threads", "2"]);
    let table = succeeds(&out);
    assert!(table.contains("threads: ours 2 (rayon)"), "{table}");
    assert!(table.contains("backend cpu (the engine"), "{table}");
    assert!(table.contains("torch: not run") && table.contains("--torch PYTHON"), "{table}");
    // case, ours (value unit), runs, torch "-", runs "-", ratio "-", what...
    let r = row(&table, CASE);
    assert!(r[1].parse::<f64>().unwrap() > 0.0, "{r:?}");
    assert!(r[3].parse::<usize>().unwrap() >= 1, "{r:?}");
    assert_eq!(&r[4..7], ["-", "-", "-"], "{r:?}");
    assert_eq!(table.lines().filter(|l| l.starts_with("unet-") || l.starts_with("clip") || l.starts_with("conv")).count(), 1, "{table}");
}

#[test]
fn fake_peer_gets_the_script_and_its_figures_make_the_ratio() {
    let dir = temp_dir("fake");
    // Records its arguments and stdin, then answers for the case it was asked (the word after --cases).
    let py = fake_python(
        &dir,
        "python",
        &format!(
            "echo \"$@\" > {d}/args.txt\ncat > {d}/stdin.txt\nwhile [ $# -gt 0 ]; do [ \"$1\" = --cases ] && c=$2; shift; done\n\
             echo 'some warning on stderr' >&2\n\
             echo '{{\"torch\": \"fake-1.0\", \"threads\": 2}}'\n\
             echo \"{{\\\"case\\\": \\\"$c\\\", \\\"seconds\\\": 0.5, \\\"runs\\\": 7}}\"",
            d = dir.display()
        ),
    );
    let json = dir.join("out.json");
    let args = ["bench", "cpu", "--backend", "cpu-reference", "--filter", CASE, "--min-seconds", "0", "--threads", "2"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--torch", py.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    let table = succeeds(&instagen(&args));
    // What the peer was given: the case, our thread count, and tools/bench_cpu_torch.py on stdin.
    let sent = std::fs::read_to_string(dir.join("args.txt")).unwrap();
    assert!(sent.starts_with("- ") && sent.contains(&format!("--cases {CASE} --threads 2 --min-seconds 0")), "{sent}");
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/bench_cpu_torch.py")).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("stdin.txt")).unwrap(), script);
    // The JSON: the peer's figures, ours, and the ratio of the two.
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["backend"], "cpu-reference");
    assert_eq!((v["threads"].as_u64(), v["torch"]["version"].as_str(), v["torch"]["threads"].as_u64()), (Some(2), Some("fake-1.0"), Some(2)));
    let c = &v["cases"][0];
    assert_eq!(v["cases"].as_array().unwrap().len(), 1);
    assert_eq!((c["case"].as_str(), c["torch"]["seconds"].as_f64(), c["torch"]["runs"].as_u64()), (Some(CASE), Some(0.5), Some(7)));
    let ours = c["ours"]["seconds"].as_f64().unwrap();
    assert!(ours > 0.0 && c["ours"]["runs"].as_u64().unwrap() >= 1, "{c}");
    let ratio = c["ratio"].as_f64().unwrap();
    assert!((ratio - ours / 0.5).abs() <= 1e-12 * ratio, "{ratio} vs {ours} / 0.5");
    // The table: the peer's version and threads, its time, runs and the same ratio.
    assert!(table.contains("backend cpu-reference") && table.contains("torch 2 (torch fake-1.0"), "{table}");
    let r = row(&table, CASE);
    assert_eq!(&r[4..7], ["500.00", "ms", "7"], "{r:?}");
    assert_eq!(r[7], format!("{ratio:.2}"), "{r:?}");
    assert!(!table.contains("warning: torch ran"), "{table}");

    // A peer on another thread count is reported.
    let py3 = fake_python(
        &dir,
        "python3threads",
        &format!("cat > /dev/null\necho '{{\"torch\": \"fake\", \"threads\": 3}}'\necho '{{\"case\": \"{CASE}\", \"seconds\": 1e-3, \"runs\": 1}}'"),
    );
    let table = succeeds(&instagen(&["bench", "cpu", "--filter", CASE, "--min-seconds", "0", "--threads", "2", "--torch", py3.to_str().unwrap()]));
    assert!(table.contains("warning: torch ran 3 threads, ours 2"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clean_error() {
    let dir = temp_dir("bad");
    let base = |extra: &[&str]| {
        let mut a = vec!["bench", "cpu", "--filter", CASE, "--min-seconds", "0", "--threads", "1"];
        a.extend_from_slice(extra);
        instagen(&a)
    };
    // An unknown filter names itself and the cases.
    fails_naming(&instagen(&["bench", "cpu", "--filter", "no-such-case"]), &["no-such-case", "unet-sd1.fwd", "attention.fwd"]);
    // A missing python, one that fails, one that prints garbage, one that forgets the case.
    fails_naming(&base(&["--torch", "/nonexistent/python3"]), &["/nonexistent/python3", "could not start"]);
    let failing = fake_python(&dir, "failing", "cat > /dev/null\necho 'ModuleNotFoundError: no module named torch' >&2\nexit 3");
    fails_naming(&base(&["--torch", failing.to_str().unwrap()]), &[failing.to_str().unwrap(), "exit status: 3", "no module named torch"]);
    let garbage = fake_python(&dir, "garbage", "cat > /dev/null\necho 'hello there'");
    fails_naming(&base(&["--torch", garbage.to_str().unwrap()]), &[garbage.to_str().unwrap(), "line 1", "hello there"]);
    let silent = fake_python(&dir, "silent", "cat > /dev/null\necho '{\"torch\": \"fake\", \"threads\": 1}'");
    fails_naming(&base(&["--torch", silent.to_str().unwrap()]), &["printed no result for case unet-fixture.fwd"]);
    // INSTAGEN_TORCH_PYTHON is used when --torch is not given.
    let out = Command::new(env!("CARGO_BIN_EXE_instagen"))
        .args(["bench", "cpu", "--filter", CASE, "--min-seconds", "0"])
        .env("INSTAGEN_TORCH_PYTHON", failing.to_str().unwrap())
        .output()
        .unwrap();
    fails_naming(&out, &[failing.to_str().unwrap(), "exit status: 3"]);
    // Flags that do not apply.
    fails_naming(&base(&["--backend", "emu"]), &["not a CPU backend", "cpu-reference"]);
    fails_naming(&base(&["--batch", "4"]), &["--batch", "bench cpu"]);
    fails_naming(&instagen(&["bench", "unet", "--config", "fixture", "--torch", "python3"]), &["--torch", "bench cpu and bench detect only"]);
    fails_naming(&instagen(&["bench", "cpu", "--filter", CASE, "--threads", "0"]), &["--threads"]);
    let _ = std::fs::remove_dir_all(&dir);
}
