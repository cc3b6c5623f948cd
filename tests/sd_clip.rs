//! The CLIP text encoder against transformers (tests/fixtures/sd, written by tools/make_sd_fixtures.py): a
//! 2-layer, 64-wide, 4-head CLIPTextModel with random f16 weights, references computed in float64 from those
//! weights. Each hidden state is compared on the `cpu` and `emu` backends with f32 and f16 graphs; also the
//! CompVis single-file layout and the loader's errors.

mod sd_util;

mod common;

use instagen::models::clip_text::ClipTextModel;
use instagen::models::weights::{Component, SdCheckpoint};
use instagen::tensor::DType;
use sd_util::{activations, fixtures, rel_max, run, run_cpu};

/// Per-tensor bounds on `max|err| / max|ref|` (measured worst on cpu and emu: f32 5.3e-7, f16 1.0e-3).
/// f32: the engine computes in f32 against a float64 reference over 2 layers of width 64; rounding is ~6e-8 per
/// op. 5e-6 is 10x the measured worst and far below what a wrong weight, mask or activation gives (>1e-2).
/// f16: activations are stored in f16 (2^-11 = 4.9e-4 relative per rounding) through the embedding sum, 2
/// residual layers and the final LayerNorm; 5e-3 is 5x the measured worst.
fn bound(dtype: DType) -> f32 {
    if dtype == DType::F32 { 5e-6 } else { 5e-3 }
}

fn ids() -> Vec<Vec<u32>> {
    let a = activations("clip_activations.safetensors");
    let ids = a.get("input_ids").unwrap();
    let full = a.get("input_ids_full").unwrap().to_i64();
    let t = ids.shape[1];
    let v: Vec<i64> = ids.to_i64();
    // The fixture vocabulary is 1000: the real tokenizer ids mod 1000.
    assert!(v.iter().zip(&full).all(|(a, b)| *a == b % 1000));
    assert_eq!(&full[..3], &[49406, 320, 8853]); // "a photograph ..." starts with BOS, "a", "photograph"
    v.chunks(t).map(|r| r.iter().map(|&x| x as u32).collect()).collect()
}

fn check(backend: &str, dtype: DType) -> f32 {
    let ckpt = SdCheckpoint::open(&fixtures()).unwrap();
    let ids = ids();
    let model = ClipTextModel::new(ckpt.text_config.clone(), ids.len(), dtype).unwrap();
    let built = model.build(true).unwrap();
    let weights = ckpt.component(Component::TextEncoder).unwrap();
    let store = weights.load_for(&built.graph).unwrap();
    assert!(weights.unused_by(&built.graph).is_empty(), "{:?}", weights.unused_by(&built.graph));
    let mut outs = built.hidden_states.clone();
    outs.push(built.last_hidden_state);
    let Some(got) = run(backend, &built.graph, &store, &model.inputs(&ids).unwrap(), &outs) else { return 0.0 };
    let acts = activations("clip_activations.safetensors");
    let names: Vec<String> = (0..outs.len() - 2).map(|i| format!("layer_{i}")).collect();
    let names: Vec<&str> = std::iter::once("embeddings").chain(names.iter().map(|s| s.as_str())).chain(["last_hidden_state"]).collect();
    let mut worst = 0f32;
    for (name, t) in names.iter().zip(&got) {
        let want = acts.get(name).unwrap();
        assert_eq!(t.shape, want.shape, "{name}");
        let e = rel_max(&t.to_f32(), &want.to_f32());
        eprintln!("clip {backend} {dtype} {name}: max rel err {e:.2e}");
        assert!(e <= bound(dtype), "clip {backend} {dtype} {name}: {e:.3e} > {:.0e}", bound(dtype));
        worst = worst.max(e);
    }
    eprintln!("clip {backend} {dtype}: worst {worst:.2e}");
    worst
}

#[test]
fn clip_cpu_f32() {
    check("cpu", DType::F32);
}

#[test]
fn clip_cpu_f16() {
    check("cpu", DType::F16);
}

#[test]
fn clip_emu_f32() {
    check("emu", DType::F32);
}

#[test]
fn clip_emu_f16() {
    check("emu", DType::F16);
}

