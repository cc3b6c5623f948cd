//! ResNet body with frozen batch norm + FPN (P2-P6), torchvision's `resnet_fpn_backbone` on NHWC graphs, with
//! torchvision's parameter names (`backbone.body.layer1.0.conv1.weight`, `backbone.body.bn1.running_var`,
//! `backbone.fpn.inner_blocks.0.0.weight`, ...), so a `fasterrcnn_resnet50_fpn` state dict loads unchanged.
//!
//! - Body: `conv1` 7x7 stride 2 (no bias), frozen `bn1`, ReLU, max pool 3x3 stride 2 padding 1, then `layer1..4`
//!   (planes 64, 128, 256, 512; strides 1, 2, 2, 2). BasicBlock (ResNet-18/34): two 3x3 convs; Bottleneck
//!   (ResNet-50/101): 1x1, 3x3, 1x1 (x4 channels) with the stride on the 3x3 (torchvision, "ResNet v1.5") or,
//!   with `caffe_stride`, on the first 1x1 (the original Caffe / Detectron layout). The first block of a layer
//!   has a `downsample` (1x1 conv with the block's stride + frozen BN) when the stride or width changes.
//!   Every norm is `FrozenBatchNorm` (eps `frozen_bn_eps`, torchvision's 1e-5): four frozen `[C]` tensors.
//! - FPN (`FeaturePyramidNetwork` + `LastLevelMaxPool`): `inner_blocks.i.0` 1x1 convs (bias) on C2..C5,
//!   top-down sum with nearest 2x upsampling, `layer_blocks.i.0` 3x3 convs (bias); P6 = max pool kernel 1
//!   stride 2 of P5. Outputs P2..P6, `out_channels` each, strides 4..64 (torchvision's keys "0".."3", "pool").
//! - `trainable_layers` as torchvision's `trainable_backbone_layers`: the last k of `layer4, layer3, layer2,
//!   layer1, conv1` train ([`trainable_params`]); the FPN always trains; frozen norms never do.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op, UnaryOp};
use crate::params::ParamStore;
use crate::tensor::HostTensor;
use crate::util::Rng;

/// The prefixes of the two parts, as in torchvision's `FasterRCNN.backbone` (`BackboneWithFPN`).
pub const BODY: &str = "backbone.body";
pub const FPN: &str = "backbone.fpn";

/// torchvision's names of the FPN outputs (`OrderedDict` keys), finest first.
pub const LEVEL_NAMES: [&str; 5] = ["0", "1", "2", "3", "pool"];
/// Strides of P2..P6 relative to the input image.
pub const STRIDES: [usize; 5] = [4, 8, 16, 32, 64];

/// The backbone's settings (serde; every field optional, torchvision's `fasterrcnn_resnet50_fpn` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneConfig {
    /// ResNet depth: 18, 34 (BasicBlock), 50 or 101 (Bottleneck).
    pub depth: usize,
    /// torchvision's `trainable_backbone_layers`, 0..=5.
    pub trainable_layers: usize,
    /// Caffe-style Bottleneck: the stride on the first 1x1 conv instead of the 3x3 (ResNet-50/101 only).
    pub caffe_stride: bool,
    /// FPN width.
    pub out_channels: usize,
    /// eps of every frozen batch norm.
    pub frozen_bn_eps: f32,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        BackboneConfig { depth: 50, trainable_layers: 3, caffe_stride: false, out_channels: 256, frozen_bn_eps: 1e-5 }
    }
}

impl BackboneConfig {
    /// Blocks per layer.
    pub fn blocks(&self) -> [usize; 4] {
        match self.depth {
            18 => [2, 2, 2, 2],
            34 | 50 => [3, 4, 6, 3],
            _ => [3, 4, 23, 3],
        }
    }

    /// Bottleneck blocks (ResNet-50/101) rather than BasicBlocks.
    pub fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    /// Output channels of layer1..4 (C2..C5).
    pub fn stage_channels(&self) -> [usize; 4] {
        let e = if self.bottleneck() { 4 } else { 1 };
        [64 * e, 128 * e, 256 * e, 512 * e]
    }

