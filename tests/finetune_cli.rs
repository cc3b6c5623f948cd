//! `instagen finetune` end to end on the CPU: the small random-weight SD folder of tests/common/sd.rs and the
//! real coco128 crops (../shared/data). A run of N steps in one go and a run killed with SIGKILL after
//! checkpoint K and resumed to N end with bit-identical UNet parameters, optimiser state and EMA model; the
//! run's `model/` loads in `instagen sample`; bad input is a clear error. Skips without the shared data (fails
//! with INSTAGEN_REQUIRE_DATA=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use instagen::runtime::checkpoint;
use instagen::runtime::train_loop::kill_at_checkpoint;

const N: u64 = 8;
const K: u64 = 4;

struct Data {
    weights: PathBuf,
    instances: PathBuf,
    images: PathBuf,
}

fn data(tag: &str) -> Option<Data> {
    let instances = common::shared_data("coco128/annotations/instances_train2017.json")?;
    let images = common::shared_data("coco128/train2017")?;
    let weights = common::sd::assemble(tag)?;
    Some(Data { weights, instances, images })
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_ft_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn finetune(d: &Data, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_instagen"));
    c.arg("finetune")
        .arg("--weights").arg(&d.weights)
        .arg("--data").arg(&d.instances)
        .arg("--images").arg(&d.images)
        .arg("--out").arg(out)
        .args(["--resolution", "32", "--batch", "2", "--lr", "1e-3", "--ema-decay", "0.9", "--save-every", "2"])
        .args(["--backend", "cpu", "--workers", "2", "--seed", "5"])
        .args(["--steps", &steps.to_string()])
        .args(extra);
    if !extra.contains(&"--dtype") {
        c.args(["--dtype", "f32"]);
    }
    c
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let Some(d) = data("ft_kill") else { return };
    let (a, b) = (tmp("whole"), tmp("killed"));
    run_ok(finetune(&d, &a, N, &[]));

    let killed = kill_at_checkpoint(&mut finetune(&d, &b, N, &[]), &b, K, Duration::from_secs(600)).unwrap();
    assert!(killed, "the run finished before it could be killed after checkpoint {K}");
    assert!(!b.join("model").exists(), "a killed run must not have written its model");
    let newest = checkpoint::latest(&b).unwrap().expect("a checkpoint survives the kill");
    let text = run_ok(finetune(&d, &b, N, &["--resume"]));
    let resumed_at = checkpoint::read_state(&newest).unwrap().step;
    assert!(text.contains(&format!("resumed from step {resumed_at}")), "{text}");
    eprintln!("killed after checkpoint {K}, resumed from step {resumed_at}");

    let last = format!("checkpoints/step-{N:06}");
    for f in [format!("{last}/params.safetensors"), format!("{last}/optim.safetensors"), format!("{last}/ema.safetensors"), "model/unet/diffusion_pytorch_model.safetensors".into()] {
        assert!(bytes(&a.join(&f)) == bytes(&b.join(&f)), "{f} differs between the whole and the resumed run");
    }
    // Every step appears once in the resumed run's metrics, with the same losses as the whole run's.
    let losses = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["step"], v["losses"]["mse"])
        }).collect()
    };
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(losses(&a).len() as u64, N);

    // The run's model is a diffusers folder `instagen sample` loads as it is.
    let s = a.join("samples");
    let mut c = Command::new(env!("CARGO_BIN_EXE_instagen"));
    c.arg("sample").arg("--weights").arg(a.join("model")).args(["--prompt", "a photograph of dog", "--steps", "2"])
        .arg("--out").arg(&s).args(["--backend", "cpu", "--dtype", "f32"]);
    run_ok(c);
    assert!(s.join("42_0.png").is_file());
    for dir in [a, b] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `--dtype f16` trains with dynamic loss scaling: every step logs GradScaler's scale and finite unscaled losses,
/// and the checkpoint's trainer state carries the scale and its count of good steps; f32 logs no scale.
#[test]
fn f16_run_logs_the_loss_scale() {
    let Some(d) = data("ft_f16") else { return };
    let (a, b) = (tmp("f16"), tmp("f32"));
    run_ok(finetune(&d, &a, 3, &["--dtype", "f16"]));
    run_ok(finetune(&d, &b, 1, &[]));
    let metrics = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let m = metrics(&a);
    assert_eq!(m.len(), 3);
    for r in &m {
        eprintln!("f16: {r}");
        assert_eq!(r["loss_scale"].as_f64(), Some(65536.0), "{r}");
        assert_eq!(r["skipped"], false, "{r}");
        assert!(r["losses"]["mse"].as_f64().is_some_and(|l| l.is_finite() && l > 0.0), "{r}");
    }
    let state = checkpoint::read_state(&a.join("checkpoints/step-000002")).unwrap();
    let tr = &state.scalars["trainer"];
    assert_eq!((tr["loss_scale"].as_f64(), tr["good_steps"].as_u64(), tr["skipped_steps"].as_u64()), (Some(65536.0), Some(2), Some(0)), "{tr}");
    let m = metrics(&b);
    assert!(m[0].get("loss_scale").map_or(true, |v| v.is_null()), "f32 logs no loss scale: {}", m[0]);
    for p in [a, b] {
        let _ = std::fs::remove_dir_all(p);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some(d) = data("ft_bad") else { return };
    let fail = |mut c: Command, want: &[&str]| {
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{c:?} succeeded");
        for w in want {
            assert!(err.contains(w), "error lacks '{w}':\n{err}");
        }
    };
    let out = tmp("bad");
    fail(finetune(&d, &out, 2, &["--categories", "dog,unicorn"]), &["unicorn"]);
    fail(finetune(&d, &out, 2, &["--resolution", "30"]), &["resolution"]);
    let missing = Data { images: out.join("no_such_folder"), weights: d.weights.clone(), instances: d.instances.clone() };
    fail(finetune(&missing, &out, 2, &[]), &["no_such_folder"]);
    // A run folder with checkpoints is not overwritten without --resume; a resume with other settings names them.
    run_ok(finetune(&d, &out, 2, &[]));
    fail(finetune(&d, &out, 4, &[]), &["already holds checkpoints"]);
    fail(finetune(&d, &out, 4, &["--resume", "--lr", "2e-3"]), &["lr"]);
    let _ = std::fs::remove_dir_all(out);
}
