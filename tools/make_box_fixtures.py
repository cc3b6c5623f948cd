"""Fixtures for tests/box_ops.rs: torchvision's box ops on small inputs.

Run with /tmp/ddimvenv/bin/python tools/make_box_fixtures.py (torch + torchvision on the CPU); never in CI.
Writes tests/fixtures/boxes/boxes.json. Floats are float32 values written exactly (repr of the double that
holds them); NaN and infinities are written as null / "inf" / "-inf" strings.

Scores are distinct within each case (a random permutation of distinct float32 values), so the kept order of
NMS has no ties to break. batched_nms is checked against torchvision's per-class `_batched_nms_vanilla`
(identical lists are required: the coordinate-offset trick torchvision uses for small inputs could flip a
borderline IoU; the script fails if it does on these inputs).
"""
import json
import math
import os

import numpy as np
import torch
import torchvision
from torchvision.ops import boxes as tvb
from torchvision.models.detection._utils import BoxCoder

rng = np.random.default_rng(20261125)
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "boxes", "boxes.json")


def f(x):
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def flat(t):
    return [f(v) for v in t.reshape(-1).tolist()]


def random_boxes(n, size=100.0):
    w = rng.uniform(0.01, 0.5, n) * size
    h = rng.uniform(0.01, 0.5, n) * size
    x1 = rng.uniform(0, 1, n) * (size - w)
    y1 = rng.uniform(0, 1, n) * (size - h)
    return np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def clustered_boxes(n, clusters, size=200.0):
    """Boxes jittered around a few centres (heavy overlap), plus degenerate ones."""
    cx = rng.uniform(20, size - 20, clusters)
    cy = rng.uniform(20, size - 20, clusters)
    cw = rng.uniform(10, 60, clusters)
    ch = rng.uniform(10, 60, clusters)
    c = rng.integers(0, clusters, n)
    jit = rng.normal(0, 0.12, (n, 4))
    x = cx[c] + jit[:, 0] * cw[c]
    y = cy[c] + jit[:, 1] * ch[c]
    w = cw[c] * np.exp(jit[:, 2])
    h = ch[c] * np.exp(jit[:, 3])
    b = np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1)
    # Degenerate boxes: zero width, zero height, points, exact duplicates.
    k = max(1, n // 20)
    idx = rng.choice(n, 4 * k, replace=False)
    b[idx[:k], 2] = b[idx[:k], 0]
    b[idx[k:2 * k], 3] = b[idx[k:2 * k], 1]
    b[idx[2 * k:3 * k], 2:] = b[idx[2 * k:3 * k], :2]
    src = rng.choice(n, k)
    b[idx[3 * k:]] = b[src]
    return b.astype(np.float32)


def distinct_scores(n):
    s = ((rng.permutation(n) + rng.uniform(0.1, 0.9, n)) / n).astype(np.float32)
    assert len(np.unique(s)) == n
    return s


def iou_case(a, b):
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {
        "a": flat(ta), "b": flat(tb), "n": len(a), "m": len(b),
        "iou": flat(tvb.box_iou(ta, tb)), "giou": flat(tvb.generalized_box_iou(ta, tb)),
    }


def nms_case(boxes, classes, thr):
    n = len(boxes)
    scores = distinct_scores(n)
    tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    keep = torchvision.ops.nms(tb, ts, thr)
    batched = torchvision.ops.batched_nms(tb, ts, tc, thr)
    vanilla = tvb._batched_nms_vanilla(tb, ts, tc, thr)
    assert batched.tolist() == vanilla.tolist(), "coordinate trick and per-class NMS differ"
    return {
        "boxes": flat(tb), "scores": flat(ts), "classes": classes.tolist(), "iou_threshold": thr,
        "nms": keep.tolist(), "batched_nms": batched.tolist(),
    }


def coder_case(weights, n, k, spread):
    ref = torch.from_numpy(clustered_boxes(n, 3))
    # Keep reference boxes non-degenerate for the coder (it divides by widths).
    ref[:, 2:] = torch.maximum(ref[:, 2:], ref[:, :2] + 1.0)
    tgt = torch.from_numpy(random_boxes(n, 200.0))
    coder = BoxCoder(weights)
    enc = coder.encode_single(tgt, ref)
    deltas = torch.from_numpy(rng.uniform(-spread, spread, (n, 4 * k)).astype(np.float32))
    dec = coder.decode_single(deltas, ref)
    return {
        "weights": list(weights), "clamp": coder.bbox_xform_clip, "n": n, "k": k,
        "reference": flat(ref), "target": flat(tgt), "encoded": flat(enc),
        "deltas": flat(deltas), "decoded": flat(dec),
    }


def main():
    torch.manual_seed(0)
    iou = [
        iou_case(random_boxes(5), random_boxes(7)),
        iou_case(clustered_boxes(20, 3), clustered_boxes(13, 3)),
        iou_case(clustered_boxes(40, 2), random_boxes(1, 200.0)),
    ]
    nms = []
    for n, clusters, ncls, thr in [(30, 3, 1, 0.5), (120, 6, 3, 0.5), (300, 10, 5, 0.7), (400, 8, 4, 0.3),
                                   (1000, 30, 10, 0.5)]:
        boxes = clustered_boxes(n, clusters)
        classes = rng.integers(0, ncls, n).astype(np.int64)
        nms.append(nms_case(boxes, classes, thr))
    coder = [coder_case((10.0, 10.0, 5.0, 5.0), 40, 3, 2.0), coder_case((1.0, 1.0, 1.0, 1.0), 25, 2, 6.0)]
    data = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "iou": iou, "nms": nms, "coder": coder,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
    print(f"wrote {OUT}: {os.path.getsize(OUT)} bytes; kept per nms case:",
          [(len(c["nms"]), len(c["batched_nms"])) for c in nms])


if __name__ == "__main__":
    main()
