//! The grounding head's sizes and loss settings (`GroundingConfig`), as JSON.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::unet::UNetConfig;

/// Every size of the head and every setting of its matching and losses. A config file must give every field
/// (unknown fields are refused), so a file always says what it trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundingConfig {
    /// Model width (the neck's output channels and every attention width but the fusion's).
    pub hidden: usize,
    /// Decoder queries (top image tokens picked by language-guided query selection).
    pub queries: usize,
    /// Channels of each UNet feature level, largest level first (their count is the number of levels).
    pub feature_channels: Vec<usize>,
    /// Sampling points per level and head of the deformable attention.
    pub points: usize,
    pub deform_heads: usize,
    pub enc_layers: usize,
    pub dec_layers: usize,
    /// FFN width of the image encoder and decoder layers.
    pub ffn: usize,
    /// Dropout of every encoder and decoder layer when the model is built with dropout on.
    pub dropout: f32,
    pub text_heads: usize,
    pub text_ffn: usize,
    /// Width and heads of the bidirectional image <-> text attention in the encoder.
    pub fusion_dim: usize,
    pub fusion_heads: usize,
    /// Heads of the decoder's query self-attention and text cross-attention.
    pub dec_heads: usize,
    /// Width of the text embeddings fed in (the CLIP text encoder's hidden size).
    pub text_dim: usize,
    /// GroupNorm groups of the neck.
    pub neck_groups: usize,
    /// Temperature of the image tokens' sine position encoding.
    pub pos_temperature: f32,
    pub class_bias_init: f32,
    pub class_scale_init: f32,
    /// Initial layer scale of the fusion's residuals.
    pub fusion_gamma_init: f32,
    /// Width and height of the encoder proposals at level 0 (doubling per level).
    pub proposal_min_wh: f32,
    pub inverse_sigmoid_eps: f32,
    pub focal_alpha: f32,
    pub focal_gamma: f32,
    pub cost_class: f32,
    pub cost_bbox: f32,
    pub cost_giou: f32,
    pub loss_class: f32,
    pub loss_bbox: f32,
    pub loss_giou: f32,
}

impl GroundingConfig {
    /// The published head (../shared/docs/INSTAGEN.md stage 4) on SD v1.x features at 512 px.
    pub fn paper() -> Self {
        GroundingConfig {
            hidden: 256,
            queries: 900,
            feature_channels: vec![5120, 8320, 14080, 15360],
            points: 4,
            deform_heads: 8,
            enc_layers: 6,
            dec_layers: 6,
            ffn: 2048,
            dropout: 0.1,
            text_heads: 4,
            text_ffn: 1024,
            fusion_dim: 1024,
            fusion_heads: 4,
            dec_heads: 8,
            text_dim: 768,
            neck_groups: 32,
            pos_temperature: 20.0,
            class_bias_init: -4.595,
            class_scale_init: 1.0,
            fusion_gamma_init: 1e-4,
            proposal_min_wh: 0.05,
            inverse_sigmoid_eps: 1e-3,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            cost_class: 2.0,
            cost_bbox: 5.0,
            cost_giou: 2.0,
            loss_class: 1.0,
            loss_bbox: 5.0,
            loss_giou: 2.0,
        }
    }

    /// A small head for tests and small runs: hidden 32, 2 + 2 layers, 16 queries, 2 heads, 2 points, with the
    /// given feature channels and text width (see [`GroundingConfig::for_sd`]).
    pub fn tiny(feature_channels: Vec<usize>, text_dim: usize) -> Self {
        GroundingConfig {
            hidden: 32,
            queries: 16,
            feature_channels,
            points: 2,
            deform_heads: 2,
            enc_layers: 2,
            dec_layers: 2,
            ffn: 64,
            text_heads: 2,
            text_ffn: 64,
            fusion_dim: 32,
            fusion_heads: 2,
            dec_heads: 2,
            text_dim,
            neck_groups: 8,
            ..GroundingConfig::paper()
        }
    }

    /// This config with the feature channels of `unet`'s t=1 feature levels and the text width `text_dim` (the
    /// CLIP text encoder's hidden size).
    pub fn for_sd(mut self, unet: &UNetConfig, text_dim: usize) -> Result<Self> {
        self.feature_channels = feature_channels(unet)?;
        self.text_dim = text_dim;
        self.validate(None)?;
        Ok(self)
    }

