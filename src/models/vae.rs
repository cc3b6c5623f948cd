//! The SD v1.x VAE (diffusers `AutoencoderKL`), NHWC: the encoder to the latent distribution (mean, logvar;
//! a sample uses noise from our own generator, fed as an input) and the decoder back to an image.
//!
//! Parameter names are the diffusers keys: `encoder.conv_in`, `encoder.down_blocks.{i}.resnets.{j}.{norm1,
//! conv1,norm2,conv2,conv_shortcut}`, `encoder.down_blocks.{i}.downsamplers.0.conv`, `{encoder,decoder}.mid_block.
//! {resnets.{0,1},attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}}`, `{encoder,decoder}.{conv_norm_out,conv_out}`,
//! `decoder.up_blocks.{i}.resnets.{j}`, `decoder.up_blocks.{i}.upsamplers.0.conv`, `quant_conv`, `post_quant_conv`.
//!
//! Semantics (diffusers 0.42): GroupNorm eps 1e-6 with SiLU before each resnet conv; a resnet adds its input
//! (through a 1x1 `conv_shortcut` when the channels change); a downsampler pads (0,1,0,1) with zeros and runs a
//! 3x3 stride-2 conv with no padding; an upsampler is nearest 2x then a 3x3 conv; the mid-block attention is one
//! head over all `H*W` positions with the full channel width, GroupNorm first and a residual; the encoder ends
//! with GroupNorm+SiLU, a 3x3 conv to `2*latent` channels and the 1x1 `quant_conv`; moments split along channels
//! into mean and logvar (clamped to [-30, 20]); a sample is `mean + exp(logvar/2) * noise`.

use crate::error::{Error, Result};
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use crate::models::config::VaeConfig;
use crate::models::layers;
use crate::nn;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// GroupNorm epsilon of the SD VAE.
pub const EPS: f32 = 1e-6;

/// Builds VAE graphs for a given configuration and dtype.
#[derive(Clone, Debug)]
pub struct Vae {
    pub config: VaeConfig,
    pub dtype: DType,
}

/// An encoder graph: input [`Vae::IMAGE`] `[N, H, W, in_channels]` in [-1, 1] and [`Vae::NOISE`]
/// `[N, H/f, W/f, latent]`; outputs mean, logvar and the sample.
#[derive(Clone, Debug)]
pub struct EncoderGraph {
    pub graph: Graph,
    pub mean: NodeId,
    pub logvar: NodeId,
    pub sample: NodeId,
    /// `(name, node)` of intermediate activations (conv_in, each down block, mid block, conv_out, moments).
    pub blocks: Vec<(String, NodeId)>,
}

/// A decoder graph: input [`Vae::LATENT`] `[N, h, w, latent]`; output the image `[N, h*f, w*f, out_channels]`.
#[derive(Clone, Debug)]
pub struct DecoderGraph {
    pub graph: Graph,
    pub image: NodeId,
    /// `(name, node)` of intermediate activations (post_quant_conv, conv_in, mid block, each up block).
    pub blocks: Vec<(String, NodeId)>,
}

impl Vae {
    pub const IMAGE: &'static str = "image";
    pub const NOISE: &'static str = "noise";
    pub const LATENT: &'static str = "latent";

    pub fn new(config: VaeConfig, dtype: DType) -> Result<Self> {
        config.validate(None)?;
        Ok(Vae { config, dtype })
    }

    fn groups(&self) -> usize {
        self.config.norm_num_groups
    }

    fn resnet(&self, g: &mut Graph, p: &str, x: NodeId, cin: usize, cout: usize) -> Result<NodeId> {
        let h = layers::group_norm(g, x, &format!("{p}.norm1"), self.groups(), EPS, true)?;
        let h = layers::conv2d(g, h, &format!("{p}.conv1"), cin, cout, 3, 1, 1)?;
        let h = layers::group_norm(g, h, &format!("{p}.norm2"), self.groups(), EPS, true)?;
        let h = layers::conv2d(g, h, &format!("{p}.conv2"), cout, cout, 3, 1, 1)?;
        let skip = if cin != cout { layers::conv2d(g, x, &format!("{p}.conv_shortcut"), cin, cout, 1, 1, 0)? } else { x };
        g.add(skip, h)
    }

