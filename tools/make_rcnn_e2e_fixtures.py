#!/usr/bin/env python3
"""End-to-end Faster R-CNN parity fixture (tests/detect_e2e.rs), torchvision 0.29.2, eval mode.

    /work/venv-torch/bin/python tools/make_rcnn_e2e_fixtures.py

Model: torchvision's `FasterRCNN(BackboneWithFPN(resnet18(norm_layer=FrozenBatchNorm2d), layers 1-4,
[64, 128, 256, 512], OUT_CHANNELS), num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE,
box_head=TwoMLPHead(OUT_CHANNELS * 7 * 7, REPR), box_predictor=FastRCNNPredictor(REPR, NUM_CLASSES),
                       box_detections_per_img=DETS)` with every
other setting torchvision's default (so the transform, anchors, RPN, RoI heads and postprocess are the
library's). A narrower FPN and MLP than fasterrcnn_resnet50_fpn keep the test fast; the layout and key names
are the same.

Weights are a pure function of their state-dict key, as tools/make_rcnn_backbone_fixtures.py (same splitmix
generator, u in [-1, 1)): 4-d conv weights sqrt(6 / fan_in) u, 2-d linear weights GAIN[key] sqrt(6 / fan_in) u,
running_var 1 + 0.5 u, other 1-d "weight" 1 + 0.25 u, biases and running_mean 0.1 u; f64 rounded to f32 once.
The gains spread the class scores. The two input images (values in [0, 1], [H, W, 3]) are 0.5 + 0.5 u of keys
"image0" / "image1".

Output tests/fixtures/rcnn_e2e/e2e.json: the config, the keys and shapes (torchvision's order), the image
shapes, and per image torchvision's final detections in original-image coordinates (boxes, scores, labels).
"""
import json
import os

import numpy as np
import torch
import torchvision
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.misc import FrozenBatchNorm2d

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "rcnn_e2e")
OUT_CHANNELS = 64
REPR = 128
NUM_CLASSES = 6
MIN_SIZE = 96
MAX_SIZE = 160
DETS = 2000  # above the survivors of NMS, so the fixture does not hinge on near-ties at the cut
IMAGES = [(70, 90), (84, 60)]
GAIN = {f"backbone.fpn.layer_blocks.{i}.0.weight": 0.004 for i in range(4)}
GAIN.update({"roi_heads.box_predictor.cls_score.weight": 3.0, "rpn.head.cls_logits.weight": 1.0, "roi_heads.box_predictor.bbox_pred.weight": 0.3, "rpn.head.bbox_pred.weight": 0.3})
M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def uniform(key, n):
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
        v = GAIN.get(key, 1.0) * np.sqrt(6.0 / (shape[1] * shape[2] * shape[3])) * u
    elif len(shape) == 2:
        v = GAIN.get(key, 1.0) * np.sqrt(6.0 / shape[1]) * u
    elif last == "running_var":
        v = 1.0 + 0.5 * u
    elif last == "weight":
        v = 1.0 + 0.25 * u
    else:
        v = 0.1 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    os.makedirs(OUT, exist_ok=True)
    body = resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512], OUT_CHANNELS)
    model = FasterRCNN(backbone, num_classes=None, min_size=MIN_SIZE, max_size=MAX_SIZE,
                       box_head=TwoMLPHead(OUT_CHANNELS * 7 * 7, REPR), box_predictor=FastRCNNPredictor(REPR, NUM_CLASSES),
                       box_detections_per_img=DETS)
    sd = model.state_dict()
    model.load_state_dict({k: value(k, tuple(t.shape)) for k, t in sd.items()})
    model.eval()
    images = []
    for i, (h, w) in enumerate(IMAGES):
        v = (0.5 + 0.5 * uniform(f"image{i}", h * w * 3)).astype(np.float32).reshape(h, w, 3)
        images.append(torch.from_numpy(v).permute(2, 0, 1).contiguous())
    with torch.no_grad():
        out = model(images)
    dets = []
    for i, o in enumerate(out):
        s = o["scores"].numpy()
        gaps = np.diff(np.sort(s)) if len(s) > 1 else np.array([1.0])
        print(f"image {i}: {len(s)} detections, scores {s.min() if len(s) else None}..{s.max() if len(s) else None}, "
              f"labels {np.bincount(o['labels'].numpy(), minlength=NUM_CLASSES).tolist()}, smallest score gap {gaps.min():.3g}")
        dets.append({"boxes": [float(x) for x in o["boxes"].numpy().reshape(-1)],
                     "scores": [float(x) for x in s], "labels": [int(x) for x in o["labels"].numpy()]})
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "out_channels": OUT_CHANNELS,
            "representation_size": REPR, "detections_per_img": DETS, "num_classes": NUM_CLASSES, "min_size": MIN_SIZE, "max_size": MAX_SIZE,
            "gain": GAIN, "images": [list(s) for s in IMAGES],
            "keys": [(k, list(t.shape)) for k, t in sd.items()], "detections": dets}
    with open(os.path.join(OUT, "e2e.json"), "w") as f:
        json.dump(meta, f)
    print(os.path.getsize(os.path.join(OUT, "e2e.json")), "bytes")


if __name__ == "__main__":
    main()
