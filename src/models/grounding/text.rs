//! Category-name embeddings for the head's text tokens: the CLIP text encoder's output over
//! `"a photograph of a <name>"`, averaged over the name's tokens; each name computed once and cached.

use std::collections::HashMap;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::NodeId;
use crate::models::clip_text::ClipTextModel;
use crate::models::config::ClipTextConfig;
use crate::models::tokenizer::ClipTokenizer;
use crate::params::ParamStore;
use crate::runtime::Executor;
use crate::tensor::{DType, HostTensor};

/// The prompt a name is embedded in.
pub const PREFIX: &str = "a photograph of a";

/// The CLIP text encoder (batch 1, f32) with a cache of name embeddings.
pub struct TextEmbedder<B: Backend> {
    ex: Executor<B>,
    model: ClipTextModel,
    out: NodeId,
    tokenizer: ClipTokenizer,
    prefix_tokens: usize,
    cache: HashMap<String, Vec<f32>>,
}

impl<B: Backend> TextEmbedder<B> {
    /// `params`: the text encoder's weights (`text_model.*`, any float dtype: run in that dtype, read as f32).
    pub fn new(backend: B, config: ClipTextConfig, params: &ParamStore, tokenizer: ClipTokenizer) -> Result<Self> {
        let dtype = params
            .get("text_model.embeddings.token_embedding.weight")
            .map(|t| t.dtype)
            .ok_or_else(|| Error::Other("text encoder weights lack text_model.embeddings.token_embedding.weight".into()))?;
        let model = ClipTextModel::new(config, 1, dtype)?;
        let g = model.build(false)?;
        let out = g.last_hidden_state;
        let ex = Executor::new(backend, g.graph, params).map_err(|e| e.building("the CLIP text encoder for name embeddings"))?;
        let prefix_tokens = tokenizer.tokenize(PREFIX)?.len();
        Ok(TextEmbedder { ex, model, out, tokenizer, prefix_tokens, cache: HashMap::new() })
    }

    pub fn width(&self) -> usize {
        self.model.config.hidden_size
    }

    /// One name's embedding (`hidden_size` values), computed at its first request.
    pub fn embed(&mut self, name: &str) -> Result<Vec<f32>> {
        if let Some(v) = self.cache.get(name) {
            return Ok(v.clone());
        }
        let what = || format!("category name '{name}'");
        if name.trim().is_empty() {
            return Err(Error::Other(format!("{}: empty", what())));
        }
        let prompt = format!("{PREFIX} {name}");
        let enc = self.tokenizer.encode(&prompt)?;
        if enc.truncated {
            return Err(Error::Other(format!("{}: the prompt '{prompt}' is longer than 77 tokens", what())));
        }
        // ids: BOS, prefix tokens, name tokens, EOS.
        let (first, end) = (1 + self.prefix_tokens, enc.len - 1);
        if end <= first || self.tokenizer.tokenize(&prompt)?[..self.prefix_tokens] != self.tokenizer.tokenize(PREFIX)?[..] {
            return Err(Error::Other(format!("{}: no tokens of its own in '{prompt}'", what())));
        }
        let inputs = self.model.inputs(std::slice::from_ref(&enc.ids))?;
        let feed: Vec<(&str, &HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.ex.run(&feed)?;
        let h = self.ex.get(self.out)?.to_f32(); // (1, 77, D)
        let d = self.width();
        let mut v = vec![0.0f64; d];
        for p in first..end {
            for (c, acc) in v.iter_mut().enumerate() {
                *acc += h[p * d + c] as f64;
            }
        }
        let n = (end - first) as f64;
        let v: Vec<f32> = v.iter().map(|x| (x / n) as f32).collect();
        self.cache.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// `[N, hidden_size]` embeddings of `names` (in order).
    pub fn text_embeddings(&mut self, names: &[&str]) -> Result<HostTensor> {
        if names.is_empty() {
            return Err(Error::Other("text embeddings: the category list is empty".into()));
        }
        let mut all = Vec::new();
        for n in names {
            all.extend(self.embed(n)?);
        }
        HostTensor::from_f32(&[names.len(), self.width()], DType::F32, &all)
    }

    /// Names embedded so far.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// The head's `text` input `[B, T, D]` from per-image lists of name embeddings (`[n_b, D]` each, `n_b <= T`):
/// rows past an image's names are zero, which the head reads as padding.
pub fn pad_text(per_image: &[HostTensor], tokens: usize) -> Result<HostTensor> {
    let d = per_image.first().map(|t| t.shape.get(1).copied().unwrap_or(0)).unwrap_or(0);
    let mut out = vec![0.0f32; per_image.len() * tokens * d];
    for (b, t) in per_image.iter().enumerate() {
        if t.shape.len() != 2 || t.shape[1] != d || t.shape[0] > tokens {
            return Err(Error::Mismatch {
                what: format!("text embeddings of image {b}"),
                msg: format!("{:?}, want at most {tokens} rows of {d}", t.shape),
            });
        }
        let v = t.to_f32();
        out[b * tokens * d..b * tokens * d + v.len()].copy_from_slice(&v);
    }
    HostTensor::from_f32(&[per_image.len(), tokens, d], DType::F32, &out)
}
