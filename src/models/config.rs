//! `config.json` of the diffusers / transformers components that SD v1.x uses, with SD v1.x defaults for every
//! field (so a CompVis single-file checkpoint, which has no config, gets the real architecture). Unknown fields
//! are ignored; fields the engine depends on are validated.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
    crate::util::json::from_object(&text)
        .map_err(|e| Error::Weights { path: path.to_path_buf(), msg: format!("cannot parse config: {e}") })
}

fn bad(path: Option<&Path>, msg: String) -> Error {
    match path {
        Some(p) => Error::Weights { path: p.to_path_buf(), msg },
        None => Error::Other(msg),
    }
}

/// transformers `CLIPTextConfig` (SD v1.x: openai/clip-vit-large-patch14's text tower).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `quick_gelu` (SD v1.x) or `gelu` (erf form).
    pub hidden_act: String,
    pub layer_norm_eps: f32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate(Some(path))?;
        Ok(c)
    }

    pub fn validate(&self, path: Option<&Path>) -> Result<()> {
        let h = self.num_attention_heads;
        if h == 0 || self.hidden_size % h != 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err(bad(path, format!("CLIPTextConfig: hidden_size {} must be a positive multiple of \
                num_attention_heads {h}, with layers and vocabulary", self.hidden_size)));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(bad(path, format!("CLIPTextConfig: hidden_act '{}' (supported: quick_gelu, gelu)", self.hidden_act)));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// diffusers `AutoencoderKL` (SD v1.x: 128/256/512/512, 2 resnets per block, 32 groups, 4 latent channels).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f32,
    pub shift_factor: Option<f32>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 512,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate(Some(path))?;
        Ok(c)
    }

    pub fn validate(&self, path: Option<&Path>) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(bad(path, format!("AutoencoderKL: {} block_out_channels, {} down and {} up block types \
                (must be equal and non-zero)", n, self.down_block_types.len(), self.up_block_types.len())));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(bad(path, format!("AutoencoderKL: down block type '{t}' (supported: DownEncoderBlock2D)")));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(bad(path, format!("AutoencoderKL: up block type '{t}' (supported: UpDecoderBlock2D)")));
        }
        if self.act_fn != "silu" {
            return Err(bad(path, format!("AutoencoderKL: act_fn '{}' (supported: silu)", self.act_fn)));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(bad(path, format!("AutoencoderKL: scaling_factor {} must be a finite number > 0", self.scaling_factor)));
        }
        if let Some(s) = self.shift_factor.filter(|s| !s.is_finite()) {
            return Err(bad(path, format!("AutoencoderKL: shift_factor {s} must be finite")));
        }
        let g = self.norm_num_groups;
        if g == 0 || self.block_out_channels.iter().any(|c| c % g != 0) {
            return Err(bad(path, format!("AutoencoderKL: norm_num_groups {g} must divide every block_out_channels {:?}",
                self.block_out_channels)));
        }
        Ok(())
    }

    /// Spatial downsampling factor from image to latent (8 for SD v1.x).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `model_index.json` of a diffusers pipeline folder (optional; only the class name is used, for messages).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ModelIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: String,
}

impl ModelIndex {
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sd_v1() {
        let c: ClipTextConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.head_dim(), c.hidden_act.as_str()), (768, 12, 64, "quick_gelu"));
        let v: VaeConfig = serde_json::from_str(r#"{"shift_factor": null, "latents_mean": null}"#).unwrap();
        assert_eq!((v.block_out_channels.as_slice(), v.downscale(), v.scaling_factor), (&[128, 256, 512, 512][..], 8, 0.18215));
        v.validate(None).unwrap();
    }

    #[test]
    fn rejects_what_the_engine_cannot_build() {
        let c: ClipTextConfig = serde_json::from_str(r#"{"hidden_act": "relu"}"#).unwrap();
        assert!(c.validate(None).unwrap_err().to_string().contains("relu"));
        let v: VaeConfig = serde_json::from_str(r#"{"norm_num_groups": 24}"#).unwrap();
        assert!(v.validate(None).unwrap_err().to_string().contains("norm_num_groups 24"));
        for sf in ["0", "-0.5"] {
            let v: VaeConfig = serde_json::from_str(&format!(r#"{{"scaling_factor": {sf}}}"#)).unwrap();
            assert!(v.validate(None).unwrap_err().to_string().contains("scaling_factor"), "{sf}");
        }
    }
}
