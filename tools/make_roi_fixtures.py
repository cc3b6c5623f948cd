#!/usr/bin/env python3
"""Fixtures for tests/roi_ops.rs: inputs and torchvision outputs for RoI Align (forward and the input gradient),
the MultiScaleRoIAlign level mapper, sigmoid_focal_loss (+ grad), generalized_box_iou_loss (+ grad) and
MultiScaleRoIAlign (multi-level RoI Align over an FPN).

Run by hand (never in CI) with the project's torch/torchvision venv:
    /tmp/ddimvenv/bin/python tools/make_roi_fixtures.py
Writes tests/fixtures/roi/*.json (float32 values as their shortest round-trip decimal strings). torchvision
works in NCHW; features and gradients are stored NHWC here, as instagen uses them.
"""
import json
import os

import numpy as np
import torch
import torchvision
from torchvision.ops import generalized_box_iou_loss, roi_align, sigmoid_focal_loss
from torchvision.ops.poolers import initLevelMapper

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "roi")


def flat(t):
    a = np.asarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float32).reshape(-1)
    return [float(str(v)) for v in a]


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    print(f"{path}: {os.path.getsize(path)} bytes")


def rois_for(gen, n_img, h, w, scale):
    """RoIs in input pixels: ordinary boxes, boxes partly outside the map, tiny (< 1 px of the map) and
    zero-size boxes, a box covering the whole map."""
    H, W = h / scale, w / scale
    r = []
    for _ in range(4):  # ordinary
        x1, y1 = gen.uniform(0, 0.7 * W), gen.uniform(0, 0.7 * H)
        r.append([x1, y1, x1 + gen.uniform(0.1, 0.5) * W, y1 + gen.uniform(0.1, 0.5) * H])
    x1, y1 = gen.uniform(0.6 * W, 0.9 * W), gen.uniform(-0.3 * H, 0.1 * H)  # past the right / top edge
    r.append([x1, y1, x1 + 0.5 * W, y1 + 0.4 * H])
    x1, y1 = gen.uniform(-0.2 * W, 0.0), gen.uniform(0.7 * H, 0.9 * H)  # past the left / bottom edge
    r.append([x1, y1, x1 + 0.3 * W, y1 + 0.35 * H])
    x1, y1 = gen.uniform(0.2 * W, 0.8 * W), gen.uniform(0.2 * H, 0.8 * H)  # tiny: 0.3 map pixels
    r.append([x1, y1, x1 + 0.3 / scale, y1 + 0.2 / scale])
    x1, y1 = gen.uniform(0.2 * W, 0.8 * W), gen.uniform(0.2 * H, 0.8 * H)  # zero size
    r.append([x1, y1, x1, y1])
    r.append([0.0, 0.0, W, H])  # everything
    rois = np.array([[gen.integers(0, n_img)] + b for b in r], dtype=np.float32)
    return rois


def make_roi_align():
    gen = np.random.default_rng(1234)
    n, c, h, w = 2, 3, 10, 13
    feat = torch.tensor(gen.standard_normal((n, c, h, w)), dtype=torch.float32)
    out_h, out_w = 3, 2
    cases = []
    rois_by_scale = {}
    for scale in [1.0, 0.25, 0.125]:
        rois_by_scale[scale] = rois_for(gen, n, h, w, scale)
    for scale in [1.0, 0.25, 0.125]:
        rois = torch.tensor(rois_by_scale[scale])
        for aligned in [False, True]:
            for sr in [0, -1, 2]:
                x = feat.clone().requires_grad_(True)
                y = roi_align(x, rois, (out_h, out_w), spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
                dy = torch.tensor(gen.standard_normal(tuple(y.shape)), dtype=torch.float32)
                (dx,) = torch.autograd.grad(y, x, dy)
                cases.append({
                    "spatial_scale": scale, "sampling_ratio": sr, "aligned": aligned,
                    "rois": flat(rois),
                    "out": flat(y.permute(0, 2, 3, 1)),  # [K, out_h, out_w, C]
                    "dy": flat(dy.permute(0, 2, 3, 1)),
                    "dfeat": flat(dx.permute(0, 2, 3, 1)),  # [N, H, W, C]
                })
    dump("roi_align.json", {
        "torchvision": torchvision.__version__, "feat_shape": [n, h, w, c], "k": 9, "out_h": out_h, "out_w": out_w,
        "feat": flat(feat.permute(0, 2, 3, 1)), "cases": cases,
    })


def make_levels():
    gen = np.random.default_rng(99)
    k = 120
    # sqrt(area) log-uniform over 4 .. 1500 px, aspect ratios 1/3 .. 3.
    s = np.exp(gen.uniform(np.log(4), np.log(1500), k))
    ar = np.exp(gen.uniform(np.log(1 / 3), np.log(3), k))
    bw, bh = s * np.sqrt(ar), s / np.sqrt(ar)
    x1, y1 = gen.uniform(0, 800, k), gen.uniform(0, 800, k)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)
    cases = []
    for (k_min, k_max, s0, l0) in [(2, 5, 224, 4), (2, 6, 224, 4), (0, 3, 56, 0)]:
        mapper = initLevelMapper(k_min, k_max, canonical_scale=s0, canonical_level=l0, eps=1e-6)
        lv = mapper([torch.tensor(boxes)])
        cases.append({"k_min": k_min, "k_max": k_max, "canonical_scale": s0, "canonical_level": l0, "eps": 1e-6,
                      "levels": [int(v) for v in lv]})
    dump("fpn_levels.json", {"torchvision": torchvision.__version__, "boxes": flat(boxes), "cases": cases})


