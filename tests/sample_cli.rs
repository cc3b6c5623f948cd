//! `instagen sample` end to end on the CPU with the small random-weight fixtures: the diffusers folder of
//! tests/common/sd.rs (fixture CLIP with the full 49,408-id embedding, fixture VAE, a random UNet of the fixture's
//! config, the real tokenizer from ../shared/data/clip). Skips without the CLIP vocabulary data (fails with
//! INSTAGEN_REQUIRE_DATA=1).

mod common;

use std::path::{Path, PathBuf};

use instagen::backend::BackendKind;
use instagen::params::ParamStore;
use instagen::pipeline::txt2img::{Progress, Txt2ImgOptions, run, to_rgb8};
use instagen::tensor::DType;

fn assemble(tag: &str) -> Option<PathBuf> {
    common::sd::assemble(tag)
}

fn opts(weights: &Path, out: &Path, features: bool) -> Txt2ImgOptions {
    Txt2ImgOptions {
        weights: weights.to_path_buf(),
        tokenizer: None,
        prompt: "a photograph of a cat and a dog".into(),
        steps: 2,
        guidance: 5.0,
        seed: 42,
        batch: 2,
        out: out.to_path_buf(),
        features,
        dtype: DType::F32,
        latent: None,
        progress: false,
    }
}

#[test]
fn sample_writes_pngs_json_and_features_deterministically() {
    let Some(root) = assemble("run") else { return };
    let out_a = root.join("out_a");
    let r = run(BackendKind::Cpu, &opts(&root, &out_a, true)).unwrap();
    print!("{}", r.text());
    assert_eq!(r.plans.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>(), ["text_encoder", "unet", "vae_decoder"]);
    // 16x16 latents, a 2-block VAE (factor 2): 32x32 images.
    assert_eq!(r.image_size, (32, 32));
    assert_eq!(r.images, vec![out_a.join("42_0.png"), out_a.join("42_1.png")]);
    for p in &r.images {
        let img = image::open(p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
    }
    // The two images start from different noise: they differ.
    assert_ne!(std::fs::read(&r.images[0]).unwrap(), std::fs::read(&r.images[1]).unwrap());
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_a.join("42.json")).unwrap()).unwrap();
    assert_eq!(meta["prompt"], "a photograph of a cat and a dog");
    assert_eq!((meta["seed"].as_u64(), meta["steps"].as_u64(), meta["guidance"].as_f64()), (Some(42), Some(2), Some(5.0)));
    // Features: every level of the fixture UNet (16x16 and 8x8 latents), batch 2, uncond|cond channels.
    let f = ParamStore::load_safetensors(&out_a.join("42_features.safetensors")).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = f.iter().map(|(k, t)| (k.to_string(), t.shape.clone())).collect();
    names.sort();
    eprintln!("features: {names:?}");
    assert_eq!(names.len(), 2, "{names:?}");
    for (name, shape) in &names {
        let side: usize = name.strip_prefix("feat_").unwrap().parse().unwrap();
        assert!(side == 16 || side == 8, "{name}");
        assert_eq!(&shape[..3], &[2, side, side], "{name}");
        assert!(shape[3] > 0 && shape[3] % 2 == 0, "{name}: {shape:?}");
    }
    // No temp files left behind.
    assert!(std::fs::read_dir(&out_a).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    // Same seed -> identical PNG bytes.
    let out_b = root.join("out_b");
    let r2 = run(BackendKind::Cpu, &opts(&root, &out_b, false)).unwrap();
    for (a, b) in r.images.iter().zip(&r2.images) {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{}", a.display());
    }
    // Another seed -> other images.
    let mut o = opts(&root, &root.join("out_c"), false);
    o.seed = 43;
    let r3 = run(BackendKind::Cpu, &o).unwrap();
    assert_ne!(std::fs::read(&r.images[0]).unwrap(), std::fs::read(&r3.images[0]).unwrap());
    // INSTAGEN_SAMPLE_KEEP=1 keeps the assembled folder (to run the binary on it by hand).
    if std::env::var_os("INSTAGEN_SAMPLE_KEEP").is_some() {
        println!("kept {}", root.display());
    } else {
        std::fs::remove_dir_all(&root).ok();
    }
}

#[test]
fn bad_weights_dir_names_the_missing_file() {
    let Some(root) = assemble("bad") else { return };
    std::fs::remove_file(root.join("vae/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    let e = run(BackendKind::Cpu, &opts(&root, &root.join("out"), false)).unwrap_err().to_string();
    assert!(e.contains("vae") && e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    std::fs::remove_dir_all(root.join("tokenizer")).unwrap();
    let e = run(BackendKind::Cpu, &opts(&root, &root.join("out"), false)).unwrap_err().to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let e = run(BackendKind::Cpu, &opts(&root.join("nope"), &root.join("out"), false)).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn rgb_conversion_and_progress_line() {
    assert_eq!(to_rgb8(&[-1.0, 0.0, 1.0, 2.0, -3.0, 0.5]), vec![0, 128, 255, 255, 0, 191]);
    let l = Progress::line("unet", 5, 50, 10.0);
    assert!(l.contains("step 5/50") && l.contains("elapsed 10.0s") && l.contains("ETA 90.0s"), "{l}");
}
