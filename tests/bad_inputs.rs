//! Every class of bad input to the `instagen` binary is a clean error: a non-zero exit status (not a signal, not
//! a panic) and a message naming the flag, config field, file or tensor at fault. One test per class of issue 9;
//! tools/hostile_inputs.py runs a broader corpus. Tests on `sample` use the small diffusers folder of
//! tests/common/sd.rs (skipped without ../shared/data, failed with INSTAGEN_REQUIRE_DATA=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn instagen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_instagen")).args(args).env_remove("INSTAGEN_BACKEND").output().expect("run instagen")
}

/// Asserts a clean failure whose stderr names every one of `culprits`; returns stderr.
#[track_caller]
fn fails_naming(out: &Output, culprits: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code();
    assert!(code.is_some(), "killed by a signal: {:?}\n{err}", out.status);
    assert!(code != Some(0), "exit status 0 on bad input\n{err}");
    assert!(code != Some(101) && !err.contains("panicked"), "panic:\n{err}");
    for c in culprits {
        assert!(err.contains(c), "the message does not name {c:?}:\n{err}");
    }
    err
}

#[track_caller]
fn succeeds(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `sample` on `sd` with small settings; `extra` pairs override or add flags.
fn sample(sd: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sample", "--weights", s(sd), "--prompt", "a cat", "--steps", "2", "--batch", "1", "--out", s(out),
        "--backend", "cpu", "--dtype", "f32"];
    for kv in extra.chunks(2) {
        match args.iter().position(|a| *a == kv[0]) {
            Some(i) if kv.len() == 2 => args[i + 1] = kv[1],
            _ => args.extend_from_slice(kv),
        }
    }
    instagen(&args)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(path, serde_json::to_string(&j).unwrap()).unwrap();
}

/// A valid ground truth: one image, one box.
const GT: &str = r#"{"images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "cat"}]}"#;

struct Sd(PathBuf);
impl Drop for Sd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sd(tag: &str) -> Option<Sd> {
    common::sd::assemble(&format!("bad_{tag}")).map(Sd)
}

/// `INSTAGEN_SD_FIXTURE_OUT=DIR cargo test --test bad_inputs -- --ignored write_sd_fixture` writes the folder
/// to DIR (tools/hostile_inputs.py uses it).
#[test]
#[ignore]
fn write_sd_fixture() {
    let dir = std::env::var_os("INSTAGEN_SD_FIXTURE_OUT").expect("set INSTAGEN_SD_FIXTURE_OUT");
    assert!(common::sd::assemble_at(Path::new(&dir)).is_some(), "no CLIP vocabulary data");
}

#[test]
fn huge_sizes_are_checked_before_allocating() {
    let Some(sd) = sd("sizes") else { return };
    let out = sd.0.join("out");
    let e = fails_naming(&sample(&sd.0, &out, &["--batch", "18446744073709551615"]), &["--batch"]);
    assert!(!e.contains("capacity overflow"), "{e}");
    for (flag, v) in [("--latent", "1073741824"), ("--batch", "100000"), ("--latent", "100000")] {
        let e = fails_naming(&sample(&sd.0, &out, &[flag, v]), &[flag, v, "bytes"]);
        assert!(e.contains("available"), "{e}");
    }
    edit_json(&sd.0.join("unet/config.json"), |j| j["sample_size"] = serde_json::json!(1_000_000_000));
    fails_naming(&sample(&sd.0, &out, &[]), &["sample_size", "unet/config.json", "bytes"]);
    fails_naming(&instagen(&["bench", "unet", "--latent", "100000", "--backend", "cpu"]), &["--latent", "100000", "bytes"]);
    fails_naming(&instagen(&["bench", "unet", "--config", s(&sd.0.join("unet")), "--backend", "cpu"]), &["sample_size", "bytes"]);
    assert!(!out.join("42.json").exists());
}

