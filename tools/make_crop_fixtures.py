#!/usr/bin/env python3
"""Reference fixtures for the InstaGen stage-1 crops (src/data/crops.rs), written independently of the Rust.

Pure Python (no numpy, no torch). Reads the real coco128 annotations, applies the crop rules of
docs/DESIGN.md ("Detection crops") to a few dozen anchors with fixed random draws, and writes
tests/fixtures/crops/crops.json: the draws, the crop square, the flip, the picked boxes and the prompt of each
sample, and the number of anchors per category mode. With Pillow installed it also writes
tests/fixtures/crops/resize.json: a small synthetic image resampled by PIL's BILINEAR resize with fractional
boxes (mode "F", 32-bit float), against which the Rust resampler is checked.

Usage: python3 tools/make_crop_fixtures.py [--data ../shared/data] [--out tests/fixtures/crops]
"""

import argparse
import json
import math
import os
import random
import struct

# The 48 open-vocabulary COCO base classes (OVR-CNN split), by name.
BASE = [
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep", "bear",
    "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard", "bottle", "fork",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
    "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock",
    "vase", "toothbrush",
]


class Draws:
    """Replays a list of uniforms, counting them."""

    def __init__(self, values):
        self.values = values
        self.used = 0

    def u(self):
        v = self.values[self.used]
        self.used += 1
        return v


def index_below(u, n):
    return min(int(math.floor(u * n)), n - 1)


def load(path):
    with open(path) as f:
        d = json.load(f)
    images = {im["id"]: im for im in d["images"]}
    names = {c["id"]: c["name"] for c in d["categories"]}
    return d, images, names


def image_boxes(d, images, names, selected):
    """image id -> list of dicts (id, name, xywh clipped to the image, crowd), annotation order."""
    out = {}
    for a in d["annotations"]:
        if a["category_id"] not in selected:
            continue
        im = images[a["image_id"]]
        W, H = im["width"], im["height"]
        x, y, w, h = a["bbox"]
        x0, y0 = min(max(x, 0.0), W), min(max(y, 0.0), H)
        x1, y1 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
        if x1 <= x0 or y1 <= y0:
            continue
        out.setdefault(a["image_id"], []).append(
            {"id": a["id"], "name": names[a["category_id"]], "box": (x0, y0, x1, y1), "crowd": bool(a.get("iscrowd", 0))}
        )
    return out


def crop(W, H, boxes, anchor_id, draws):
    anchor = next(b for b in boxes if b["id"] == anchor_id)

    def centre(b):
        x0, y0, x1, y1 = b["box"]
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    k = 1 + index_below(draws.u(), 3)
    ax, ay = centre(anchor)
    others = []
    for pos, b in enumerate(boxes):
        if b is anchor or b["crowd"]:
            continue
        cx, cy = centre(b)
        others.append(((cx - ax) ** 2 + (cy - ay) ** 2, pos, b))
    others.sort(key=lambda t: (t[0], t[1]))
    picked = [anchor] + [t[2] for t in others[:k]]

    ux0 = min(b["box"][0] for b in picked)
    uy0 = min(b["box"][1] for b in picked)
    ux1 = max(b["box"][2] for b in picked)
    uy1 = max(b["box"][3] for b in picked)
    side = max(ux1 - ux0, uy1 - uy0) * (1 + draws.u())
    side = min(side, W, H)
    x0 = min(max((ux0 + ux1) / 2 - side / 2, 0.0), W - side)
    y0 = min(max((uy0 + uy1) / 2 - side / 2, 0.0), H - side)
    square = (x0, y0, x0 + side, y0 + side)
    flip = draws.u() < 0.5

    in_crop = list(picked)
    for b in boxes:
        if any(b is p for p in picked):
            continue
        bx0, by0, bx1, by1 = b["box"]
        iw = max(min(bx1, square[2]) - max(bx0, square[0]), 0.0)
        ih = max(min(by1, square[3]) - max(by0, square[1]), 0.0)
        if iw * ih >= 0.5 * (bx1 - bx0) * (by1 - by0):
            in_crop.append(b)
    names = []
    for b in in_crop:
        if b["name"] not in names:
            names.append(b["name"])
    for i in range(len(names) - 1, 0, -1):
        j = index_below(draws.u(), i + 1)
        names[i], names[j] = names[j], names[i]
    return {
        "crop": list(square),
        "flip": flip,
        "picked": [b["id"] for b in picked],
        "prompt": "a photograph of " + " and ".join(names),
    }


