//! The small SD trained from scratch (issue 15): `sd init` writes a diffusers folder the loaders load and
//! `instagen sample` runs on; `vae train` and `finetune --data-mode captions` train a few steps on tiny
//! synthesised captioned images and resume bit-exactly; bad inputs are named. The folder's config is the
//! committed `configs/world_sd.json`. Skips without the shared CLIP vocabulary (../shared/data).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use instagen::backend::cpu::CpuBackend;
use instagen::models::weights::SdCheckpoint;
use instagen::params::ParamStore;
use instagen::pipeline::finetune::{Stage1Options, Stage1Trainer};

fn config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/world_sd.json")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("instagen_sdw_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_instagen"))
}

fn run_ok(mut c: Command) -> String {
    let o = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

fn run_err(mut c: Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{c:?} succeeded");
    err
}

fn init_cmd(cfg: &Path, out: &Path, seed: u64, vocab: &Path) -> Command {
    let mut c = bin();
    c.args(["sd", "init"]).arg("--config").arg(cfg).arg("--out").arg(out).args(["--seed", &seed.to_string()]).arg("--vocab").arg(vocab);
    c
}

/// `sd init` of configs/world_sd.json into a temp folder; `None` without the shared vocabulary.
fn init_folder(tag: &str, seed: u64) -> Option<PathBuf> {
    init_folder_with(tag, seed, &[])
}

fn init_folder_with(tag: &str, seed: u64, extra: &[&str]) -> Option<PathBuf> {
    let vocab = common::shared_data("clip/bpe_simple_vocab_16e6.txt.gz")?;
    let out = tmp(tag);
    let mut c = init_cmd(&config(), &out, seed, &vocab);
    c.args(extra);
    run_ok(c);
    Some(out)
}

/// A COCO folder of `n` `side`-square PNGs (coloured squares on noise), each with a caption unless `captions`
/// is false for it.
fn dataset(tag: &str, n: usize, side: u32, caption: impl Fn(usize) -> Option<String>) -> PathBuf {
    let dir = tmp(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let mut images = Vec::new();
    let mut rng = instagen::util::Rng::new(tag.len() as u64);
    for i in 0..n {
        let mut img = image::RgbImage::new(side, side);
        let (x0, y0, s) = (rng.below(side as usize / 2) as u32, rng.below(side as usize / 2) as u32, side / 3);
        let col = [rng.below(256) as u8, rng.below(256) as u8, rng.below(256) as u8];
        for (x, y, p) in img.enumerate_pixels_mut() {
            let inside = x >= x0 && x < x0 + s && y >= y0 && y < y0 + s;
            *p = if inside { image::Rgb(col) } else { image::Rgb([rng.below(64) as u8 + 96; 3]) };
        }
        let name = format!("{i:03}.png");
        img.save(dir.join(&name)).unwrap();
        let mut rec = serde_json::json!({"id": i + 1, "file_name": name, "width": side, "height": side});
        if let Some(c) = caption(i) {
            rec["caption"] = serde_json::json!(c);
        }
        images.push(rec);
    }
    let coco = serde_json::json!({"images": images, "annotations": [], "categories": [{"id": 1, "name": "square"}]});
    std::fs::write(dir.join("instances.json"), serde_json::to_string(&coco).unwrap()).unwrap();
    dir
}

fn captions(i: usize) -> Option<String> {
    Some(["a photograph of a square", "a photograph of a star and a moon", "a photograph of an arrow"][i % 3].to_string())
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn losses(dir: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {}", v["step"], v["losses"][key])
        })
        .collect()
}

#[test]
fn init_writes_a_folder_the_loaders_load_and_sample_runs_on() {
    let Some(dir) = init_folder("init", 3) else { return };
    for f in [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let ck = SdCheckpoint::open(&dir).unwrap();
    assert_eq!((ck.text_config.vocab_size, ck.text_config.hidden_size, ck.text_config.num_hidden_layers), (49408, 64, 4));
    assert_eq!((ck.vae_config.downscale(), ck.vae_config.sample_size, ck.vae_config.latent_channels), (4, 64, 4));
    let u = ck.unet_config().unwrap();
    assert_eq!((u.sample_size, u.cross_attention_dim, u.block_out_channels.clone()), (16, 64, vec![32, 64, 128]));
    // The three graphs of the training step load every key they ask for, with the right shapes.
    Stage1Trainer::new(|| Ok(CpuBackend), &dir, Stage1Options { resolution: 64, ..Stage1Options::default() }).unwrap();

    // Init statistics per layer type (PyTorch's defaults; `--text-init clip`: transformers' CLIP rules).
    let te = ParamStore::load_safetensors(&dir.join("text_encoder/model.safetensors")).unwrap();
    let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let tok = te.get("text_model.embeddings.token_embedding.weight").unwrap();
    assert_eq!(tok.shape, [49408, 64]);
    let s = std(&tok.to_f32());
    assert!((s - 1.0).abs() < 0.01, "token embedding std {s} (nn.Embedding: N(0, 1))");
    let fc1 = te.get("text_model.encoder.layers.0.mlp.fc1.weight").unwrap().to_f32();
    assert!(fc1.iter().all(|x| x.abs() <= 0.125) && (std(&fc1) - 0.125 / 3f64.sqrt()).abs() < 0.003, "fc1 std {}", std(&fc1));
    assert!(te.get("text_model.final_layer_norm.weight").unwrap().to_f32().iter().all(|v| *v == 1.0));
    let clip = init_folder_with("init_clip", 3, &["--text-init", "clip"]).unwrap();
    let te = ParamStore::load_safetensors(&clip.join("text_encoder/model.safetensors")).unwrap();
    let s = std(&te.get("text_model.embeddings.token_embedding.weight").unwrap().to_f32());
    assert!((s - 0.02).abs() < 0.0005, "clip init: token embedding std {s}");
    let fc1 = te.get("text_model.encoder.layers.0.mlp.fc1.weight").unwrap().to_f32();
    assert!((std(&fc1) - (128f64).powf(-0.5)).abs() < 0.005, "clip init: fc1 std {}", std(&fc1));
    assert!(te.get("text_model.encoder.layers.0.mlp.fc1.bias").unwrap().to_f32().iter().all(|v| *v == 0.0));
    assert!(bytes(&clip.join("unet/diffusion_pytorch_model.safetensors")) == bytes(&dir.join("unet/diffusion_pytorch_model.safetensors")));
    let _ = std::fs::remove_dir_all(clip);
    let un = ParamStore::load_safetensors(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let w = un.get("conv_in.weight").unwrap();
    assert_eq!(w.shape, [32, 4, 3, 3]);
    let bound = 1.0 / (36f32).sqrt();
    let v = w.to_f32();
    assert!(v.iter().all(|x| x.abs() <= bound), "conv_in outside its bound");
    assert!((std(&v) - bound as f64 / 3f64.sqrt()).abs() < 0.02, "conv_in std {}", std(&v));
    let b = un.get("conv_in.bias").unwrap().to_f32();
    assert!(b.iter().all(|x| x.abs() <= bound) && b.iter().any(|x| *x != 0.0), "conv_in bias: {b:?}");
    assert!(un.get("conv_norm_out.weight").unwrap().to_f32().iter().all(|v| *v == 1.0));
    assert!(un.get("conv_norm_out.bias").unwrap().to_f32().iter().all(|v| *v == 0.0));

    // Same seed, same bytes; another seed, other weights.
    let again = init_folder("init_again", 3).unwrap();
    let other = init_folder("init_other", 4).unwrap();
    for f in ["text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"] {
        assert!(bytes(&dir.join(f)) == bytes(&again.join(f)), "{f} differs for the same seed");
        assert!(bytes(&dir.join(f)) != bytes(&other.join(f)), "{f} is the same for another seed");
    }

    // `instagen sample` runs on the folder as it is.
    let s = dir.join("samples");
    let mut c = bin();
    c.arg("sample").arg("--weights").arg(&dir).args(["--prompt", "a photograph of a star", "--steps", "2"])
        .arg("--out").arg(&s).args(["--backend", "cpu", "--dtype", "f32"]);
    run_ok(c);
    let img = image::open(s.join("42_0.png")).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    for d in [dir, again, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A frozen text encoder at its random init (PyTorch's defaults) keeps the captions of different names apart
/// (the reason the small SD does not train it), far more than transformers' CLIP init (embeddings N(0, 0.02),
/// which a layer's normalised attention and MLP outputs swamp): measured on the world's category names.
#[test]
fn random_text_encoder_separates_the_names() {
    let Some(dir) = init_folder("sims", 0) else { return };
    let clip = init_folder_with("sims_clip", 0, &["--text-init", "clip"]).unwrap();
    let names = "circle,square,triangle,star,cross,heart,arrow,hexagon,ring,moon,diamond,bolt";
    let mut c = bin();
    c.args(["sd", "text-sims", "--backend", "cpu", "--names", names]).arg("--sd").arg(&dir);
    let text = run_ok(c);
    eprintln!("{text}");
    let names: Vec<String> = names.split(',').map(String::from).collect();
    let sims = instagen::pipeline::sdtrain::text::text_sims_with(CpuBackend, &dir, &names).unwrap();
    let (name_max, seq_max) = sims.max_off_diagonal();
    let (name_mean, _) = sims.mean_off_diagonal();
    for i in 0..names.len() {
        assert!((sims.name_tokens[i][i] - 1.0).abs() < 1e-5);
    }
    // Different names must not collapse onto one embedding (measured: mean 0.41, max 0.65 at seed 0).
    assert!(name_max < 0.8 && name_mean < 0.6, "name tokens: mean cosine {name_mean}, max {name_max}");
    assert!(seq_max < 0.999, "two captions' whole sequences have cosine {seq_max}");
    // transformers' init puts them nearly on one line (measured: mean 0.96, max 0.99).
    let c = instagen::pipeline::sdtrain::text::text_sims_with(CpuBackend, &clip, &names).unwrap();
    eprintln!("--text-init clip:\n{c}");
    assert!(c.mean_off_diagonal().0 > name_mean + 0.2, "clip init {:?} vs torch init {name_mean}", c.mean_off_diagonal());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(clip);
}

fn vae_train(sd: &Path, data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["vae", "train"]).arg("--sd").arg(sd).arg("--data").arg(data).arg("--out").arg(out)
        .args(["--batch", "2", "--lr", "1e-3", "--save-every", "2", "--workers", "2", "--seed", "9", "--scale-images", "4"])
        .args(["--backend", "cpu", "--steps", &steps.to_string()])
        .args(extra);
    c
}

#[test]
fn vae_train_resumes_bit_exactly_and_sets_the_scaling_factor() {
    let Some(sd) = init_folder("vae_sd", 1) else { return };
    let data = dataset("vae_data", 6, 64, captions);
    let (a, b) = (tmp("vae_a"), tmp("vae_b"));
    let text = run_ok(vae_train(&sd, &data, &a, 4, &[]));
    eprintln!("{text}");
    run_ok(vae_train(&sd, &data, &b, 2, &[]));
    let text_b = run_ok(vae_train(&sd, &data, &b, 4, &["--resume"]));
    assert!(text_b.contains("resumed from step 2"), "{text_b}");
    for f in ["checkpoints/step-000004/params.safetensors", "checkpoints/step-000004/optim.safetensors", "model/vae/diffusion_pytorch_model.safetensors", "model/vae/config.json"] {
        assert!(bytes(&a.join(f)) == bytes(&b.join(f)), "{f} differs between the whole and the resumed run");
    }
    assert_eq!(losses(&a, "loss"), losses(&b, "loss"));
    assert_eq!(losses(&a, "loss").len(), 4);
    // The VAE moved, the rest of the folder is the source's, and the scaling factor is 1 / the latents' std.
    let before = bytes(&sd.join("vae/diffusion_pytorch_model.safetensors"));
    assert!(before != bytes(&a.join("model/vae/diffusion_pytorch_model.safetensors")));
    assert!(bytes(&sd.join("unet/diffusion_pytorch_model.safetensors")) == bytes(&a.join("model/unet/diffusion_pytorch_model.safetensors")));
    let ck = SdCheckpoint::open(&a.join("model")).unwrap();
    let sf = ck.vae_config.scaling_factor;
    let line = text.lines().find(|l| l.contains("scaling_factor")).unwrap();
    let std: f32 = line.split("std ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(sf.is_finite() && sf > 0.0 && sf != 1.0, "scaling_factor {sf}");
    assert!((sf * std - 1.0).abs() < 1e-3, "scaling_factor {sf} vs std {std}");
    for d in [sd, data, a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn caption_train(sd: &Path, data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("finetune").args(["--data-mode", "captions"]).arg("--weights").arg(sd)
        .arg("--data").arg(data.join("instances.json")).arg("--images").arg(data).arg("--out").arg(out)
        .args(["--resolution", "64", "--batch", "2", "--lr", "1e-3", "--ema-decay", "0.9", "--save-every", "2"])
        .args(["--backend", "cpu", "--workers", "2", "--seed", "5", "--dtype", "f32", "--steps", &steps.to_string()])
        .args(extra);
    c
}

#[test]
fn unet_caption_training_resumes_bit_exactly() {
    let Some(sd) = init_folder("cap_sd", 2) else { return };
    let data = dataset("cap_data", 6, 64, captions);
    let (a, b) = (tmp("cap_a"), tmp("cap_b"));
    let text = run_ok(caption_train(&sd, &data, &a, 4, &[]));
    assert!(text.contains("6 captioned images"), "{text}");
    run_ok(caption_train(&sd, &data, &b, 2, &[]));
    let text_b = run_ok(caption_train(&sd, &data, &b, 4, &["--resume"]));
    assert!(text_b.contains("resumed from step 2"), "{text_b}");
    for f in ["checkpoints/step-000004/params.safetensors", "checkpoints/step-000004/optim.safetensors", "checkpoints/step-000004/ema.safetensors", "model/unet/diffusion_pytorch_model.safetensors"] {
        assert!(bytes(&a.join(f)) == bytes(&b.join(f)), "{f} differs between the whole and the resumed run");
    }
    assert_eq!(losses(&a, "mse"), losses(&b, "mse"));
    // Caption dropout changes the prompts the UNet sees, so the losses (same seed, same draws) change.
    let c = tmp("cap_c");
    run_ok(caption_train(&sd, &data, &c, 2, &["--caption-dropout", "1"]));
    assert_ne!(losses(&c, "mse")[..2], losses(&a, "mse")[..2]);
    let _ = std::fs::remove_dir_all(c);
    for d in [sd, data, a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_inputs_are_named() {
    let Some(sd) = init_folder("bad_sd", 0) else { return };
    let vocab = common::shared_data("clip/bpe_simple_vocab_16e6.txt.gz").unwrap();
    // An image without a caption, for caption training.
    let data = dataset("bad_nocap", 4, 64, |i| if i == 2 { None } else { captions(i) });
    let err = run_err(caption_train(&sd, &data, &tmp("bad_out1"), 2, &[]));
    assert!(err.contains("images[2]") && err.contains("caption"), "{err}");
    // Images of another size than the model's.
    let small = dataset("bad_small", 4, 32, captions);
    let err = run_err(vae_train(&sd, &small, &tmp("bad_out2"), 2, &[]));
    assert!(err.contains("32x32") && err.contains("64x64"), "{err}");
    let err = run_err(caption_train(&sd, &small, &tmp("bad_out3"), 2, &[]));
    assert!(err.contains("32x32") && err.contains("64x64"), "{err}");
    let err = run_err(caption_train(&sd, &data, &tmp("bad_out6"), 2, &["--caption-dropout", "1.5"]));
    assert!(err.contains("--caption-dropout") && err.contains("1.5"), "{err}");
    // A batch larger than the data, an unknown reconstruction loss.
    let err = run_err(vae_train(&sd, &data, &tmp("bad_out4"), 2, &["--batch", "9"]));
    assert!(err.contains("--batch"), "{err}");
    let err = run_err(vae_train(&sd, &data, &tmp("bad_out5"), 2, &["--rec-loss", "lpips"]));
    assert!(err.contains("lpips"), "{err}");
    // Configs whose parts do not fit, an unknown or missing section; a non-empty output folder.
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config()).unwrap()).unwrap();
    let cases: Vec<(Box<dyn Fn(&mut serde_json::Value)>, &str)> = vec![
        (Box::new(|v| v["unet"]["cross_attention_dim"] = serde_json::json!(32)), "cross_attention_dim"),
        (Box::new(|v| v["unet"]["sample_size"] = serde_json::json!(8)), "sample_size"),
        (Box::new(|v| v["text_encoder"]["vocab_size"] = serde_json::json!(1000)), "vocab_size"),
        (Box::new(|v| v["extra"] = serde_json::json!({})), "unknown section 'extra'"),
        (Box::new(|v| { v.as_object_mut().unwrap().remove("scheduler"); }), "section 'scheduler' is missing"),
        (Box::new(|v| v["vae"]["norm_num_groups"] = serde_json::json!(24)), "norm_num_groups"),
    ];
    for (i, (edit, want)) in cases.iter().enumerate() {
        let mut v = base.clone();
        edit(&mut v);
        let p = tmp(&format!("bad_cfg{i}")).with_extension("json");
        std::fs::write(&p, v.to_string()).unwrap();
        let err = run_err(init_cmd(&p, &tmp(&format!("bad_init{i}")), 0, &vocab));
        assert!(err.contains(want) && err.contains(&p.display().to_string()), "case {i}: want '{want}':\n{err}");
        let _ = std::fs::remove_file(p);
    }
    let err = run_err(init_cmd(&config(), &sd, 0, &vocab));
    assert!(err.contains("not empty"), "{err}");
    for d in [sd, data, small] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The real input: a corpus from `instagen world make` trains the VAE and the UNet (one step each).
#[test]
fn trains_on_a_world_corpus() {
    let Some(sd) = init_folder("world_sd", 0) else { return };
    let world = tmp("world");
    let mut c = bin();
    c.args(["world", "make", "--seed", "0", "--counts", "corpus=4,train=1,val=1"]).arg("--out").arg(&world);
    run_ok(c);
    let corpus = world.join("corpus");
    let out = tmp("world_vae");
    let text = run_ok(vae_train(&sd, &corpus, &out, 1, &[]));
    assert!(text.contains("1 steps on 4 images"), "{text}");
    let out2 = tmp("world_unet");
    let text = run_ok(caption_train(&out.join("model"), &corpus, &out2, 1, &[]));
    assert!(text.contains("4 captioned images"), "{text}");
    for d in [sd, world, out, out2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `instagen bench train-vae` times the folder's VAE training step and profiles it per op.
#[test]
fn bench_train_vae_runs_on_the_folder() {
    let Some(sd) = init_folder("bench", 0) else { return };
    let mut c = bin();
    c.args(["bench", "train-vae", "--backend", "cpu", "--batch", "1", "--min-seconds", "0"]).arg("--config").arg(sd.join("vae"));
    let text = run_ok(c);
    assert!(text.contains("image 64x64, latent 16x16x4") && text.contains("parameters: 954567"), "{text}");
    assert!(text.contains("s per training step") && text.contains("Conv2dBwdWeight"), "{text}");
    let _ = std::fs::remove_dir_all(sd);
}
