//! Shared set-up of the `instagen generate` tests: the small random-weight SD folder of [`super::sd`] (32x32 images,
//! 16x16 latents) and a random tiny grounding head from `instagen ground init --config tiny`, plus helpers to run the
//! binary and read a dataset folder back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct GenFixture {
    pub root: PathBuf,
    pub sd: PathBuf,
    pub head: PathBuf,
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_instagen"))
}

/// Runs `c`; panics with its output unless it succeeds. Returns stdout + stderr.
pub fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

/// Runs `c`, which must fail with every string of `want` in its stderr; returns stderr.
pub fn run_err(mut c: Command, want: &[&str]) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{c:?} succeeded:\n{}", String::from_utf8_lossy(&o.stdout));
    for w in want {
        assert!(err.contains(w), "error lacks {w:?}:\n{err}");
    }
    err
}

/// The SD folder and a tiny random head under a fresh temp folder (`None`: skip, no CLIP vocabulary).
pub fn fixture(tag: &str) -> Option<GenFixture> {
    let root = std::env::temp_dir().join(format!("instagen_gen_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let sd = super::sd::assemble_at(&root.join("sd"))?;
    let head = root.join("head");
    let mut c = bin();
    c.args(["ground", "init", "--config", "tiny", "--seed", "3"]).arg("--sd").arg(&sd).arg("--out").arg(&head);
    run_ok(c);
    Some(GenFixture { root, sd, head })
}

impl GenFixture {
    /// `instagen generate` on the fixture with the test defaults (4 categories, 2 steps, score 0 so the random head
    /// keeps boxes, cpu backend, seed 7) and `extra` flags, which replace a default of the same flag.
    pub fn generate(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = bin();
        c.arg("generate").arg("--sd").arg(&self.sd).arg("--head").arg(&self.head).arg("--out").arg(out);
        let has = |f: &str| extra.contains(&f);
        for (flag, value) in [
            ("--categories", "person,dog,cat,hot dog"),
            ("--images-per-category", "2"),
            ("--steps", "2"),
            ("--score", "0"),
            ("--backend", "cpu"),
            ("--seed", "7"),
        ] {
            if !has(flag) {
                c.args([flag, value]);
            }
        }
        c.args(extra);
        c
    }
}

/// Every file under `dir` (relative path -> bytes); `generate.json` without its `command` (which names the folder).
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if rel == "generate.json" {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                v.as_object_mut().unwrap().remove("command");
                bytes = serde_json::to_vec(&v).unwrap();
            }
            out.insert(rel, bytes);
        }
    }
    out
}

/// Asserts two folders hold the same files with the same bytes (naming the first difference).
pub fn assert_same_files(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    let ka: Vec<&String> = fa.keys().collect();
    let kb: Vec<&String> = fb.keys().collect();
    assert_eq!(ka, kb, "file lists of {} and {} differ", a.display(), b.display());
    for (k, v) in &fa {
        assert!(v == &fb[k], "{k} differs between {} and {}", a.display(), b.display());
    }
}
