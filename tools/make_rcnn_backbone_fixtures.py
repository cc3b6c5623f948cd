#!/usr/bin/env python3
"""Write the ResNet + FPN backbone parity fixtures (tests/rcnn_backbone.rs) with torchvision 0.29.2.

Not run by CI: the outputs are committed. To regenerate (torch 2.x CPU, torchvision 0.29.2), from the repository
root:

    /work/venv-torch/bin/python tools/make_rcnn_backbone_fixtures.py

The models are torchvision's `BackboneWithFPN(resnetN(norm_layer=FrozenBatchNorm2d), {layer1..4: "0".."3"},
in_channels, OUT_CHANNELS)` with its default `LastLevelMaxPool` (what `resnet_fpn_backbone` builds, with a
narrower FPN so the fixture stays small), in eval mode, float32:
  r18       resnet18
  r50       resnet50
  r50caffe  resnet50 with the stride of every strided Bottleneck moved from conv2 (3x3) to conv1 (1x1)

Weights are too large to commit (ResNet-50 alone is 100 MB), so every tensor is a pure function of its key:
for the state-dict key K (with the "backbone." prefix of a detector, e.g. "backbone.body.layer1.0.conv1.weight")
and element i (row-major),
    z = splitmix64(fnv1a64(K) + i)            (64-bit wrapping arithmetic)
    u = (z >> 40) / 2^23 - 1                  (in [-1, 1), exact in f32)
    conv weight   sqrt(6 / fan_in) * u        (fan_in = C * kh * kw)
    conv bias     0.1 * u
    bn weight     1 + 0.25 * u      bn bias 0.1 * u      running_mean 0.1 * u      running_var 1 + 0.5 * u
computed in float64 and rounded to float32 once (tests/rcnn_backbone.rs computes the same numbers). The
statistics are random, so the frozen norms are not identities. The input is "images" generated the same way
as 2 * u, NHWC [2, 64, 96, 3].

Output, per model M (tests/fixtures/rcnn_backbone/M.safetensors + .json):
  M.safetensors   p2..p6: the FPN outputs NHWC [2, H/s, W/s, OUT_CHANNELS] as int16 with scale.p2..scale.p6 (f32):
                  value = int16 * scale, scale = max|x| / 32767 per level (so within 1.53e-5 of the level's max).
  M.json          versions, depth, caffe flag, image shape, out_channels, the state-dict keys and shapes in
                  torchvision's order (the graph must have exactly these parameters).
  imagenet_keys.json  the keys and shapes of torchvision's ImageNet resnet18 / resnet50 state dicts (the
                  classifier layout the backbone initialises from).
"""
import json
import os

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models import resnet18, resnet50
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "rcnn_backbone")
OUT_CHANNELS = 64
IMAGES = (2, 64, 96, 3)
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def uniform(key, n):
    """u in [-1, 1) for elements 0..n of key (see the module comment)."""
    with np.errstate(over="ignore"):
        x = np.uint64(fnv1a64(key)) + np.arange(n, dtype=np.uint64)
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 2.0**23 - 1.0


def value(key, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(key, n)
    last = key.rsplit(".", 1)[-1]
    if len(shape) == 4:
        v = np.sqrt(6.0 / (shape[1] * shape[2] * shape[3])) * u
    elif last == "running_var":
        v = 1.0 + 0.5 * u
    elif last == "weight":
        v = 1.0 + 0.25 * u
    else:  # bias, running_mean
        v = 0.1 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def build(depth, caffe):
    body = (resnet18 if depth == 18 else resnet50)(weights=None, norm_layer=FrozenBatchNorm2d)
    if caffe:
        for layer in [body.layer2, body.layer3, body.layer4]:
            b = layer[0]
            assert b.conv2.stride == (2, 2)
            b.conv1.stride, b.conv2.stride = (2, 2), (1, 1)
    e = 1 if depth == 18 else 4
    m = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64 * e, 128 * e, 256 * e, 512 * e],
                        OUT_CHANNELS)
    sd = m.state_dict()
    m.load_state_dict({k: value("backbone." + k, tuple(t.shape)) for k, t in sd.items()})
    return m.eval(), [("backbone." + k, list(t.shape)) for k, t in sd.items()]


def main():
    os.makedirs(OUT, exist_ok=True)
    images = (torch.from_numpy((2.0 * uniform("images", int(np.prod(IMAGES)))).astype(np.float32))).reshape(IMAGES)
    x = images.permute(0, 3, 1, 2).contiguous()
    for name, depth, caffe in [("r18", 18, False), ("r50", 50, False), ("r50caffe", 50, True)]:
        m, keys = build(depth, caffe)
        with torch.no_grad():
            feats = m(x)
        tensors = {}
        for i, k in enumerate(["0", "1", "2", "3", "pool"]):
            f = feats[k].permute(0, 2, 3, 1).contiguous().double()
            scale = f.abs().max().item() / 32767.0
            tensors[f"p{i + 2}"] = torch.round(f / scale).to(torch.int16)
            tensors[f"scale.p{i + 2}"] = torch.tensor(scale, dtype=torch.float32)
            print(name, k, tuple(f.shape), "max", f.abs().max().item())
        save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))
        meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "depth": depth,
                "caffe_stride": caffe, "images": list(IMAGES), "out_channels": OUT_CHANNELS, "keys": keys}
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(meta, f, indent=0)
    ik = {}
    for depth, ctor in [(18, resnet18), (50, resnet50)]:
        ik[f"resnet{depth}"] = [(k, list(t.shape)) for k, t in ctor(weights=None).state_dict().items()]
    with open(os.path.join(OUT, "imagenet_keys.json"), "w") as f:
        json.dump(ik, f, indent=0)


if __name__ == "__main__":
    main()
