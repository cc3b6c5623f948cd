//! Stable Diffusion's denoiser, diffusers' `UNet2DConditionModel`, as a graph builder.
//!
//! - Layout: feature maps are NHWC (`[B, H, W, C]`); conv weights keep diffusers' `[O, C, kh, kw]`, so a diffusers
//!   `unet/diffusion_pytorch_model.safetensors` loads unchanged under its own key names. CompVis checkpoints
//!   (`model.diffusion_model.*`) map to those names through [`compvis_key`].
//! - Inputs: `sample` `[B, h, w, in_channels]` (graph dtype), `timestep` `[B]` f32, `context` `[B, T, cross_dim]`
//!   (graph dtype). Output: the predicted noise `[B, h, w, out_channels]`.
//! - The architecture is SD v1.x's (also SD 2.x's with `use_linear_projection` and per-block head counts):
//!   sinusoidal time embedding -> MLP; `conv_in`; down blocks of (ResNet [+ spatial transformer]) x
//!   `layers_per_block` [+ strided-conv downsampler]; a mid block ResNet, transformer, ResNet; up blocks of
//!   (concat skip, ResNet [+ transformer]) x (`layers_per_block` + 1) [+ nearest-2x upsampler + conv]; GroupNorm+SiLU;
//!   `conv_out`. Other diffusers options (class/addition embeddings, other block types, time-scale-shift ResNets) are
//!   rejected with an error naming the key.
//! - Feature tap (InstaGen stage 3): [`feature_levels`] groups the outputs of every CompVis input block, the middle
//!   block and every output block by resolution and puts the unconditional and conditional halves of the batch side
//!   by side; see its doc.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op, UnaryOp};
use crate::nn::attention::attention;
use crate::nn::spatial::{conv2d, group_norm, upsample_nearest2x};
use crate::nn::{layer_norm, linear};
use crate::tensor::DType;

/// An integer or one integer per block (diffusers accepts both for head counts).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[i.min(v.len().saturating_sub(1))],
        }
    }
}

/// The keys of diffusers' `unet/config.json` that this builder reads. Missing keys take SD v1.x's values.
/// Keys not listed are kept in `other` and checked by [`UNetConfig::validate`] (a non-default value of an option
/// we do not implement is an error).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct UNetConfig {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// In SD v1.x this is the number of heads (a diffusers naming quirk), used when `num_attention_heads` is null.
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub norm_num_groups: usize,
    pub norm_eps: f32,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub use_linear_projection: bool,
    pub transformer_layers_per_block: usize,
    pub downsample_padding: usize,
    pub act_fn: String,
    pub mid_block_scale_factor: f32,
    pub resnet_out_scale_factor: f32,
    pub center_input_sample: bool,
    /// Every other key of the file.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Default for UNetConfig {
    /// SD v1.x (v1.4 / v1.5): 860 M parameters.
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        UNetConfig {
            sample_size: 64,
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            cross_attention_dim: 768,
            down_block_types: s(&["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            use_linear_projection: false,
            transformer_layers_per_block: 1,
            downsample_padding: 1,
            act_fn: "silu".into(),
            mid_block_scale_factor: 1.0,
            resnet_out_scale_factor: 1.0,
            center_input_sample: false,
            other: BTreeMap::new(),
        }
    }
}

/// Keys of diffusers' config that must keep their default (null / false / the named string) here.
const MUST_BE_DEFAULT: &[(&str, &str)] = &[
    ("class_embed_type", "null"),
    ("addition_embed_type", "null"),
    ("encoder_hid_dim", "null"),
    ("encoder_hid_dim_type", "null"),
    ("time_cond_proj_dim", "null"),
    ("time_embedding_act_fn", "null"),
    ("time_embedding_dim", "null"),
    ("timestep_post_act", "null"),
    ("num_class_embeds", "null"),
    ("projection_class_embeddings_input_dim", "null"),
    ("cross_attention_norm", "null"),
    ("reverse_transformer_layers_per_block", "null"),
    ("mid_block_only_cross_attention", "null"),
    ("dual_cross_attention", "false"),
    ("only_cross_attention", "false"),
    ("class_embeddings_concat", "false"),
    ("resnet_skip_time_act", "false"),
    ("time_embedding_type", "\"positional\""),
    ("resnet_time_scale_shift", "\"default\""),
    ("attention_type", "\"default\""),
    ("conv_in_kernel", "3"),
    ("conv_out_kernel", "3"),
];