    fn attention(&self, g: &mut Graph, p: &str, x: NodeId) -> Result<NodeId> {
        let s = g.shape(x).to_vec();
        let (n, hw, c) = (s[0], s[1] * s[2], s[3]);
        let h = layers::group_norm(g, x, &format!("{p}.group_norm"), self.groups(), EPS, false)?;
        let h = g.reshape(h, &[n, hw, c])?; // (N, HW, C): NHWC makes this free
        let q = nn::linear(g, &format!("{p}.to_q"), h, c, true)?;
        let k = nn::linear(g, &format!("{p}.to_k"), h, c, true)?;
        let v = nn::linear(g, &format!("{p}.to_v"), h, c, true)?;
        let a = layers::attention(g, q, k, v, 1, false)?; // one head of width C
        let a = nn::linear(g, &format!("{p}.to_out.0"), a, c, true)?;
        let a = g.reshape(a, &s)?;
        g.add(a, x)
    }

    fn mid_block(&self, g: &mut Graph, p: &str, x: NodeId, c: usize) -> Result<NodeId> {
        let mut x = self.resnet(g, &format!("{p}.resnets.0"), x, c, c)?;
        if self.config.mid_block_add_attention {
            x = self.attention(g, &format!("{p}.attentions.0"), x)?;
        }
        self.resnet(g, &format!("{p}.resnets.1"), x, c, c)
    }