    /// Errors naming the field when a setting is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::Other(format!("backbone config: {field}: {msg}")));
        if ![18, 34, 50, 101].contains(&self.depth) {
            return bad("depth", format!("{} is not one of 18, 34, 50, 101", self.depth));
        }
        if self.trainable_layers > 5 {
            return bad("trainable_layers", format!("{} is not in 0..=5", self.trainable_layers));
        }
        if self.caffe_stride && !self.bottleneck() {
            return bad("caffe_stride", format!("applies to Bottleneck ResNets (50, 101), not ResNet-{}", self.depth));
        }
        if self.out_channels == 0 {
            return bad("out_channels", "must be at least 1".into());
        }
        if !(self.frozen_bn_eps.is_finite() && self.frozen_bn_eps >= 0.0) {
            return bad("frozen_bn_eps", format!("{} is not a finite number >= 0", self.frozen_bn_eps));
        }
        Ok(())
    }
}

/// The FPN outputs: P2..P6 as `[B, H/s, W/s, out_channels]` nodes (strides [`STRIDES`], names
/// [`LEVEL_NAMES`]).
#[derive(Clone, Debug)]
pub struct FpnFeatures {
    pub levels: Vec<NodeId>,
    pub strides: [usize; 5],
}

/// A bias-free convolution `{name}.weight [cout, cin, k, k]` (torch `Conv2d(.., bias=False)`).
fn conv(g: &mut Graph, x: NodeId, name: &str, cout: usize, k: usize, stride: usize, padding: usize) -> Result<NodeId> {
    let cin = g.shape(x)[3];
    let w = g.param(&format!("{name}.weight"), &[cout, cin, k, k], g.dtype(x))?;
    g.push(Op::Conv2d { stride, padding, bias: false }, &[x, w])
}

/// A convolution with bias (`{name}.weight`, `{name}.bias`).
fn conv_bias(g: &mut Graph, x: NodeId, name: &str, cout: usize, k: usize, padding: usize) -> Result<NodeId> {
    let cin = g.shape(x)[3];
    let dt = g.dtype(x);
    let w = g.param(&format!("{name}.weight"), &[cout, cin, k, k], dt)?;
    let b = g.param(&format!("{name}.bias"), &[cout], dt)?;
    g.push(Op::Conv2d { stride: 1, padding, bias: true }, &[x, w, b])
}

/// `FrozenBatchNorm2d` `{name}.{weight,bias,running_mean,running_var}`, followed by ReLU when `relu` (one
/// fused op).
pub fn frozen_bn(g: &mut Graph, x: NodeId, name: &str, eps: f32, relu: bool) -> Result<NodeId> {
    let c = *g.shape(x).last().unwrap_or(&0);
    let dt = g.dtype(x);
    let mut ins = vec![x];
    for t in ["weight", "bias", "running_mean", "running_var"] {
        ins.push(g.param(&format!("{name}.{t}"), &[c], dt)?);
    }
    g.push(Op::FrozenBatchNorm { eps, relu }, &ins)
}