    /// Reads a config file (every field required; errors name the file and the field).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        let c: Self = crate::util::json::from_object(&text)
            .map_err(|e| Error::Weights { path: path.to_path_buf(), msg: format!("grounding config: {e}") })?;
        c.validate(Some(path))?;
        Ok(c)
    }

    /// Writes the config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config serialises")
    }

    pub fn levels(&self) -> usize {
        self.feature_channels.len()
    }

    /// Checks the sizes; the error names the field (and the file when given).
    pub fn validate(&self, path: Option<&Path>) -> Result<()> {
        let bad = |field: &str, msg: String| -> Error {
            let msg = format!("grounding config: key \"{field}\": {msg}");
            match path {
                Some(p) => Error::Weights { path: p.to_path_buf(), msg },
                None => Error::Other(msg),
            }
        };
        let positive = [
            ("hidden", self.hidden),
            ("queries", self.queries),
            ("points", self.points),
            ("deform_heads", self.deform_heads),
            ("enc_layers", self.enc_layers),
            ("dec_layers", self.dec_layers),
            ("ffn", self.ffn),
            ("text_heads", self.text_heads),
            ("text_ffn", self.text_ffn),
            ("fusion_dim", self.fusion_dim),
            ("fusion_heads", self.fusion_heads),
            ("dec_heads", self.dec_heads),
            ("text_dim", self.text_dim),
            ("neck_groups", self.neck_groups),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(bad(k, "must be positive".into()));
            }
        }
        if self.feature_channels.is_empty() || self.feature_channels.contains(&0) {
            return Err(bad("feature_channels", format!("{:?}: one positive count per level", self.feature_channels)));
        }
        for (k, heads) in [("deform_heads", self.deform_heads), ("text_heads", self.text_heads), ("dec_heads", self.dec_heads)] {
            if self.hidden % heads != 0 {
                return Err(bad(k, format!("{heads} does not divide hidden {}", self.hidden)));
            }
        }
        if self.fusion_dim % self.fusion_heads != 0 {
            return Err(bad("fusion_heads", format!("{} does not divide fusion_dim {}", self.fusion_heads, self.fusion_dim)));
        }
        if self.hidden % self.neck_groups != 0 {
            return Err(bad("neck_groups", format!("{} does not divide hidden {}", self.neck_groups, self.hidden)));
        }
        if self.hidden % 4 != 0 {
            return Err(bad("hidden", format!("{} must be a multiple of 4 (sine embeddings)", self.hidden)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("dropout", format!("{} must be in [0, 1)", self.dropout)));
        }
        let finite = [
            ("pos_temperature", self.pos_temperature),
            ("class_bias_init", self.class_bias_init),
            ("class_scale_init", self.class_scale_init),
            ("fusion_gamma_init", self.fusion_gamma_init),
            ("focal_alpha", self.focal_alpha),
            ("focal_gamma", self.focal_gamma),
            ("cost_class", self.cost_class),
            ("cost_bbox", self.cost_bbox),
            ("cost_giou", self.cost_giou),
            ("loss_class", self.loss_class),
            ("loss_bbox", self.loss_bbox),
            ("loss_giou", self.loss_giou),
        ];
        for (k, v) in finite {
            if !v.is_finite() {
                return Err(bad(k, format!("{v} is not finite")));
            }
        }
        if !(self.pos_temperature > 0.0) {
            return Err(bad("pos_temperature", "must be positive".into()));
        }
        if !(self.proposal_min_wh > 0.0 && self.proposal_min_wh < 1.0) {
            return Err(bad("proposal_min_wh", format!("{} must be in (0, 1)", self.proposal_min_wh)));
        }
        if !(self.inverse_sigmoid_eps > 0.0 && self.inverse_sigmoid_eps < 0.5) {
            return Err(bad("inverse_sigmoid_eps", format!("{} must be in (0, 0.5)", self.inverse_sigmoid_eps)));
        }
        Ok(())
    }
}

/// Channels of the t=1 feature levels of a UNet (`models::unet::feature_levels`), largest level first, read off
/// the UNet graph built at the smallest latent size its down-sampling allows (no weights needed).
pub fn feature_channels(unet: &UNetConfig) -> Result<Vec<usize>> {
    let side = 1usize << unet.block_out_channels.len().saturating_sub(1);
    let shape = crate::models::unet::UNetShape {
        batch: 2,
        height: side,
        width: side,
        context_len: 1,
        dtype: crate::tensor::DType::F32,
        features: true,
        taps: false,
    };
    let ug = crate::models::unet::build(unet, &shape).map_err(|e| e.building("the UNet graph for its feature channels"))?;
    Ok(ug.features.iter().map(|(_, id)| ug.graph.shape(*id)[3]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_and_tiny_are_valid_and_round_trip() {
        for c in [GroundingConfig::paper(), GroundingConfig::tiny(vec![24, 40], 48)] {
            c.validate(None).unwrap();
            let back: GroundingConfig = crate::util::json::from_object(&c.to_json()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn sd_v1_feature_channels_are_instagens() {
        let unet = UNetConfig::default();
        assert_eq!(feature_channels(&unet).unwrap(), vec![5120, 8320, 14080, 15360]);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v: serde_json::Value = serde_json::from_str(&GroundingConfig::paper().to_json()).unwrap();
        v["deform_heads"] = serde_json::json!(3);
        let dir = std::env::temp_dir().join(format!("grounding-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = GroundingConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("c.json") && e.contains("deform_heads"), "{e}");
        v.as_object_mut().unwrap().remove("queries");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = GroundingConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("queries"), "{e}");
        v["queries"] = serde_json::json!("many");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = GroundingConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("queries"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