    /// Encoder + `quant_conv` on `x [N, H, W, Cin]`: the moments `[N, H/f, W/f, 2*latent]`, and named block
    /// outputs.
    pub fn encoder(&self, g: &mut Graph, x: NodeId) -> Result<(NodeId, Vec<(String, NodeId)>)> {
        let c = &self.config;
        let ch = &c.block_out_channels;
        let mut blocks = Vec::new();
        let mut x = layers::conv2d(g, x, "encoder.conv_in", c.in_channels, ch[0], 3, 1, 1)?;
        blocks.push(("enc_conv_in".to_string(), x));
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            for j in 0..c.layers_per_block {
                x = self.resnet(g, &format!("encoder.down_blocks.{i}.resnets.{j}"), x, cin, cout)?;
                cin = cout;
            }
            if i + 1 < ch.len() {
                x = g.pad(x, 1, 0, 1)?; // F.pad(x, (0, 1, 0, 1)): one zero row at the bottom,
                x = g.pad(x, 2, 0, 1)?; // one zero column at the right
                x = layers::conv2d(g, x, &format!("encoder.down_blocks.{i}.downsamplers.0.conv"), cout, cout, 3, 2, 0)?;
            }
            blocks.push((format!("enc_down_{i}"), x));
        }
        let top = *ch.last().unwrap_or(&cin);
        x = self.mid_block(g, "encoder.mid_block", x, top)?;
        blocks.push(("enc_mid".to_string(), x));
        x = layers::group_norm(g, x, "encoder.conv_norm_out", self.groups(), EPS, true)?;
        x = layers::conv2d(g, x, "encoder.conv_out", top, 2 * c.latent_channels, 3, 1, 1)?;
        blocks.push(("enc_out".to_string(), x));
        if c.use_quant_conv {
            x = layers::conv2d(g, x, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1, 1, 0)?;
        }
        blocks.push(("moments".to_string(), x));
        Ok((x, blocks))
    }

    /// `post_quant_conv` + decoder on a latent `z [N, h, w, latent]` (not scaled by `scaling_factor`).
    pub fn decoder(&self, g: &mut Graph, z: NodeId) -> Result<(NodeId, Vec<(String, NodeId)>)> {
        let c = &self.config;
        let ch: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let l = c.latent_channels;
        let mut blocks = Vec::new();
        let mut x = z;
        if c.use_post_quant_conv {
            x = layers::conv2d(g, x, "post_quant_conv", l, l, 1, 1, 0)?;
            blocks.push(("post_quant".to_string(), x));
        }
        x = layers::conv2d(g, x, "decoder.conv_in", l, ch[0], 3, 1, 1)?;
        blocks.push(("dec_conv_in".to_string(), x));
        x = self.mid_block(g, "decoder.mid_block", x, ch[0])?;
        blocks.push(("dec_mid".to_string(), x));
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            for j in 0..=c.layers_per_block {
                x = self.resnet(g, &format!("decoder.up_blocks.{i}.resnets.{j}"), x, cin, cout)?;
                cin = cout;
            }
            if i + 1 < ch.len() {
                x = layers::upsample_nearest2x(g, x)?;
                x = layers::conv2d(g, x, &format!("decoder.up_blocks.{i}.upsamplers.0.conv"), cout, cout, 3, 1, 1)?;
            }
            blocks.push((format!("dec_up_{i}"), x));
        }
        x = layers::group_norm(g, x, "decoder.conv_norm_out", self.groups(), EPS, true)?;
        x = layers::conv2d(g, x, "decoder.conv_out", cin, c.out_channels, 3, 1, 1)?;
        Ok((x, blocks))
    }

    /// The encoder graph for `n` images of `h x w` (multiples of the downscale factor).
    pub fn encode_graph(&self, n: usize, h: usize, w: usize, keep_blocks: bool) -> Result<EncoderGraph> {
        let c = &self.config;
        let f = c.downscale();
        if h % f != 0 || w % f != 0 {
            return Err(Error::graph("AutoencoderKL encoder", format!("image {h}x{w} is not a multiple of {f}")));
        }
        let (lh, lw, l) = (h / f, w / f, c.latent_channels);
        let mut g = Graph::new();
        let x = g.input(Self::IMAGE, &[n, h, w, c.in_channels], self.dtype)?;
        let (moments, blocks) = self.encoder(&mut g, x)?;
        let mean = g.slice(moments, 3, 0, l)?;
        let logvar = g.slice(moments, 3, l, 2 * l)?;
        let lo = g.fill(-30.0, &[1], self.dtype);
        let hi = g.fill(20.0, &[1], self.dtype);
        let logvar = g.binary(BinaryOp::Max, logvar, lo)?;
        let logvar = g.binary(BinaryOp::Min, logvar, hi)?;
        let std = g.scale(logvar, 0.5)?;
        let std = g.unary(UnaryOp::Exp, std)?;
        let noise = g.input(Self::NOISE, &[n, lh, lw, l], self.dtype)?;
        let eps = g.mul(std, noise)?;
        let sample = g.add(mean, eps)?;
        for id in [mean, logvar, sample] {
            g.mark_output(id);
        }
        if keep_blocks {
            for (_, id) in &blocks {
                g.mark_output(*id);
            }
        }
        Ok(EncoderGraph { graph: g, mean, logvar, sample, blocks })
    }

    /// The decoder graph for `n` latents of `h x w`. With `scaled`, the input is an SD latent (multiplied by
    /// `scaling_factor`, shifted by `shift_factor` when set) and is unscaled first, as diffusers pipelines do.
    pub fn decode_graph(&self, n: usize, h: usize, w: usize, scaled: bool, keep_blocks: bool) -> Result<DecoderGraph> {
        let c = &self.config;
        let mut g = Graph::new();
        let mut z = g.input(Self::LATENT, &[n, h, w, c.latent_channels], self.dtype)?;
        if scaled {
            z = g.affine(z, 1.0 / c.scaling_factor, c.shift_factor.unwrap_or(0.0))?;
        }
        let (image, blocks) = self.decoder(&mut g, z)?;
        g.mark_output(image);
        if keep_blocks {
            for (_, id) in &blocks {
                g.mark_output(*id);
            }
        }
        Ok(DecoderGraph { graph: g, image, blocks })
    }

    /// Standard normal noise for the encoder's sample, from our generator (SplitMix64 + Box-Muller; torch's
    /// `randn` cannot be reproduced).
    pub fn noise(&self, seed: u64, shape: &[usize]) -> Result<HostTensor> {
        let n = shape.iter().product();
        HostTensor::from_f32(shape, self.dtype, &Rng::new(seed).normal_vec(n, 1.0))
    }
}
