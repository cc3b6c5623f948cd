//! The VAE (AutoencoderKL) against diffusers (tests/fixtures/sd, written by tools/make_sd_fixtures.py): block
//! channels (16, 32), 2 resnets per block, 8 groups, 4 latent channels, one 32x32 image, random f16 weights
//! stored as the fp16 variant, references in float64. Encoder and decoder activations after every block are
//! compared on the `cpu` and `emu` backends with f32 and f16 graphs; also the CompVis single-file layout.

mod sd_util;

use instagen::models::vae::Vae;
use instagen::models::weights::{Component, SdCheckpoint};
use instagen::tensor::{DType, HostTensor};
use sd_util::{activations, fixtures, rel_max, run, run_cpu};

/// Per-tensor bounds on `max|err| / max|ref|` (measured worst on cpu and emu: f32 9.4e-7, f16 1.4e-3).
/// f32: f32 arithmetic against a float64 reference through ~20 convolutions (sums of up to 288 products), 4
/// GroupNorms per block and the attention; 1e-5 is 10x the measured worst, while a wrong weight, padding side or
/// upsampling moves outputs by >1e-2.
/// f16: every activation is rounded to f16 (4.9e-4 relative) after each op, ~30 ops deep; the GroupNorms
/// renormalise so the error grows slowly (worst 1.4e-3, 2.3e-3 with unfused primitive ops); 1e-2 is 4x the latter.
fn bound(dtype: DType) -> f32 {
    if dtype == DType::F32 { 1e-5 } else { 1e-2 }
}

fn compare(tag: &str, dtype: DType, names: &[&str], got: &[HostTensor]) -> f32 {
    let acts = activations("vae_activations.safetensors");
    let mut worst = 0f32;
    for (name, t) in names.iter().zip(got) {
        let want = acts.get(name).unwrap_or_else(|| panic!("fixture has no {name}"));
        assert_eq!(t.shape, want.shape, "{name}");
        let e = rel_max(&t.to_f32(), &want.to_f32());
        eprintln!("vae {tag} {dtype} {name}: max rel err {e:.2e}");
        assert!(e <= bound(dtype), "vae {tag} {dtype} {name}: {e:.3e} > {:.0e}", bound(dtype));
        worst = worst.max(e);
    }
    worst
}

fn check_encoder(backend: &str, dtype: DType) -> f32 {
    let ckpt = SdCheckpoint::open(&fixtures()).unwrap();
    let vae = Vae::new(ckpt.vae_config.clone(), dtype).unwrap();
    let acts = activations("vae_activations.safetensors");
    let image = acts.get("image").unwrap();
    let (n, h, w) = (image.shape[0], image.shape[1], image.shape[2]);
    let enc = vae.encode_graph(n, h, w, true).unwrap();
    let store = ckpt.component(Component::Vae).unwrap().load_for(&enc.graph).unwrap();
    let feed = vec![(Vae::IMAGE.to_string(), image.cast(dtype)), (Vae::NOISE.to_string(), acts.get("noise").unwrap().cast(dtype))];
    let mut outs: Vec<_> = enc.blocks.iter().map(|b| b.1).collect();
    let mut names: Vec<&str> = enc.blocks.iter().map(|b| b.0.as_str()).collect();
    outs.extend([enc.mean, enc.logvar, enc.sample]);
    names.extend(["mean", "logvar", "latent"]);
    let Some(got) = run(backend, &enc.graph, &store, &feed, &outs) else { return 0.0 };
    compare(&format!("encoder {backend}"), dtype, &names, &got)
}

fn check_decoder(backend: &str, dtype: DType) -> f32 {
    let ckpt = SdCheckpoint::open(&fixtures()).unwrap();
    let vae = Vae::new(ckpt.vae_config.clone(), dtype).unwrap();
    let acts = activations("vae_activations.safetensors");
    let z = acts.get("latent").unwrap();
    let dec = vae.decode_graph(z.shape[0], z.shape[1], z.shape[2], false, true).unwrap();
    let store = ckpt.component(Component::Vae).unwrap().load_for(&dec.graph).unwrap();
    let feed = vec![(Vae::LATENT.to_string(), z.cast(dtype))];
    let mut outs: Vec<_> = dec.blocks.iter().map(|b| b.1).collect();
    let mut names: Vec<&str> = dec.blocks.iter().map(|b| b.0.as_str()).collect();
    outs.push(dec.image);
    names.push("decoded");
    let Some(got) = run(backend, &dec.graph, &store, &feed, &outs) else { return 0.0 };
    compare(&format!("decoder {backend}"), dtype, &names, &got)
}