def crop_fixture(data, rng):
    src = "coco128/annotations/instances_train2017.json"
    d, images, names = load(os.path.join(data, src))
    by_name = {v: k for k, v in names.items()}
    modes = {
        "base": {by_name[n] for n in BASE},
        "all": set(names),
        "person,dog,car,cup": {by_name[n] for n in ["person", "dog", "car", "cup"]},
    }
    counts = {}
    samples = []
    for mode, selected in modes.items():
        boxes = image_boxes(d, images, names, selected)
        anchors = [(iid, b["id"]) for iid in boxes for b in boxes[iid] if not b["crowd"]]
        # Anchors in annotation order (image_boxes keeps it per image; sort by annotation position overall).
        pos = {a["id"]: i for i, a in enumerate(d["annotations"])}
        anchors.sort(key=lambda t: pos[t[1]])
        counts[mode] = len(anchors)
        n = {"base": 24, "all": 12, "person,dog,car,cup": 8}[mode]
        for s in range(n):
            iid, aid = anchors[rng.randrange(len(anchors))]
            draws = [rng.random() for _ in range(3 + 8)]
            # Edge cases: the largest square (clamped to the image), k = 3 and the smallest square.
            if s % 6 == 1:
                draws[0], draws[1] = 0.999, 0.9999
            if s % 6 == 2:
                draws[0], draws[1] = 0.0, 0.0
            im = images[iid]
            dr = Draws(draws)
            out = crop(im["width"], im["height"], boxes[iid], aid, dr)
            out.update({"categories": mode, "image_id": iid, "annotation_id": aid, "draws": draws[: dr.used]})
            samples.append(out)
    return {"source": src, "anchors": counts, "samples": samples}


def resize_fixture(rng):
    try:
        from PIL import Image
    except ImportError:
        print("Pillow is not installed: resize.json not written")
        return None
    W, H = 23, 17
    pixels = [[rng.randrange(256) for _ in range(W * H)] for _ in range(3)]
    # Box coordinates are exact in float32: PIL parses the box as C floats, so other values would be rounded.
    cases = [
        ((7, 7), (2.3125, 1.75, 19.59375, 16.0)),  # shrink a fractional box
        ((9, 9), (0.0, 0.0, 17.0, 17.0)),  # shrink a square at the corner
        ((13, 13), (4.5, 3.25, 12.0, 10.75)),  # enlarge a fractional box
        ((5, 4), (0.0, 0.0, 23.0, 17.0)),  # whole image, anisotropic
        ((16, 16), (11.90625, 0.40625, 22.9921875, 11.4921875)),  # touching the right border
    ]
    out = []
    for size, box in cases:
        chans = []
        for c in range(3):
            im = Image.new("F", (W, H))
            im.putdata([float(v) for v in pixels[c]])
            r = im.resize(size, Image.BILINEAR, box=box)
            chans.append(struct.unpack(f"={size[0] * size[1]}f", r.tobytes()))
        # Interleave to [h, w, 3].
        n = size[0] * size[1]
        out.append({"size": list(size), "box": list(box), "out": [chans[c][i] for i in range(n) for c in range(3)]})
    src = [pixels[c][i] for i in range(W * H) for c in range(3)]
    import PIL

    return {"pillow": PIL.__version__, "width": W, "height": H, "pixels": src, "cases": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="tests/fixtures/crops")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    fx = crop_fixture(args.data, random.Random(10))
    with open(os.path.join(args.out, "crops.json"), "w") as f:
        json.dump(fx, f, indent=0)
    print(f"crops.json: {len(fx['samples'])} samples, anchors {fx['anchors']}")
    rz = resize_fixture(random.Random(11))
    if rz is not None:
        with open(os.path.join(args.out, "resize.json"), "w") as f:
            json.dump(rz, f)
        print(f"resize.json: {len(rz['cases'])} cases (Pillow {rz['pillow']})")


if __name__ == "__main__":
    main()