#[test]
fn compvis_single_file_loads_the_same_weights_and_outputs() {
    let diff = SdCheckpoint::open(&fixtures()).unwrap();
    let cv = SdCheckpoint::open(&fixtures().join("clip_vae_compvis.safetensors")).unwrap().with_text_config(diff.text_config.clone());
    let ids = ids();
    let model = ClipTextModel::new(diff.text_config.clone(), ids.len(), DType::F32).unwrap();
    let built = model.build(false).unwrap();
    let a = diff.component(Component::TextEncoder).unwrap().load_for(&built.graph).unwrap();
    let b = cv.component(Component::TextEncoder).unwrap().load_for(&built.graph).unwrap();
    assert_eq!(a, b);
    let feed = model.inputs(&ids).unwrap();
    let ya = run_cpu(&built.graph, &a, &feed, &[built.last_hidden_state]);
    let yb = run_cpu(&built.graph, &b, &feed, &[built.last_hidden_state]);
    assert_eq!(ya, yb);
}

// ---- loader errors ------------------------------------------------------------------------------------------

fn temp_copy(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("instagen_sd_clip_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("text_encoder")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("text_encoder").join(f), dir.join("text_encoder").join(f)).unwrap();
    }
    dir
}

fn graph(ckpt: &SdCheckpoint) -> instagen::graph::Graph {
    ClipTextModel::new(ckpt.text_config.clone(), 1, DType::F32).unwrap().build(false).unwrap().graph
}

#[test]
fn missing_key_names_key_and_file() {
    let dir = temp_copy("missing");
    let file = dir.join("text_encoder/model.safetensors");
    let mut s = instagen::params::ParamStore::load_safetensors(&file).unwrap();
    let mut kept = instagen::params::ParamStore::new();
    for (k, t) in s.iter() {
        if k != "text_model.encoder.layers.1.mlp.fc2.bias" {
            kept.insert(k, t.clone());
        }
    }
    s = kept;
    s.save_safetensors(&file).unwrap();
    let ckpt = SdCheckpoint::open(&dir).unwrap();
    let e = ckpt.component(Component::TextEncoder).unwrap().load_for(&graph(&ckpt)).unwrap_err().to_string();
    assert!(e.contains("text_model.encoder.layers.1.mlp.fc2.bias") && e.contains("model.safetensors") && e.contains("[64]"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_shape_names_both_shapes() {
    let ckpt = SdCheckpoint::open(&fixtures()).unwrap();
    let mut cfg = ckpt.text_config.clone();
    cfg.intermediate_size = 128;
    let g = ClipTextModel::new(cfg, 1, DType::F16).unwrap().build(false).unwrap().graph;
    let e = ckpt.component(Component::TextEncoder).unwrap().load_for(&g).unwrap_err().to_string();
    assert!(e.contains("text_model.encoder.layers.0.mlp.fc1.weight") && e.contains("[256, 64]") && e.contains("[128, 64]"), "{e}");
    assert!(e.contains("text_encoder/model.safetensors"), "{e}");
    assert!(e.contains("6 problems"), "every mismatched key is listed: {e}");
}

#[test]
fn wrong_dtype_is_an_error() {
    let dir = temp_copy("dtype");
    let file = dir.join("text_encoder/model.safetensors");
    let mut s = instagen::params::ParamStore::load_safetensors(&file).unwrap();
    let key = "text_model.final_layer_norm.weight";
    let t = s.get(key).unwrap().cast(DType::I64);
    s.insert(key, t);
    s.save_safetensors(&file).unwrap();
    let ckpt = SdCheckpoint::open(&dir).unwrap();
    let e = ckpt.component(Component::TextEncoder).unwrap().load_for(&graph(&ckpt)).unwrap_err().to_string();
    assert!(e.contains(key) && e.contains("I64") && e.contains("f32 [64]") && e.contains("model.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncated_file_names_the_file() {
    let dir = temp_copy("trunc");
    let file = dir.join("text_encoder/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let ckpt = SdCheckpoint::open(&dir).unwrap();
    let e = ckpt.component(Component::TextEncoder).unwrap_err().to_string();
    assert!(e.contains("text_encoder/model.safetensors") && e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fixture_ids_are_our_tokenizer_ids() {
    // The prompts tools/make_sd_fixtures.py encoded (with Hugging Face's tokenizer).
    let prompts = ["a photograph of a dog and a hot dog", "a 1920s car, 4k, 8K UHD, f/1.8"];
    let Some(gz) = common::shared_data("clip/bpe_simple_vocab_16e6.txt.gz") else { return };
    let tok = instagen::models::tokenizer::ClipTokenizer::from_bpe_gz(&gz).unwrap();
    let full = activations("clip_activations.safetensors").get("input_ids_full").unwrap().to_i64();
    for (p, want) in prompts.iter().zip(full.chunks(77)) {
        let got: Vec<i64> = tok.encode(p).unwrap().ids.iter().map(|&i| i as i64).collect();
        assert_eq!(got, want, "{p}");
    }
}