/// One residual block `{name}` (`layerN.i`); `stride` is the block's.
fn block(g: &mut Graph, cfg: &BackboneConfig, x: NodeId, name: &str, planes: usize, stride: usize) -> Result<NodeId> {
    let eps = cfg.frozen_bn_eps;
    let cin = g.shape(x)[3];
    let out_c = if cfg.bottleneck() { planes * 4 } else { planes };
    let y = if cfg.bottleneck() {
        let (s1, s3) = if cfg.caffe_stride { (stride, 1) } else { (1, stride) };
        let y = conv(g, x, &format!("{name}.conv1"), planes, 1, s1, 0)?;
        let y = frozen_bn(g, y, &format!("{name}.bn1"), eps, true)?;
        let y = conv(g, y, &format!("{name}.conv2"), planes, 3, s3, 1)?;
        let y = frozen_bn(g, y, &format!("{name}.bn2"), eps, true)?;
        let y = conv(g, y, &format!("{name}.conv3"), out_c, 1, 1, 0)?;
        frozen_bn(g, y, &format!("{name}.bn3"), eps, false)?
    } else {
        let y = conv(g, x, &format!("{name}.conv1"), planes, 3, stride, 1)?;
        let y = frozen_bn(g, y, &format!("{name}.bn1"), eps, true)?;
        let y = conv(g, y, &format!("{name}.conv2"), planes, 3, 1, 1)?;
        frozen_bn(g, y, &format!("{name}.bn2"), eps, false)?
    };
    let identity = if stride != 1 || cin != out_c {
        let d = conv(g, x, &format!("{name}.downsample.0"), out_c, 1, stride, 0)?;
        frozen_bn(g, d, &format!("{name}.downsample.1"), eps, false)?
    } else {
        x
    };
    let y = g.add(y, identity)?;
    g.unary(UnaryOp::Relu, y)
}

/// The ResNet body on `images [B, H, W, 3]`: C2..C5 (layer1..4 outputs), strides 4, 8, 16, 32.
pub fn build_body(g: &mut Graph, cfg: &BackboneConfig, images: NodeId) -> Result<[NodeId; 4]> {
    cfg.validate()?;
    let s = g.shape(images).to_vec();
    if s.len() != 4 || s[3] != 3 || s[1] == 0 || s[2] == 0 {
        return Err(Error::graph("resnet backbone", format!("expects images [B, H, W, 3], got {s:?}")));
    }
    let eps = cfg.frozen_bn_eps;
    let x = conv(g, images, &format!("{BODY}.conv1"), 64, 7, 2, 3)?;
    let x = frozen_bn(g, x, &format!("{BODY}.bn1"), eps, true)?;
    let mut x = g.push(Op::MaxPool2d { kernel: 3, stride: 2, padding: 1 }, &[x])?;
    let mut outs = [x; 4];
    for (li, (&n, planes)) in cfg.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
        for bi in 0..n {
            let stride = if li > 0 && bi == 0 { 2 } else { 1 };
            x = block(g, cfg, x, &format!("{BODY}.layer{}.{bi}", li + 1), planes, stride)?;
        }
        outs[li] = x;
    }
    Ok(outs)
}

/// The FPN on C2..C5: P2..P6 (`LastLevelMaxPool`: P6 is P5 max-pooled with kernel 1, stride 2).
pub fn build_fpn(g: &mut Graph, cfg: &BackboneConfig, c: &[NodeId; 4]) -> Result<FpnFeatures> {
    let oc = cfg.out_channels;
    // Each level must be exactly twice the next for the nearest top-down upsampling (torchvision's
    // interpolate(size=...) is then the 2x repeat): true when the image sides are multiples of 32.
    for i in 0..3 {
        let (a, b) = (g.shape(c[i]).to_vec(), g.shape(c[i + 1]).to_vec());
        if a[1] != 2 * b[1] || a[2] != 2 * b[2] {
            return Err(Error::graph(
                "fpn",
                format!("level C{} is {}x{} and C{} {}x{}: the image sides must be multiples of 32 (pad as \
                    GeneralizedRCNNTransform does)", i + 2, a[1], a[2], i + 3, b[1], b[2]),
            ));
        }
    }
    let mut last = conv_bias(g, c[3], &format!("{FPN}.inner_blocks.3.0"), oc, 1, 0)?;
    let mut levels = vec![conv_bias(g, last, &format!("{FPN}.layer_blocks.3.0"), oc, 3, 1)?];
    for i in (0..3).rev() {
        let lateral = conv_bias(g, c[i], &format!("{FPN}.inner_blocks.{i}.0"), oc, 1, 0)?;
        let up = crate::nn::spatial::upsample_nearest2x(g, last)?;
        last = g.add(lateral, up)?;
        levels.insert(0, conv_bias(g, last, &format!("{FPN}.layer_blocks.{i}.0"), oc, 3, 1)?);
    }
    let p6 = g.push(Op::MaxPool2d { kernel: 1, stride: 2, padding: 0 }, &[levels[3]])?;
    levels.push(p6);
    Ok(FpnFeatures { levels, strides: STRIDES })
}