#[test]
fn non_finite_weights_guidance_and_betas_are_errors() {
    let Some(sd) = sd("finite") else { return };
    let out = sd.0.join("out");
    for g in ["nan", "inf", "1e308", "-1", "101"] {
        fails_naming(&sample(&sd.0, &out, &["--guidance", g]), &["--guidance"]);
    }
    // Betas outside (0, 1).
    std::fs::create_dir_all(sd.0.join("scheduler")).unwrap();
    let sched = sd.0.join("scheduler/scheduler_config.json");
    for (key, v) in [("beta_start", 0.0), ("beta_end", 1.0), ("beta_end", 2.0), ("beta_start", -0.1)] {
        let mut j = serde_json::json!({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"});
        j[key] = serde_json::json!(v);
        std::fs::write(&sched, j.to_string()).unwrap();
        fails_naming(&sample(&sd.0, &out, &[]), &[key, "scheduler_config.json"]);
    }
    std::fs::remove_file(&sched).unwrap();
    // NaN in one UNet weight: the DDIM step that first sees it is named; no image is written.
    let unet = sd.0.join("unet/diffusion_pytorch_model.safetensors");
    let good = std::fs::read(&unet).unwrap();
    let mut w = instagen::params::ParamStore::load_safetensors(&unet).unwrap();
    let t = w.get("conv_out.bias").unwrap().clone();
    w.insert("conv_out.bias", instagen::HostTensor::from_f32(&t.shape, t.dtype, &vec![f32::NAN; t.numel()]).unwrap());
    w.save_safetensors(&unet).unwrap();
    fails_naming(&sample(&sd.0, &out, &[]), &["UNet output at step 1/2", "not finite"]);
    assert!(!out.join("42_0.png").exists() && !out.join("42.json").exists());
    std::fs::write(&unet, good).unwrap();
    // Infinity in the VAE decoder's last bias: the images are named.
    let vae = sd.0.join("vae/diffusion_pytorch_model.fp16.safetensors");
    let mut w = instagen::params::ParamStore::load_safetensors(&vae).unwrap();
    let t = w.get("decoder.conv_out.bias").unwrap().clone();
    w.insert("decoder.conv_out.bias", instagen::HostTensor::from_f32(&t.shape, t.dtype, &vec![f32::INFINITY; t.numel()]).unwrap());
    w.save_safetensors(&vae).unwrap();
    fails_naming(&sample(&sd.0, &out, &[]), &["VAE decoder output", "not finite"]);
    assert!(!out.join("42_0.png").exists());
}

#[test]
fn vae_scaling_factor_is_used_and_validated() {
    let Some(sd) = sd("scale") else { return };
    let cfg = sd.0.join("vae/config.json");
    let (a, b) = (sd.0.join("a"), sd.0.join("b"));
    edit_json(&cfg, |j| j["scaling_factor"] = serde_json::json!(0.18215));
    succeeds(&sample(&sd.0, &a, &[]));
    edit_json(&cfg, |j| j["scaling_factor"] = serde_json::json!(0.5));
    succeeds(&sample(&sd.0, &b, &[]));
    let (pa, pb) = (std::fs::read(a.join("42_0.png")).unwrap(), std::fs::read(b.join("42_0.png")).unwrap());
    assert_ne!(pa, pb, "scaling_factor 0.5 and 0.18215 give the same image");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("42.json")).unwrap()).unwrap();
    assert_eq!(meta["vae_scaling_factor"].as_f64(), Some(0.5));
    for v in ["0", "-0.5"] {
        edit_json(&cfg, |j| j["scaling_factor"] = serde_json::from_str(v).unwrap());
        fails_naming(&sample(&sd.0, &sd.0.join("c"), &[]), &["scaling_factor", "vae/config.json"]);
    }
}

#[test]
fn tokenizer_ids_beyond_the_vocabulary_and_empty_merges_are_rejected() {
    let Some(sd) = sd("tok") else { return };
    let out = sd.0.join("out");
    let te = sd.0.join("text_encoder/config.json");
    edit_json(&te, |j| j["vocab_size"] = serde_json::json!(1000));
    fails_naming(&sample(&sd.0, &out, &[]), &["vocab_size 1000", "text_encoder/config.json", "49408 tokens"]);
    edit_json(&te, |j| j["vocab_size"] = serde_json::json!(49408));
    let merges = sd.0.join("tokenizer/merges.txt");
    let good = std::fs::read(&merges).unwrap();
    std::fs::write(&merges, "").unwrap();
    fails_naming(&sample(&sd.0, &out, &[]), &["merges.txt"]);
    std::fs::write(&merges, &good).unwrap();
    // An id past the end (49409 with 49409 entries).
    edit_json(&sd.0.join("tokenizer/vocab.json"), |j| j["instagen-no-such-token"] = serde_json::json!(49409));
    fails_naming(&sample(&sd.0, &out, &[]), &["vocab.json", "id 49409", "vocabulary size 49409"]);
}

#[test]
fn bench_flags_are_range_checked() {
    for (flag, v) in [("--batch", "0"), ("--batch", "-1"), ("--min-seconds", "nan"), ("--min-seconds", "-1"), ("--min-seconds", "inf"), ("--latent", "0")] {
        fails_naming(&instagen(&["bench", "unet", "--backend", "cpu", flag, v]), &[flag]);
    }
    fails_naming(&instagen(&["bench", "clip", "--backend", "cpu", "--batch", "0"]), &["--batch"]);
    fails_naming(&instagen(&["bench", "kernels", "--backend", "cpu", "--min-seconds", "nan"]), &["--min-seconds"]);
    fails_naming(&instagen(&["bench", "tpu"]), &["tpu", "kernels, unet, clip, vae"]);
    // The library checks too (for callers that skip the command line).
    let e = instagen::pipeline::sample::bench_unet(instagen::backend::BackendKind::Cpu, "sd-v1", 0, None, instagen::DType::F32, 0.0);
    assert!(e.unwrap_err().to_string().contains("--batch 0"));
}