impl UNetConfig {
    /// SD v1.x's UNet.
    pub fn sd_v1() -> Self {
        Self::default()
    }

    /// Reads and validates `unet/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let cfg: UNetConfig = crate::util::json::from_object(text)
            .map_err(|e| Error::Weights { path: origin.to_path_buf(), msg: format!("unet config: {e}") })?;
        cfg.validate().map_err(|msg| Error::Weights { path: origin.to_path_buf(), msg: format!("unet config: {msg}") })?;
        Ok(cfg)
    }

    /// Checks that the configuration is one this builder implements; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, want) in MUST_BE_DEFAULT {
            if let Some(v) = self.other.get(*key) {
                let ok = v.to_string() == *want || (*want == "false" && v.is_null());
                if !ok {
                    return Err(format!("{key}: unsupported value {v} (supported: {want})"));
                }
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(format!("down_block_types: unsupported {t:?} (CrossAttnDownBlock2D, DownBlock2D)"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(format!("up_block_types: unsupported {t:?} (CrossAttnUpBlock2D, UpBlock2D)"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(t) => return Err(format!("mid_block_type: unsupported {t:?} (UNetMidBlock2DCrossAttn)")),
        }
        if self.act_fn != "silu" {
            return Err(format!("act_fn: unsupported {:?} (silu)", self.act_fn));
        }
        if self.mid_block_scale_factor != 1.0 || self.resnet_out_scale_factor != 1.0 {
            return Err("mid_block_scale_factor / resnet_out_scale_factor: only 1.0 is supported".into());
        }
        if self.center_input_sample {
            return Err("center_input_sample: unsupported value true".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.cross_attention_dim == 0 {
            return Err(format!("in_channels ({}), out_channels ({}) and cross_attention_dim ({}) must be >= 1",
                self.in_channels, self.out_channels, self.cross_attention_dim));
        }
        if self.layers_per_block == 0 || self.transformer_layers_per_block == 0 {
            return Err("layers_per_block and transformer_layers_per_block must be >= 1".into());
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads(i);
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 || heads == 0 || c % heads != 0 {
                return Err(format!(
                    "block_out_channels[{i}] = {c} must be divisible by norm_num_groups ({}) and the head count ({heads}, \
                     from attention_head_dim / num_attention_heads)",
                    self.norm_num_groups
                ));
            }
        }
        if self.block_out_channels[0] % 2 != 0 {
            return Err("block_out_channels[0] must be even (sinusoidal time embedding)".into());
        }
        Ok(())
    }

    /// Attention heads of down block `i` (diffusers: `num_attention_heads`, else `attention_head_dim`).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(i)
    }

    /// Channels of the time embedding (`4 * block_out_channels[0]`).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }
}

/// Graph nodes of one UNet forward.
#[derive(Clone, Debug)]
pub struct UNetNodes {
    /// The predicted noise `[B, h, w, out_channels]`.
    pub out: NodeId,
    /// Outputs of CompVis input blocks 0.. (conv_in, each ResNet[+transformer], each downsampler).
    pub input_blocks: Vec<NodeId>,
    /// Output of the middle block.
    pub middle: NodeId,
    /// Outputs of CompVis output blocks 0.. (each ResNet[+transformer][+upsampler]).
    pub output_blocks: Vec<NodeId>,
    /// Every module output under its diffusers module name, in forward order (`time_embedding`, `conv_in`,
    /// `down_blocks.0.resnets.0`, `down_blocks.0.attentions.0`, ..., `mid_block`, ..., `conv_out`), the points
    /// the parity fixtures hook. Not graph outputs unless marked.
    pub taps: Vec<(String, NodeId)>,
}

struct Ctx<'a> {
    cfg: &'a UNetConfig,
    /// SiLU of the time embedding `[B, temb]`, shared by every ResNet.
    temb_act: NodeId,
    context: NodeId,
    taps: Vec<(String, NodeId)>,
}

impl Ctx<'_> {
    fn tap(&mut self, name: &str, id: NodeId) {
        self.taps.push((name.to_string(), id));
    }
}

/// diffusers `ResnetBlock2D` (time-embedding added after conv1, 1x1 conv shortcut when channels change).
fn resnet(g: &mut Graph, c: &mut Ctx, p: &str, x: NodeId, cout: usize) -> Result<NodeId> {
    let s = g.shape(x).to_vec(); // (B, H, W, Cin)
    let (b, cin) = (s[0], s[3]);
    let (groups, eps) = (c.cfg.norm_num_groups, c.cfg.norm_eps);
    let h = group_norm(g, x, &format!("{p}.norm1"), groups, eps, true)?; // (B, H, W, Cin)
    let h = conv2d(g, h, &format!("{p}.conv1"), cin, cout, 3, 1, 1)?; // (B, H, W, Cout)
    let t = linear(g, &format!("{p}.time_emb_proj"), c.temb_act, cout, true)?; // (B, Cout)
    let t = g.reshape(t, &[b, 1, 1, cout])?; // (B, 1, 1, Cout)
    let h = g.add(h, t)?; // (B, H, W, Cout)
    let h = group_norm(g, h, &format!("{p}.norm2"), groups, eps, true)?; // (B, H, W, Cout)
    let h = conv2d(g, h, &format!("{p}.conv2"), cout, cout, 3, 1, 1)?; // (B, H, W, Cout)
    let skip = if cin != cout { conv2d(g, x, &format!("{p}.conv_shortcut"), cin, cout, 1, 1, 0)? } else { x };
    let y = g.add(skip, h)?; // (B, H, W, Cout)
    c.tap(p, y);
    Ok(y)
}

/// diffusers `Attention` (to_q/to_k/to_v without bias, to_out.0 with bias); `kv` is `x` for self-attention.
fn attn(g: &mut Graph, p: &str, x: NodeId, kv: NodeId, heads: usize) -> Result<NodeId> {
    let c = g.shape(x)[2];
    let q = linear(g, &format!("{p}.to_q"), x, c, false)?; // (B, Tq, C)
    let k = linear(g, &format!("{p}.to_k"), kv, c, false)?; // (B, Tk, C)
    let v = linear(g, &format!("{p}.to_v"), kv, c, false)?; // (B, Tk, C)
    let o = attention(g, q, k, v, heads, false)?; // (B, Tq, C)
    linear(g, &format!("{p}.to_out.0"), o, c, true) // (B, Tq, C)
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-LayerNorm
/// with a residual.
fn transformer_block(g: &mut Graph, c: &Ctx, p: &str, x: NodeId, heads: usize) -> Result<NodeId> {
    let ch = g.shape(x)[2];
    let n = layer_norm(g, &format!("{p}.norm1"), x, 1e-5)?; // (B, T, C)
    let a = attn(g, &format!("{p}.attn1"), n, n, heads)?; // (B, T, C)
    let x = g.add(a, x)?;
    let n = layer_norm(g, &format!("{p}.norm2"), x, 1e-5)?;
    let a = attn(g, &format!("{p}.attn2"), n, c.context, heads)?; // (B, T, C)
    let x = g.add(a, x)?;
    let n = layer_norm(g, &format!("{p}.norm3"), x, 1e-5)?;
    let h = linear(g, &format!("{p}.ff.net.0.proj"), n, 8 * ch, true)?; // (B, T, 8C)
    let h = g.push(Op::Geglu, &[h])?; // (B, T, 4C)
    let h = linear(g, &format!("{p}.ff.net.2"), h, ch, true)?; // (B, T, C)
    g.add(h, x)
}

/// diffusers `Transformer2DModel` (continuous input): GroupNorm (eps 1e-6), proj_in (1x1 conv, or a linear with
/// `use_linear_projection`), transformer blocks over the H*W tokens, proj_out, residual.
fn spatial_transformer(g: &mut Graph, c: &mut Ctx, p: &str, x: NodeId, heads: usize) -> Result<NodeId> {
    let s = g.shape(x).to_vec(); // (B, H, W, C)
    let (b, h, w, ch) = (s[0], s[1], s[2], s[3]);
    let n = group_norm(g, x, &format!("{p}.norm"), c.cfg.norm_num_groups, 1e-6, false)?; // (B, H, W, C)
    let mut t = if c.cfg.use_linear_projection {
        let t = g.reshape(n, &[b, h * w, ch])?;
        linear(g, &format!("{p}.proj_in"), t, ch, true)? // (B, HW, C)
    } else {
        let t = conv2d(g, n, &format!("{p}.proj_in"), ch, ch, 1, 1, 0)?; // (B, H, W, C)
        g.reshape(t, &[b, h * w, ch])? // (B, HW, C): free in NHWC
    };
    for k in 0..c.cfg.transformer_layers_per_block {
        t = transformer_block(g, c, &format!("{p}.transformer_blocks.{k}"), t, heads)?;
    }
    let o = if c.cfg.use_linear_projection {
        let o = linear(g, &format!("{p}.proj_out"), t, ch, true)?;
        g.reshape(o, &[b, h, w, ch])?
    } else {
        let o = g.reshape(t, &[b, h, w, ch])?;
        conv2d(g, o, &format!("{p}.proj_out"), ch, ch, 1, 1, 0)?
    };
    let y = g.add(o, x)?; // (B, H, W, C)
    c.tap(p, y);
    Ok(y)
}

/// The UNet forward on existing graph nodes: `sample` `[B, h, w, in]`, `timestep` `[B]` f32, `context`
/// `[B, T, cross_dim]`. `h` and `w` must be divisible by `2^(levels - 1)`.
pub fn forward(g: &mut Graph, cfg: &UNetConfig, sample: NodeId, timestep: NodeId, context: NodeId) -> Result<UNetNodes> {
    cfg.validate().map_err(|m| Error::graph("unet", m))?;
    let dtype = g.dtype(sample);
    let s = g.shape(sample).to_vec();
    let levels = cfg.block_out_channels.len();
    let div = 1usize << (levels - 1);
    if s.len() != 4 || s[3] != cfg.in_channels || s[1] % div != 0 || s[2] % div != 0 {
        return Err(Error::graph(
            "unet",
            format!("sample {s:?} must be [B, h, w, {}] with h, w divisible by {div}", cfg.in_channels),
        ));
    }
    let b = s[0];
    if g.shape(timestep) != [b] || g.dtype(timestep) != DType::F32 {
        return Err(Error::graph("unet", format!("timestep must be f32 [{b}], got {} {:?}", g.dtype(timestep), g.shape(timestep))));
    }
    let cs = g.shape(context);
    if cs.len() != 3 || cs[0] != b || cs[2] != cfg.cross_attention_dim || g.dtype(context) != dtype {
        return Err(Error::graph(
            "unet",
            format!("context must be {dtype} [{b}, T, {}], got {} {cs:?}", cfg.cross_attention_dim, g.dtype(context)),
        ));
    }
    let c0 = cfg.block_out_channels[0];
    let mut taps = Vec::new();

    // Time embedding: sinusoidal (f32) -> linear_1 -> SiLU -> linear_2.
    let temb = g.push(
        Op::TimestepEmbedding { dim: c0, flip_sin_to_cos: cfg.flip_sin_to_cos, shift: cfg.freq_shift, max_period: 10000.0 },
        &[timestep],
    )?; // (B, c0) f32
    let temb = if dtype == DType::F32 { temb } else { g.cast(temb, dtype)? };
    let temb = linear(g, "time_embedding.linear_1", temb, cfg.time_embed_dim(), true)?;
    let temb = g.unary(UnaryOp::Silu, temb)?;
    let temb = linear(g, "time_embedding.linear_2", temb, cfg.time_embed_dim(), true)?; // (B, 4 c0)
    taps.push(("time_embedding".to_string(), temb));
    let temb_act = g.unary(UnaryOp::Silu, temb)?;
    let mut c = Ctx { cfg, temb_act, context, taps };

    let mut x = conv2d(g, sample, "conv_in", cfg.in_channels, c0, 3, 1, 1)?; // (B, h, w, c0)
    c.tap("conv_in", x);
    let mut input_blocks = vec![x];

    for (i, kind) in cfg.down_block_types.iter().enumerate() {
        let cout = cfg.block_out_channels[i];
        let cross = kind == "CrossAttnDownBlock2D";
        for j in 0..cfg.layers_per_block {
            x = resnet(g, &mut c, &format!("down_blocks.{i}.resnets.{j}"), x, cout)?;
            if cross {
                x = spatial_transformer(g, &mut c, &format!("down_blocks.{i}.attentions.{j}"), x, cfg.heads(i))?;
            }
            input_blocks.push(x);
        }
        if i + 1 < levels {
            let p = format!("down_blocks.{i}.downsamplers.0");
            x = conv2d(g, x, &format!("{p}.conv"), cout, cout, 3, 2, cfg.downsample_padding)?; // (B, h/2, w/2, C)
            c.tap(&p, x);
            input_blocks.push(x);
        }
    }

    let top = cfg.block_out_channels[levels - 1];
    x = resnet(g, &mut c, "mid_block.resnets.0", x, top)?;
    x = spatial_transformer(g, &mut c, "mid_block.attentions.0", x, cfg.heads(levels - 1))?;
    x = resnet(g, &mut c, "mid_block.resnets.1", x, top)?;
    c.tap("mid_block", x);
    let middle = x;

    let mut skips = input_blocks.clone();
    let mut output_blocks = Vec::new();
    for (i, kind) in cfg.up_block_types.iter().enumerate() {
        let level = levels - 1 - i;
        let cout = cfg.block_out_channels[level];
        let cross = kind == "CrossAttnUpBlock2D";
        let heads = cfg.heads(level);
        for j in 0..=cfg.layers_per_block {
            let skip = skips.pop().ok_or_else(|| Error::graph("unet", "skip connections exhausted"))?;
            x = g.concat(&[x, skip], 3)?; // (B, H, W, C + Cskip): diffusers cat([hidden, skip], dim=1)
            x = resnet(g, &mut c, &format!("up_blocks.{i}.resnets.{j}"), x, cout)?;
            if cross {
                x = spatial_transformer(g, &mut c, &format!("up_blocks.{i}.attentions.{j}"), x, heads)?;
            }
            if j < cfg.layers_per_block || i + 1 == levels {
                output_blocks.push(x);
            }
        }
        if i + 1 < levels {
            let p = format!("up_blocks.{i}.upsamplers.0");
            let u = upsample_nearest2x(g, x)?; // (B, 2H, 2W, C)
            x = conv2d(g, u, &format!("{p}.conv"), cout, cout, 3, 1, 1)?;
            c.tap(&p, x);
            output_blocks.push(x);
        }
    }

    let n = group_norm(g, x, "conv_norm_out", cfg.norm_num_groups, cfg.norm_eps, true)?;
    let out = conv2d(g, n, "conv_out", c0, cfg.out_channels, 3, 1, 1)?; // (B, h, w, out)
    c.tap("conv_out", out);
    Ok(UNetNodes { out, input_blocks, middle, output_blocks, taps: c.taps })
}

/// A standalone UNet graph: inputs `sample`, `timestep`, `context`; output `out` marked.
#[derive(Clone, Debug)]
pub struct UNetGraph {
    pub graph: Graph,
    pub nodes: UNetNodes,
    /// `(name, node)` of the feature levels when requested (marked as outputs), see [`feature_levels`].
    pub features: Vec<(String, NodeId)>,
}

/// What [`build`] makes: batch, latent size, context length, storage dtype, whether to mark the t=1 feature
/// levels and/or every tap as graph outputs.
#[derive(Clone, Debug)]
pub struct UNetShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub context_len: usize,
    pub dtype: DType,
    pub features: bool,
    pub taps: bool,
}

impl UNetShape {
    /// SD v1.x at 512x512: 64x64 latents, 77 context tokens.
    pub fn sd_v1(batch: usize, dtype: DType) -> Self {
        UNetShape { batch, height: 64, width: 64, context_len: 77, dtype, features: false, taps: false }
    }
}

/// Builds the UNet as its own graph with inputs `sample` `[B, h, w, in]` (dtype), `timestep` `[B]` f32 and
/// `context` `[B, T, cross_dim]` (dtype).
pub fn build(cfg: &UNetConfig, shape: &UNetShape) -> Result<UNetGraph> {
    let mut g = Graph::new();
    let sample = g.input("sample", &[shape.batch, shape.height, shape.width, cfg.in_channels], shape.dtype)?;
    let timestep = g.input("timestep", &[shape.batch], DType::F32)?;
    let context = g.input("context", &[shape.batch, shape.context_len, cfg.cross_attention_dim], shape.dtype)?;
    let nodes = forward(&mut g, cfg, sample, timestep, context)?;
    g.mark_output(nodes.out);
    let features = if shape.features { feature_levels(&mut g, &nodes)? } else { Vec::new() };
    for (_, f) in &features {
        g.mark_output(*f);
    }
    if shape.taps {
        for (_, t) in &nodes.taps {
            g.mark_output(*t);
        }
    }
    Ok(UNetGraph { graph: g, nodes, features })
}

/// The InstaGen t=1 feature levels (see ../shared/docs/INSTAGEN.md, stage 3).
///
/// The batch must be `[uncond (N); cond (N)]`. Every CompVis input block output, the middle block output and every
/// output block output is grouped by its spatial size; for each block the unconditional and conditional halves
/// are placed side by side along channels (`[N, h, w, C_uncond | C_cond]`), and the blocks of one size are
/// concatenated along channels in forward order (input blocks, middle, output blocks). Levels are returned from
/// the largest size down, named `feat_{h}` after the latent height (`feat_{h}x{w}` when not square): for SD v1.x
/// at 512x512, `feat_64` (5120 channels), `feat_32` (8320), `feat_16` (14080), `feat_8` (15360).
pub fn feature_levels(g: &mut Graph, nodes: &UNetNodes) -> Result<Vec<(String, NodeId)>> {
    let blocks: Vec<NodeId> =
        (nodes.input_blocks.iter().chain(std::iter::once(&nodes.middle)).chain(&nodes.output_blocks)).copied().collect();
    let b = g.shape(blocks[0])[0];
    if b % 2 != 0 {
        return Err(Error::graph("unet features", format!("batch {b} must be [uncond; cond] (even)")));
    }
    let n = b / 2;
    // Sizes in order of first appearance (the input blocks go from the largest size down).
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    for &x in &blocks {
        let s = g.shape(x);
        if !sizes.contains(&(s[1], s[2])) {
            sizes.push((s[1], s[2]));
        }
    }
    let mut out = Vec::new();
    for (h, w) in sizes {
        let mut parts = Vec::new();
        for &x in &blocks {
            let s = g.shape(x);
            if (s[1], s[2]) != (h, w) {
                continue;
            }
            let u = g.slice(x, 0, 0, n)?; // (N, h, w, C)
            let c = g.slice(x, 0, n, b)?; // (N, h, w, C)
            parts.push(u);
            parts.push(c);
        }
        let f = g.concat(&parts, 3)?; // (N, h, w, sum 2C)
        let name = if h == w { format!("feat_{h}") } else { format!("feat_{h}x{w}") };
        out.push((name, f));
    }
    Ok(out)
}

// ---- CompVis (ldm) checkpoint keys -------------------------------------------------------------------------

const COMPVIS_PREFIX: &str = "model.diffusion_model.";

/// CompVis ResBlock sub-keys and their diffusers names.
const RES_KEYS: &[(&str, &str)] = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

fn map_res(rest: &str) -> Option<String> {
    RES_KEYS.iter().find_map(|(c, d)| rest.strip_prefix(c).filter(|r| r.starts_with('.')).map(|r| format!("{d}{r}")))
}

fn unmap_res(rest: &str) -> Option<String> {
    RES_KEYS.iter().find_map(|(c, d)| rest.strip_prefix(d).filter(|r| r.starts_with('.')).map(|r| format!("{c}{r}")))
}

/// `"12.rest"` -> `(12, "rest")`.
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// The diffusers key for a CompVis (`ldm`) SD v1.x UNet key `model.diffusion_model.*`, or `None` for keys that are
/// not UNet parameters (VAE `first_stage_model.*`, text encoder `cond_stage_model.*`, EMA copies, ...).
/// Assumes SD v1.x's `layers_per_block` = 2; see [`compvis_key_for`].
pub fn compvis_key(key: &str) -> Option<String> {
    compvis_key_for(key, 2)
}

/// [`compvis_key`] for a UNet with `layers_per_block` ResNets per down block (`layers_per_block + 1` per up
/// block). Transformer sub-keys (`norm`, `proj_in`, `transformer_blocks.*`, `proj_out`) are named alike in both.
pub fn compvis_key_for(key: &str, layers_per_block: usize) -> Option<String> {
    let k = key.strip_prefix(COMPVIS_PREFIX)?;
    let per = layers_per_block + 1;
    if let Some(r) = k.strip_prefix("time_embed.") {
        let (i, rest) = split_index(r)?;
        let name = match i {
            0 => "linear_1",
            2 => "linear_2",
            _ => return None,
        };
        return Some(format!("time_embedding.{name}.{rest}"));
    }
    if let Some(r) = k.strip_prefix("out.") {
        let (i, rest) = split_index(r)?;
        let name = match i {
            0 => "conv_norm_out",
            2 => "conv_out",
            _ => return None,
        };
        return Some(format!("{name}.{rest}"));
    }
    if let Some(r) = k.strip_prefix("input_blocks.") {
        let (n, r) = split_index(r)?;
        let (m, rest) = split_index(r)?;
        if n == 0 {
            return (m == 0).then(|| format!("conv_in.{rest}"));
        }
        let (i, j) = ((n - 1) / per, (n - 1) % per);
        return match (j == layers_per_block, m) {
            (true, 0) => rest.strip_prefix("op.").map(|r| format!("down_blocks.{i}.downsamplers.0.conv.{r}")),
            (false, 0) => map_res(rest).map(|r| format!("down_blocks.{i}.resnets.{j}.{r}")),
            (false, 1) => Some(format!("down_blocks.{i}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    if let Some(r) = k.strip_prefix("middle_block.") {
        let (m, rest) = split_index(r)?;
        return match m {
            0 => map_res(rest).map(|r| format!("mid_block.resnets.0.{r}")),
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            2 => map_res(rest).map(|r| format!("mid_block.resnets.1.{r}")),
            _ => None,
        };
    }
    if let Some(r) = k.strip_prefix("output_blocks.") {
        let (n, r) = split_index(r)?;
        let (m, rest) = split_index(r)?;
        let (i, j) = (n / per, n % per);
        // Sub-module 1 is the transformer, or the upsampler in blocks without attention (its only child is `conv`).
        return match m {
            0 => map_res(rest).map(|r| format!("up_blocks.{i}.resnets.{j}.{r}")),
            1 | 2 if rest.starts_with("conv.") => Some(format!("up_blocks.{i}.upsamplers.0.{rest}")),
            1 => Some(format!("up_blocks.{i}.attentions.{j}.{rest}")),
            _ => None,
        };
    }
    None
}

/// The CompVis key for a diffusers UNet key (the inverse of [`compvis_key_for`]); `has_attention(i)` tells
/// whether up block `i` has transformers (it decides whether its upsampler is sub-module 1 or 2).
pub fn diffusers_to_compvis(key: &str, layers_per_block: usize, up_has_attention: impl Fn(usize) -> bool) -> Option<String> {
    let per = layers_per_block + 1;
    let out = |s: String| Some(format!("{COMPVIS_PREFIX}{s}"));
    if let Some(r) = key.strip_prefix("time_embedding.linear_1.") {
        return out(format!("time_embed.0.{r}"));
    }
    if let Some(r) = key.strip_prefix("time_embedding.linear_2.") {
        return out(format!("time_embed.2.{r}"));
    }
    if let Some(r) = key.strip_prefix("conv_norm_out.") {
        return out(format!("out.0.{r}"));
    }
    if let Some(r) = key.strip_prefix("conv_out.") {
        return out(format!("out.2.{r}"));
    }
    if let Some(r) = key.strip_prefix("conv_in.") {
        return out(format!("input_blocks.0.0.{r}"));
    }
    if let Some(r) = key.strip_prefix("down_blocks.") {
        let (i, r) = split_index(r)?;
        if let Some(r) = r.strip_prefix("downsamplers.0.conv.") {
            return out(format!("input_blocks.{}.0.op.{r}", 1 + i * per + layers_per_block));
        }
        let (kind, r) = r.split_once('.')?;
        let (j, rest) = split_index(r)?;
        let n = 1 + i * per + j;
        return match kind {
            "resnets" => out(format!("input_blocks.{n}.0.{}", unmap_res(rest)?)),
            "attentions" => out(format!("input_blocks.{n}.1.{rest}")),
            _ => None,
        };
    }
    if let Some(r) = key.strip_prefix("mid_block.") {
        let (kind, r) = r.split_once('.')?;
        let (j, rest) = split_index(r)?;
        return match (kind, j) {
            ("resnets", 0) => out(format!("middle_block.0.{}", unmap_res(rest)?)),
            ("attentions", 0) => out(format!("middle_block.1.{rest}")),
            ("resnets", 1) => out(format!("middle_block.2.{}", unmap_res(rest)?)),
            _ => None,
        };
    }
    if let Some(r) = key.strip_prefix("up_blocks.") {
        let (i, r) = split_index(r)?;
        if let Some(r) = r.strip_prefix("upsamplers.0.") {
            let m = if up_has_attention(i) { 2 } else { 1 };
            return out(format!("output_blocks.{}.{m}.{r}", i * per + layers_per_block));
        }
        let (kind, r) = r.split_once('.')?;
        let (j, rest) = split_index(r)?;
        let n = i * per + j;
        return match kind {
            "resnets" => out(format!("output_blocks.{n}.0.{}", unmap_res(rest)?)),
            "attentions" => out(format!("output_blocks.{n}.1.{rest}")),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compvis_keys_of_sd_v1() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            ("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight"),
            ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.bias", "down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("input_blocks.11.0.out_layers.3.weight", "down_blocks.3.resnets.1.conv2.weight"),
            ("middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight"),
            ("middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            ("output_blocks.5.1.norm.weight", "up_blocks.1.attentions.2.norm.weight"),
            ("output_blocks.11.1.proj_out.bias", "up_blocks.3.attentions.2.proj_out.bias"),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (c, d) in cases {
            let full = format!("model.diffusion_model.{c}");
            assert_eq!(compvis_key(&full).as_deref(), Some(d), "{c}");
            assert_eq!(diffusers_to_compvis(d, 2, |i| i > 0).as_deref(), Some(full.as_str()), "{d}");
        }
        assert_eq!(compvis_key("first_stage_model.decoder.conv_in.weight"), None);
        assert_eq!(compvis_key("model_ema.diffusion_modelinput_blocks00weight"), None);
    }

    #[test]
    fn config_defaults_and_rejections() {
        let cfg = UNetConfig::from_json("{}", "x/config.json").unwrap();
        assert_eq!(cfg, UNetConfig::sd_v1());
        assert_eq!(cfg.heads(0), 8);
        let err = UNetConfig::from_json(r#"{"class_embed_type": "timestep"}"#, "x/config.json").unwrap_err();
        assert!(err.to_string().contains("class_embed_type") && err.to_string().contains("x/config.json"), "{err}");
        let err = UNetConfig::from_json(r#"{"up_block_types": ["A", "B", "C", "D"]}"#, "c.json").unwrap_err();
        assert!(err.to_string().contains("up_block_types"), "{err}");
        let sd2 = UNetConfig::from_json(r#"{"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true}"#, "c").unwrap();
        assert_eq!(sd2.heads(2), 20);
    }
}
