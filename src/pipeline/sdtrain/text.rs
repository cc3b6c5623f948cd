//! How far apart a text encoder puts captions of different categories (`instagen sd text-sims`): the evidence
//! for keeping the small SD's CLIP text encoder frozen at its random initialisation. For each name the caption
//! `"a photograph of a <name>"` is encoded; two cosine similarities per pair are reported: of the name's tokens
//! (`last_hidden_state` averaged over the positions after the prefix, before EOS: what the grounding head's
//! text embedding uses) and of the whole 77-token `last_hidden_state` flattened (what the UNet's cross-attention
//! sees, the shared prefix and padding included).

use std::path::Path;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::models::clip_text::ClipTextModel;
use crate::models::tokenizer::{ClipTokenizer, EOS_ID};
use crate::models::weights::{Component, SdCheckpoint};
use crate::runtime::Executor;
use crate::tensor::DType;

/// The prefix every caption of the world corpus starts with.
pub const PREFIX: &str = "a photograph of a ";

/// Pairwise cosine similarities of the names' captions.
#[derive(Clone, Debug)]
pub struct TextSims {
    pub names: Vec<String>,
    /// `[i][j]`: the name tokens' mean embeddings.
    pub name_tokens: Vec<Vec<f32>>,
    /// `[i][j]`: the whole `last_hidden_state`.
    pub sequence: Vec<Vec<f32>>,
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}

impl TextSims {
    /// The largest similarity between two different names: (name tokens, sequence).
    pub fn max_off_diagonal(&self) -> (f32, f32) {
        let mut m = (f32::MIN, f32::MIN);
        for i in 0..self.names.len() {
            for j in 0..self.names.len() {
                if i != j {
                    m = (m.0.max(self.name_tokens[i][j]), m.1.max(self.sequence[i][j]));
                }
            }
        }
        m
    }
    /// The mean similarity between two different names: (name tokens, sequence).
    pub fn mean_off_diagonal(&self) -> (f32, f32) {
        let (mut s, mut n) = ((0.0, 0.0), 0);
        for i in 0..self.names.len() {
            for j in 0..self.names.len() {
                if i != j {
                    s = (s.0 + self.name_tokens[i][j], s.1 + self.sequence[i][j]);
                    n += 1;
                }
            }
        }
        (s.0 / n.max(1) as f32, s.1 / n.max(1) as f32)
    }
}

impl std::fmt::Display for TextSims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (title, m) in [("name tokens", &self.name_tokens), ("whole last_hidden_state", &self.sequence)] {
            writeln!(f, "cosine similarity of \"{PREFIX}<name>\": {title}")?;
            write!(f, "{:>10}", "")?;
            for n in &self.names {
                write!(f, " {:>8.8}", n)?;
            }
            writeln!(f)?;
            for (i, n) in self.names.iter().enumerate() {
                write!(f, "{n:>10.10}")?;
                for v in &m[i] {
                    write!(f, " {v:>8.3}")?;
                }
                writeln!(f)?;
            }
        }
        let (mx, ms) = self.max_off_diagonal();
        let (ax, as_) = self.mean_off_diagonal();
        writeln!(f, "different names: name tokens mean {ax:.3} max {mx:.3}; whole sequence mean {as_:.3} max {ms:.3}")
    }
}

/// Encodes the names' captions with the text encoder of the SD folder `sd` and compares them.
pub fn text_sims(kind: BackendKind, sd: &Path, names: &[String]) -> Result<TextSims> {
    crate::with_backend!(kind, |mk| text_sims_with(mk()?, sd, names))
}

pub fn text_sims_with<B: Backend>(backend: B, sd: &Path, names: &[String]) -> Result<TextSims> {
    if names.len() < 2 {
        return Err(Error::Mismatch { what: "--names".into(), msg: "give at least two names".into() });
    }
    let ckpt = SdCheckpoint::open(sd)?;
    let tok_dir = ckpt.tokenizer_dir().ok_or_else(|| Error::Weights { path: sd.join("tokenizer"), msg: "no tokenizer/ folder".into() })?;
    let tok = ClipTokenizer::from_folder(&tok_dir)?;
    let prefix_len = tok.encode(PREFIX.trim_end())?.ids.iter().position(|&t| t == EOS_ID).unwrap_or(1);
    let model = ClipTextModel::new(ckpt.text_config.clone(), names.len(), DType::F32)?;
    let cg = model.build(false)?;
    let w = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
    let mut ex = Executor::new(backend, cg.graph.clone(), &w)?;
    let mut ids = Vec::new();
    let mut spans = Vec::new();
    for n in names {
        let e = tok.encode(&format!("{PREFIX}{n}"))?;
        let eos = e.ids.iter().position(|&t| t == EOS_ID).unwrap_or(e.ids.len());
        if eos <= prefix_len {
            return Err(Error::Mismatch { what: format!("name {n:?}"), msg: "has no tokens".into() });
        }
        spans.push((prefix_len, eos));
        ids.push(e.ids);
    }
    let feed = model.inputs(&ids)?;
    let feed: Vec<(&str, &crate::tensor::HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    ex.run(&feed)?;
    let h = ex.get(cg.last_hidden_state)?.to_f32();
    let (t, d) = (model.seq, ckpt.text_config.hidden_size);
    let seqs: Vec<&[f32]> = (0..names.len()).map(|i| &h[i * t * d..(i + 1) * t * d]).collect();
    let pooled: Vec<Vec<f32>> = seqs
        .iter()
        .zip(&spans)
        .map(|(s, &(a, b))| (0..d).map(|c| (a..b).map(|p| s[p * d + c]).sum::<f32>() / (b - a) as f32).collect())
        .collect();
    let n = names.len();
    let matrix = |v: &dyn Fn(usize) -> Vec<f32>| -> Vec<Vec<f32>> { (0..n).map(|i| (0..n).map(|j| cos(&v(i), &v(j))).collect()).collect() };
    let name_tokens = matrix(&|i| pooled[i].clone());
    let sequence = matrix(&|i| seqs[i].to_vec());
    Ok(TextSims { names: names.to_vec(), name_tokens, sequence })
}
