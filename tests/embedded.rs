//! The embedded default models: `instagen models pack` writes a bundle that `instagen models verify` accepts and
//! `instagen generate` uses without `--sd` / `--head` (through `$INSTAGEN_MODELS`), with the same images as when
//! the folders are named; a changed, truncated, missing or extra file is refused naming it. Skips without the CLIP
//! vocabulary data (the fixture SD needs it).

mod common;

use std::path::Path;

use common::generate::{bin, files, fixture, run_err, run_ok};
use instagen::pipeline::embedded;

fn provenance(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("provenance.json");
    let text = r#"{"description": "fixture SD and tiny head (random weights)",
  "categories": ["person", "dog", "cat", "hot dog"],
  "models": {"sd": {"commands": ["tests/common/sd.rs assemble_at"], "seed": 0},
             "head": {"commands": ["instagen ground init --config tiny --seed 3"], "seed": 3}}}"#;
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn pack_verify_generate_and_refuse_tampering() {
    let Some(f) = fixture("embedded") else { return };
    let bundle = f.root.join("bundle");
    // What a killed earlier pack leaves: its temporary folder (never a partial bundle), replaced by the next one.
    std::fs::create_dir_all(f.root.join(".bundle.tmp-pack/sd")).unwrap();
    std::fs::write(f.root.join(".bundle.tmp-pack/sd/half.safetensors"), b"trunc").unwrap();
    let mut c = bin();
    c.args(["models", "pack"]).arg("--sd").arg(&f.sd).arg("--head").arg(&f.head).arg("--provenance").arg(provenance(&f.root));
    c.arg("--out").arg(&bundle);
    let out = run_ok(c);
    assert!(out.contains("every file matches its SHA-256"), "{out}");
    assert!(!f.root.join(".bundle.tmp-pack").exists());

    // SD tensors are stored as f16, the head's as they were.
    let unet = instagen::params::ParamStore::load_safetensors(&bundle.join("sd/unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(unet.iter().all(|(_, t)| t.dtype == instagen::tensor::DType::F16));
    let m = embedded::verify(&bundle).unwrap();
    assert_eq!(m.manifest.models["head"].seed, 3);
    assert!(m.manifest.models["sd"].files.contains_key("unet/diffusion_pytorch_model.safetensors"));
    assert_eq!(m.total_bytes, m.manifest.models.values().flat_map(|e| e.files.values()).map(|e| e.bytes).sum::<u64>());
    let levels: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("head/levels.json")).unwrap()).unwrap();
    assert_eq!(levels["sd"], "../sd");

    // generate with the bundle as the default == generate naming its folders.
    let (a, b) = (f.root.join("a"), f.root.join("b"));
    let mut c = bin();
    c.arg("generate").arg("--out").arg(&a).env(embedded::ENV, &bundle);
    c.args(["--categories", "person,dog,zebra", "--images-per-category", "1", "--steps", "2", "--score", "0", "--backend", "cpu", "--seed", "7"]);
    let text = run_ok(c);
    assert!(text.contains("they know nothing of zebra"), "{text}");
    let mut c = bin();
    c.arg("generate").arg("--out").arg(&b).arg("--sd").arg(bundle.join("sd")).arg("--head").arg(bundle.join("head"));
    c.args(["--categories", "person,dog,zebra", "--images-per-category", "1", "--steps", "2", "--score", "0", "--backend", "cpu", "--seed", "7"]);
    run_ok(c);
    // (generate.json records the canonical model folders: the same in both.)
    assert!(files(&a) == files(&b), "the default and the named bundle give different folders");

    // Tampering: each is refused naming the file, and restoring it makes the bundle good again.
    let verify = || {
        let mut c = bin();
        c.args(["models", "verify"]).arg(&bundle);
        c
    };
    let target = bundle.join("sd/unet/diffusion_pytorch_model.safetensors");
    let good = std::fs::read(&target).unwrap();
    let mut changed = good.clone();
    let k = changed.len() - 3;
    changed[k] ^= 1;
    std::fs::write(&target, &changed).unwrap();
    run_err(verify(), &["unet/diffusion_pytorch_model.safetensors", "SHA-256"]);
    // generate refuses too, before writing anything.
    let c_out = f.root.join("c");
    let mut c = bin();
    c.arg("generate").arg("--out").arg(&c_out).env(embedded::ENV, &bundle);
    c.args(["--categories", "person", "--images-per-category", "1", "--steps", "2", "--backend", "cpu"]);
    run_err(c, &["unet/diffusion_pytorch_model.safetensors", "SHA-256"]);
    assert!(!c_out.exists());
    std::fs::write(&target, &good[..good.len() - 10]).unwrap();
    run_err(verify(), &["unet/diffusion_pytorch_model.safetensors", "truncated"]);
    std::fs::remove_file(&target).unwrap();
    run_err(verify(), &["unet/diffusion_pytorch_model.safetensors"]);
    std::fs::write(&target, &good).unwrap();
    run_ok(verify());
    let extra = bundle.join("head/notes.txt");
    std::fs::write(&extra, "x").unwrap();
    run_err(verify(), &["head/notes.txt", "not listed"]);
    std::fs::remove_file(&extra).unwrap();

    // A manifest path that leaves the folder is refused.
    let mp = bundle.join(embedded::MANIFEST);
    let good_manifest = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, good_manifest.replace("\"unet/config.json\"", "\"../unet/config.json\"")).unwrap();
    run_err(verify(), &["MANIFEST.json", "not a plain relative path"]);
    std::fs::write(&mp, "{\"format\": ").unwrap();
    run_err(verify(), &["MANIFEST.json"]);
    std::fs::write(&mp, &good_manifest).unwrap();
    run_ok(verify());

    // No bundle where the default points: the error says how to give the models.
    let mut c = bin();
    c.arg("generate").arg("--out").arg(f.root.join("d")).env(embedded::ENV, f.root.join("nowhere"));
    c.args(["--categories", "person", "--images-per-category", "1"]);
    run_err(c, &["MANIFEST.json", "INSTAGEN_MODELS", "--sd"]);

    // pack refuses a non-empty output folder and an incomplete provenance.
    let mut c = bin();
    c.args(["models", "pack"]).arg("--sd").arg(&f.sd).arg("--head").arg(&f.head).arg("--provenance").arg(provenance(&f.root));
    c.arg("--out").arg(&bundle);
    run_err(c, &["not empty"]);
    let bad = f.root.join("bad_prov.json");
    std::fs::write(&bad, r#"{"description": "x", "categories": ["a"], "models": {"sd": {"commands": ["x"], "seed": 0}}}"#).unwrap();
    let mut c = bin();
    c.args(["models", "pack"]).arg("--sd").arg(&f.sd).arg("--head").arg(&f.head).arg("--provenance").arg(&bad);
    c.arg("--out").arg(f.root.join("bundle2"));
    run_err(c, &["bad_prov.json", "models.head"]);
    let _ = std::fs::remove_dir_all(&f.root);
}