#[test]
fn devices_and_directories_are_not_read_as_files() {
    let dir = std::env::temp_dir().join(format!("instagen_bad_dev_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for dev in ["/dev/zero", "/dev/urandom"] {
        let e = fails_naming(
            &instagen(&["sample", "--weights", dev, "--tokenizer", s(&dir), "--prompt", "x", "--out", s(&dir.join("o")), "--backend", "cpu"]),
            &[dev, "character device"],
        );
        assert!(!e.contains("memory allocation"), "{e}");
        std::fs::write(dir.join("gt.json"), GT).unwrap();
        fails_naming(&instagen(&["eval", "--gt", s(&dir.join("gt.json")), "--dt", dev]), &[dev, "character device"]);
        fails_naming(&instagen(&["eval", "--gt", dev, "--dt", s(&dir.join("gt.json"))]), &[dev, "character device"]);
    }
    fails_naming(&instagen(&["eval", "--gt", s(&dir), "--dt", s(&dir)]), &[s(&dir), "directory"]);
    std::fs::remove_dir_all(&dir).ok();
    // A component file that is a link to /dev/zero.
    let Some(sd) = sd("dev") else { return };
    let unet = sd.0.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&unet).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &unet).unwrap();
    fails_naming(&sample(&sd.0, &sd.0.join("out"), &[]), &["diffusion_pytorch_model.safetensors", "character device"]);
    std::fs::remove_file(sd.0.join("vae/config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", sd.0.join("vae/config.json")).unwrap();
    fails_naming(&sample(&sd.0, &sd.0.join("out"), &[]), &["vae/config.json", "character device"]);
}

#[test]
fn missing_component_configs_are_named() {
    let Some(sd) = sd("cfg") else { return };
    for comp in ["unet", "text_encoder", "vae"] {
        let p = sd.0.join(comp).join("config.json");
        let keep = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        fails_naming(&sample(&sd.0, &sd.0.join("out"), &[]), &[&format!("{comp}/config.json"), "missing"]);
        std::fs::write(&p, keep).unwrap();
    }
    succeeds(&sample(&sd.0, &sd.0.join("out"), &[]));
}

#[test]
fn failed_runs_leave_no_partial_outputs_and_inputs_are_not_overwritten() {
    if let Some(sd) = sd("out") {
        // The run JSON cannot be written (a directory is in the way): the images already written are removed.
        let out = sd.0.join("out");
        std::fs::create_dir_all(out.join("42.json/x")).unwrap();
        fails_naming(&sample(&sd.0, &out, &["--batch", "2", "--features"]), &["42.json"]);
        let left: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec!["42.json".to_string()], "partial outputs or temp files left: {left:?}");
        // --out a regular file.
        std::fs::write(sd.0.join("file"), "x").unwrap();
        fails_naming(&sample(&sd.0, &sd.0.join("file"), &[]), &["file"]);
    }
    // eval --json onto its own input (directly, through `..` or a link) is refused and the input kept.
    let dir = std::env::temp_dir().join(format!("instagen_bad_eval_{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("gt.json"), GT).unwrap();
    std::fs::write(dir.join("dt.json"), "[]").unwrap();
    std::os::unix::fs::symlink(dir.join("dt.json"), dir.join("alias.json")).unwrap();
    let (g, d) = (dir.join("gt.json"), dir.join("dt.json"));
    for json in [d.clone(), dir.join("sub/../gt.json"), dir.join("alias.json")] {
        fails_naming(&instagen(&["eval", "--gt", s(&g), "--dt", s(&d), "--json", s(&json)]), &["--json", "refusing"]);
    }
    assert_eq!(std::fs::read_to_string(&d).unwrap(), "[]");
    succeeds(&instagen(&["eval", "--gt", s(&g), "--dt", s(&d), "--json", s(&dir.join("f.json"))]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn messages_name_the_tensor_and_the_latent_rule() {
    for v in ["0", "1", "3"] {
        let out = instagen(&["bench", "unet", "--backend", "cpu", "--latent", v]);
        fails_naming(&out, &["--latent"]);
    }
    for v in ["1", "3", "12"] {
        fails_naming(&instagen(&["bench", "unet", "--backend", "cpu", "--latent", v]), &[&format!("--latent {v}"), "multiple of 8"]);
    }
    // A tensor whose data offsets do not match its shape.
    let dir = std::env::temp_dir().join(format!("instagen_bad_st_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = r#"{"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b.bias":{"dtype":"F32","shape":[4],"data_offsets":[24,32]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 32]);
    let p = dir.join("bad.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let e = instagen::params::ParamStore::load_safetensors(&p).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors") && e.contains("'b.bias'") && e.contains("16 bytes") && e.contains("[24, 32]"), "{e}");
    let e = fails_naming(
        &instagen(&["sample", "--weights", s(&p), "--tokenizer", s(&dir), "--prompt", "x", "--out", s(&dir.join("o")), "--backend", "cpu"]),
        &["bad.safetensors", "'b.bias'"],
    );
    assert!(e.contains("data_offsets"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
