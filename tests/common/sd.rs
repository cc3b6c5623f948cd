//! A complete small diffusers folder for `instagen sample` tests, assembled in a temp dir from the random-weight
//! fixtures of tests/fixtures/sd:
//! - `text_encoder/`: the fixture CLIP (width 64, 2 layers) with its 1000-row token embedding extended to the
//!   49,408 ids of the real CLIP tokenizer (row `i` is fixture row `i % 1000`, so every id has an embedding and
//!   the outputs equal the fixture's ids-modulo-1000 behaviour) and `vocab_size` 49408 in its config;
//! - `vae/`: the fixture VAE (2 levels: 16x16 latents -> 32x32 images);
//! - `unet/`: the fixture UNet config with `cross_attention_dim` 64 (the CLIP width) and seeded random weights;
//! - `tokenizer/`: `vocab.json` + `merges.txt` written from ../shared/data/clip (the real SD v1.x tokenizer).

use std::path::{Path, PathBuf};

use instagen::models::tokenizer::{VOCAB_SIZE, read_bpe_gz};
use instagen::models::unet::{self, UNetConfig, UNetShape};
use instagen::params::ParamStore;
use instagen::tensor::{DType, HostTensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Writes the folder at `root` (replacing it); `None` (skip) without the CLIP vocabulary, see
/// [`super::shared_data`].
pub fn assemble_at(root: &Path) -> Option<PathBuf> {
    let gz = super::shared_data("clip/bpe_simple_vocab_16e6.txt.gz")?;
    let _ = std::fs::remove_dir_all(root);
    // Text encoder with the full vocabulary.
    let te = root.join("text_encoder");
    std::fs::create_dir_all(&te).unwrap();
    let mut w = ParamStore::load_safetensors(&fixtures().join("text_encoder/model.safetensors")).unwrap();
    let key = "text_model.embeddings.token_embedding.weight";
    let emb = w.get(key).unwrap().clone();
    let (rows, width) = (emb.shape[0], emb.shape[1]);
    let row_bytes = width * emb.dtype.size();
    let mut data = Vec::with_capacity(VOCAB_SIZE * row_bytes);
    for i in 0..VOCAB_SIZE {
        let r = i % rows;
        data.extend_from_slice(&emb.data[r * row_bytes..(r + 1) * row_bytes]);
    }
    w.insert(key, HostTensor::from_bytes(&[VOCAB_SIZE, width], emb.dtype, data).unwrap());
    w.save_safetensors(&te.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("text_encoder/config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = serde_json::json!(VOCAB_SIZE);
    std::fs::write(te.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    copy_dir(&fixtures().join("vae"), &root.join("vae"));
    // UNet: the fixture config with the CLIP width as cross_attention_dim, random weights.
    let mut ucfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("unet/config.json")).unwrap()).unwrap();
    ucfg["cross_attention_dim"] = serde_json::json!(width);
    std::fs::create_dir_all(root.join("unet")).unwrap();
    std::fs::write(root.join("unet/config.json"), serde_json::to_string_pretty(&ucfg).unwrap()).unwrap();
    let cfg = UNetConfig::from_file(root.join("unet/config.json")).unwrap();
    let shape = UNetShape { batch: 2, height: 16, width: 16, context_len: 77, dtype: DType::F32, features: false, taps: false };
    let g = unet::build(&cfg, &shape).unwrap().graph;
    let uw: ParamStore = instagen::nn::init_params(&g, 7).unwrap();
    uw.save_safetensors(&root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    // Tokenizer in the Hugging Face layout.
    let (vocab, merges) = read_bpe_gz(&gz).unwrap();
    std::fs::create_dir_all(root.join("tokenizer")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    std::fs::write(root.join("tokenizer/vocab.json"), serde_json::to_string(&map).unwrap()).unwrap();
    let mut m = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        m += &format!("{a} {b}\n");
    }
    std::fs::write(root.join("tokenizer/merges.txt"), m).unwrap();
    Some(root.to_path_buf())
}

/// [`assemble_at`] under the temp dir (`tag` keeps parallel tests apart).
pub fn assemble(tag: &str) -> Option<PathBuf> {
    assemble_at(&std::env::temp_dir().join(format!("instagen_sample_{tag}_{}", std::process::id())))
}