#[test]
fn vae_encoder_cpu_f32() {
    check_encoder("cpu", DType::F32);
}
#[test]
fn vae_encoder_cpu_f16() {
    check_encoder("cpu", DType::F16);
}
#[test]
fn vae_encoder_emu_f32() {
    check_encoder("emu", DType::F32);
}
#[test]
fn vae_encoder_emu_f16() {
    check_encoder("emu", DType::F16);
}
#[test]
fn vae_decoder_cpu_f32() {
    check_decoder("cpu", DType::F32);
}
#[test]
fn vae_decoder_cpu_f16() {
    check_decoder("cpu", DType::F16);
}
#[test]
fn vae_decoder_emu_f32() {
    check_decoder("emu", DType::F32);
}
#[test]
fn vae_decoder_emu_f16() {
    check_decoder("emu", DType::F16);
}

#[test]
fn compvis_single_file_loads_the_same_vae() {
    let diff = SdCheckpoint::open(&fixtures()).unwrap();
    let cv = SdCheckpoint::open(&fixtures().join("clip_vae_compvis.safetensors")).unwrap().with_vae_config(diff.vae_config.clone());
    let vae = Vae::new(diff.vae_config.clone(), DType::F32).unwrap();
    let acts = activations("vae_activations.safetensors");
    let z = acts.get("latent").unwrap();
    let dec = vae.decode_graph(z.shape[0], z.shape[1], z.shape[2], false, false).unwrap();
    let enc = vae.encode_graph(1, 32, 32, false).unwrap();
    for g in [&dec.graph, &enc.graph] {
        let a = diff.component(Component::Vae).unwrap().load_for(g).unwrap();
        let b = cv.component(Component::Vae).unwrap().load_for(g).unwrap();
        assert_eq!(a, b);
    }
    let wd = diff.component(Component::Vae).unwrap();
    let wc = cv.component(Component::Vae).unwrap();
    assert_eq!(wd.module_keys().collect::<Vec<_>>(), wc.module_keys().collect::<Vec<_>>());
    assert!(wd.path().ends_with("vae/diffusion_pytorch_model.fp16.safetensors"), "fp16 variant: {}", wd.path().display());
    let store = wc.load_for(&dec.graph).unwrap();
    let got = run_cpu(&dec.graph, &store, &[(Vae::LATENT.to_string(), z.clone())], &[dec.image]);
    assert!(rel_max(&got[0].to_f32(), &acts.get("decoded").unwrap().to_f32()) <= bound(DType::F32));
}

#[test]
fn scaled_latent_and_our_noise() {
    let diff = SdCheckpoint::open(&fixtures()).unwrap();
    let vae = Vae::new(diff.vae_config.clone(), DType::F32).unwrap();
    let acts = activations("vae_activations.safetensors");
    let z = acts.get("latent").unwrap();
    let sf = diff.vae_config.scaling_factor;
    let plain = vae.decode_graph(1, z.shape[1], z.shape[2], false, false).unwrap();
    let scaled = vae.decode_graph(1, z.shape[1], z.shape[2], true, false).unwrap();
    let w = diff.component(Component::Vae).unwrap();
    let zs = HostTensor::from_f32(&z.shape, DType::F32, &z.to_f32().iter().map(|v| v * sf).collect::<Vec<_>>()).unwrap();
    let a = run_cpu(&plain.graph, &w.load_for(&plain.graph).unwrap(), &[(Vae::LATENT.into(), z.clone())], &[plain.image]);
    let b = run_cpu(&scaled.graph, &w.load_for(&scaled.graph).unwrap(), &[(Vae::LATENT.into(), zs)], &[scaled.image]);
    assert!(rel_max(&b[0].to_f32(), &a[0].to_f32()) < 1e-5);
    let n1 = vae.noise(7, &[1, 4, 4, 4]).unwrap();
    assert_eq!(n1, vae.noise(7, &[1, 4, 4, 4]).unwrap());
    assert_ne!(n1, vae.noise(8, &[1, 4, 4, 4]).unwrap());
}

#[test]
fn vae_wrong_config_lists_shapes() {
    let diff = SdCheckpoint::open(&fixtures()).unwrap();
    let mut cfg = diff.vae_config.clone();
    cfg.block_out_channels = vec![16, 48];
    let vae = Vae::new(cfg, DType::F32).unwrap();
    let g = vae.decode_graph(1, 16, 16, false, false).unwrap().graph;
    let e = diff.component(Component::Vae).unwrap().load_for(&g).unwrap_err().to_string();
    assert!(e.contains("decoder.conv_in.weight") && e.contains("[32, 4, 3, 3]") && e.contains("[48, 4, 3, 3]"), "{e}");
    assert!(e.contains("diffusion_pytorch_model.fp16.safetensors"), "{e}");
}
