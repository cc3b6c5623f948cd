//! Crash safety of `instagen generate` (issue 14 item 2): a CPU run on the small random-weight SD folder is killed
//! with SIGKILL at ten seeded random moments (scaled to the expected remaining time), rerun after each kill, and finally run to the end; after every kill no
//! record lacks its complete image and latent, and the final folder equals an uninterrupted run's file for file
//! (no image lost, duplicated or truncated, no temporary file left, instances.json byte-equal).
//! Skips without the CLIP vocabulary data.

mod common;

use std::time::Instant;

use common::generate::{assert_same_files, files, fixture, run_ok};

/// Records present in `dir` have their image and latent, byte-equal to the reference run's.
fn check_consistent(dir: &std::path::Path, reference: &std::collections::BTreeMap<String, Vec<u8>>) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir.join("records")) else { return 0 };
    for e in rd {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let rel = format!("records/{name}");
        let bytes = std::fs::read(dir.join(&rel)).unwrap();
        assert_eq!(Some(&bytes), reference.get(&rel), "{rel} is not the uninterrupted run's");
        let r: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for key in ["file_name", "latent"] {
            let f = r[key].as_str().unwrap();
            let got = std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{rel}: its {key} {f} is missing: {e}"));
            assert!(Some(&got) == reference.get(f), "{rel}: its {key} {f} differs from the uninterrupted run's (truncated?)");
        }
        n += 1;
    }
    n
}

#[test]
fn ten_kills_then_the_same_dataset() {
    let Some(f) = fixture("kill") else { return };
    let flags = ["--batch", "2", "--images-per-category", "3"];
    let reference = f.root.join("reference");
    let t = Instant::now();
    run_ok(f.generate(&reference, &flags));
    let full = t.elapsed();
    let rf = files(&reference);
    assert_eq!(rf.keys().filter(|k| k.starts_with("records/")).count(), 12);

    let out = f.root.join("killed");
    let mut rng = instagen::util::Rng::new(20261204);
    let mut progress = Vec::new();
    let mut done = 0;
    for kill in 0..10 {
        let mut c = f.generate(&out, &flags);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        // A moment in the run's expected remaining time (so later runs are not all past the end).
        let remaining = (1.0 - done as f32 / 12.0).max(0.25);
        let at = full.mul_f32(rng.range(0.05, 1.0) * remaining);
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        done = check_consistent(&out, &rf);
        progress.push((kill, at.as_millis(), status.code(), done));
    }
    println!("kills (n, after ms, exit code (None = killed), records present): {progress:?}; uninterrupted run {} ms", full.as_millis());
    assert!(progress.iter().filter(|p| p.2.is_none()).count() >= 6, "most runs must really be killed: {progress:?}");
    assert!(progress.iter().any(|p| p.2.is_none() && p.3 > 0 && p.3 < 12), "some kill must land between images: {progress:?}");
    let text = run_ok(f.generate(&out, &flags));
    assert!(text.contains("were done before"), "{text}");
    assert_same_files(&out, &reference);
    let _ = std::fs::remove_dir_all(&f.root);
}