def make_losses():
    gen = np.random.default_rng(7)
    n = 150
    logits = torch.tensor(gen.uniform(-7, 7, n), dtype=torch.float32)
    hard = torch.tensor(gen.integers(0, 2, n), dtype=torch.float32)
    soft = torch.tensor(gen.uniform(0, 1, n), dtype=torch.float32)
    dy = torch.tensor(gen.standard_normal(n), dtype=torch.float32)
    focal = []
    for (alpha, gamma, tname, t) in [(0.25, 2.0, "hard", hard), (-1.0, 0.0, "hard", hard), (0.5, 1.5, "soft", soft),
                                     (0.25, 2.0, "soft", soft)]:
        x = logits.clone().requires_grad_(True)
        loss = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
        (dx,) = torch.autograd.grad(loss, x, dy)
        focal.append({"alpha": alpha, "gamma": gamma, "targets": tname, "loss": flat(loss), "dlogits": flat(dx)})

    m = 80
    def boxes(count, lo, hi):
        x1, y1 = gen.uniform(lo, hi, count), gen.uniform(lo, hi, count)
        return np.stack([x1, y1, x1 + gen.uniform(1, 40, count), y1 + gen.uniform(1, 40, count)], 1)
    target = boxes(m, 0, 60)
    pred = target + gen.normal(0, 6, (m, 4))                  # overlapping
    pred[:10] = boxes(10, 200, 260)                           # disjoint
    pred[10:15] = target[10:15] + np.array([-3, -3, 3, 3])    # enclosing
    pred[15:20] = target[15:20] + np.array([2, 2, -2, -2])    # enclosed (targets are at least 1 px: some invert)
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 0.5)  # valid boxes
    pred, target = pred.astype(np.float32), target.astype(np.float32)
    p = torch.tensor(pred, requires_grad=True)
    loss = generalized_box_iou_loss(p, torch.tensor(target), reduction="none", eps=1e-7)
    gdy = torch.tensor(gen.standard_normal(m), dtype=torch.float32)
    (dp,) = torch.autograd.grad(loss, p, gdy)
    dump("det_losses.json", {
        "torchvision": torchvision.__version__,
        "focal": {"logits": flat(logits), "hard": flat(hard), "soft": flat(soft), "dy": flat(dy), "cases": focal},
        "giou": {"pred": flat(pred), "target": flat(target), "eps": 1e-7, "loss": flat(loss), "dy": flat(gdy),
                 "dpred": flat(dp)},
    })


def make_multiscale():
    """torchvision.ops.MultiScaleRoIAlign over a 4-level FPN of a batch of two 64x64 images (maps 16..2 pixels,
    scales 1/4..1/32), canonical scale 28 at level 4 so that small RoIs spread over all levels."""
    from collections import OrderedDict

    from torchvision.ops import MultiScaleRoIAlign

    gen = np.random.default_rng(5)
    n, c, size = 2, 2, 64
    feats = OrderedDict((f"p{l}", torch.tensor(gen.standard_normal((n, c, size >> l, size >> l)), dtype=torch.float32))
                        for l in range(2, 6))
    boxes = []
    for _ in range(n):
        k = 8
        s = np.exp(gen.uniform(np.log(3), np.log(60), k))
        s[-1] = 62.0  # one RoI of almost the whole image per image (the coarsest level)
        x1, y1 = gen.uniform(0, size - s), gen.uniform(0, size - s)
        hf = gen.uniform(0.6, 1.0, k)
        hf[-1] = 1.0
        boxes.append(torch.tensor(np.stack([x1, y1, x1 + s, y1 + s * hf], 1), dtype=torch.float32))
    pool = MultiScaleRoIAlign(list(feats.keys()), 3, 2, canonical_scale=28, canonical_level=4)
    out = pool(feats, boxes, [(size, size)] * n)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    dump("multiscale.json", {
        "torchvision": torchvision.__version__, "scales": [0.25, 0.125, 0.0625, 0.03125],
        "feats": [{"shape": [n, f.shape[2], f.shape[3], c], "data": flat(f.permute(0, 2, 3, 1))} for f in feats.values()],
        "rois": flat(rois), "k": int(rois.shape[0]), "out": flat(out.permute(0, 2, 3, 1)), "out_hw": [3, 3],
        "canonical_scale": 28, "canonical_level": 4, "sampling_ratio": 2,
    })


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    make_roi_align()
    make_levels()
    make_losses()
    make_multiscale()