/// ResNet + FPN on `images [B, H, W, 3]` (H, W multiples of 32): P2..P6.
pub fn build_backbone(g: &mut Graph, cfg: &BackboneConfig, images: NodeId) -> Result<FpnFeatures> {
    let c = build_body(g, cfg, images)?;
    build_fpn(g, cfg, &c)
}

/// Whether the backbone parameter `name` trains under `cfg` (torchvision's `trainable_backbone_layers`: the
/// last `trainable_layers` of `layer4, layer3, layer2, layer1, conv1`; the FPN always; frozen norms never).
/// Names outside the backbone are not its business: `false`.
pub fn is_trainable(cfg: &BackboneConfig, name: &str) -> bool {
    if let Some(rest) = name.strip_prefix(FPN).and_then(|r| r.strip_prefix('.')) {
        return !rest.is_empty();
    }
    let Some(rest) = name.strip_prefix(BODY).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    if is_frozen_bn(rest) {
        return false;
    }
    let layers = ["layer4", "layer3", "layer2", "layer1", "conv1"];
    layers[..cfg.trainable_layers.min(5)].iter().any(|l| rest.starts_with(&format!("{l}.")))
}

/// A frozen-norm tensor of the body (`bn1.weight`, `layer1.0.downsample.1.running_var`, ...).
fn is_frozen_bn(rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('.').collect();
    let stat = parts.last().is_some_and(|l| ["weight", "bias", "running_mean", "running_var"].contains(l));
    let module = parts.len().checked_sub(2).map(|i| parts[i]).unwrap_or("");
    let bn = module.starts_with("bn") || (module == "1" && parts.len() >= 3 && parts[parts.len() - 3] == "downsample");
    stat && bn
}

/// The backbone parameters of `g` that train under `cfg`, in graph order (for `Trainer::new` and
/// `autodiff::param_grads_for`).
pub fn trainable_params(g: &Graph, cfg: &BackboneConfig) -> Vec<String> {
    g.params().into_iter().map(|(_, n)| n).filter(|n| is_trainable(cfg, n)).map(str::to_string).collect()
}

/// Fresh backbone parameters of `g`, as torchvision initialises them: ResNet convs Kaiming normal (fan out,
/// ReLU gain), frozen norms weight 1, bias 0, mean 0, variance 1; FPN convs Kaiming uniform with a = 1, bias 0.
/// Only names under `backbone.`; other parameters are the caller's.
pub fn init_params(g: &Graph, seed: u64) -> Result<ParamStore> {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    for (id, name) in g.params() {
        let n = g.node(id);
        let numel = n.numel();
        let vals = if name.starts_with(&format!("{BODY}.")) {
            if name.ends_with(".running_var") || (n.shape.len() == 1 && name.ends_with(".weight")) {
                vec![1.0; numel]
            } else if n.shape.len() == 1 {
                vec![0.0; numel]
            } else {
                // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (out * kh * kw)).
                let fan_out: usize = n.shape[0] * n.shape[2..].iter().product::<usize>();
                rng.normal_vec(numel, (2.0 / fan_out as f32).sqrt())
            }
        } else if name.starts_with(&format!("{FPN}.")) {
            if name.ends_with(".bias") {
                vec![0.0; numel]
            } else {
                // kaiming_uniform_(a=1): bound = sqrt(6 / ((1 + a^2) fan_in)) = sqrt(3 / fan_in).
                let fan_in: usize = n.shape[1..].iter().product::<usize>().max(1);
                let b = (3.0 / fan_in as f32).sqrt();
                rng.uniform_vec(numel, -b, b)
            }
        } else {
            continue;
        };
        store.insert(name, HostTensor::from_f32(&n.shape, n.dtype, &vals)?);
    }
    Ok(store)
}
