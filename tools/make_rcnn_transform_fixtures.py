"""Fixtures for tests/detect_transform.rs: torchvision's GeneralizedRCNNTransform on small images.

Run with torchvision 0.29.2 (/work/venv-torch/bin/python tools/make_rcnn_transform_fixtures.py). Writes
tests/fixtures/rcnn_transform/transform.json:
  - "sizes": the resized (h, w) torchvision computes for many (h, w, min_size, max_size), incl. COCO-like
    shapes at 800 / 1333 and shapes where h * scale lands on or next to an integer;
  - "cases": a batch of u8 images (given as lists, HWC) with boxes, the transform's padded batch (NCHW in torch,
    stored as the tensor's flat values in NHWC order, float32 printed with 9 significant digits), the
    image sizes, the resized boxes, and postprocess() of the resized boxes back to the original size.
Eval mode is used (min_size[-1]); train mode differs only by the random choice of min_size, which the Rust side
draws itself.
"""
import json
import os

import numpy as np
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def f9(x):
    return [float("%.9g" % v) for v in x]


def resized_size(h, w, min_size, max_size):
    t = GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()
    img = torch.zeros(1, h, w)
    out, _ = t.resize(img, None)
    return list(out.shape[-2:])


def main():
    rng = np.random.default_rng(13)
    sizes = []
    shapes = [(480, 640), (427, 640), (640, 480), (375, 500), (333, 500), (612, 612), (640, 359), (100, 1000),
              (1000, 100), (799, 1201), (801, 1335), (240, 320), (1, 1), (7, 3)]
    for h, w in shapes:
        for mn, mx in [(800, 1333), (320, 533), (320, 1333), (600, 1000)]:
            sizes.append({"h": h, "w": w, "min_size": mn, "max_size": mx, "out": resized_size(h, w, mn, mx)})
    for _ in range(40):
        h, w = int(rng.integers(5, 900)), int(rng.integers(5, 900))
        mn = int(rng.integers(16, 900))
        mx = int(mn + rng.integers(0, 900))
        sizes.append({"h": h, "w": w, "min_size": mn, "max_size": mx, "out": resized_size(h, w, mn, mx)})

    cases = []
    for name, shapes_b, mn, mx in [
        ("up", [(23, 37), (30, 19)], 31, 48),         # upsampling, two different sizes, padding
        ("down", [(61, 47), (50, 83)], 24, 40),       # downsampling (no antialias in torchvision)
        ("maxbound", [(12, 70)], 24, 48),             # max_size binds
        ("same", [(32, 45)], 32, 100),                # scale 1: copy
    ]:
        imgs_u8 = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes_b]
        boxes = []
        for h, w in shapes_b:
            x0 = rng.uniform(0, w - 2, size=3)
            y0 = rng.uniform(0, h - 2, size=3)
            x1 = np.minimum(x0 + rng.uniform(1, w, size=3), w)
            y1 = np.minimum(y0 + rng.uniform(1, h, size=3), h)
            boxes.append(np.stack([x0, y0, x1, y1], 1).astype(np.float32))
        t = GeneralizedRCNNTransform(mn, mx, MEAN, STD).eval()
        images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in imgs_u8]
        targets = [{"boxes": torch.from_numpy(b.copy())} for b in boxes]
        il, tg = t(images, targets)
        batch = il.tensors.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC
        sizes_b = [list(s) for s in il.image_sizes]
        back = t.postprocess([{"boxes": tt["boxes"].clone()} for tt in tg], il.image_sizes, [(h, w) for h, w in shapes_b])
        cases.append({
            "name": name, "min_size": mn, "max_size": mx,
            "images": [{"h": h, "w": w, "rgb": im.reshape(-1).tolist(), "boxes": f9(b.reshape(-1))}
                       for (h, w), im, b in zip(shapes_b, imgs_u8, boxes)],
            "batch_shape": list(batch.shape), "batch": f9(batch.reshape(-1)),
            "image_sizes": sizes_b,
            "resized_boxes": [f9(tt["boxes"].numpy().reshape(-1)) for tt in tg],
            "postprocessed_boxes": [f9(r["boxes"].numpy().reshape(-1)) for r in back],
        })

    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "rcnn_transform", "transform.json")
    with open(out, "w") as f:
        json.dump({"torch": torch.__version__, "mean": MEAN, "std": STD, "sizes": sizes, "cases": cases}, f)
    print(out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
