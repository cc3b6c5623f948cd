#!/usr/bin/env python3
"""torchvision's side of `instagen bench detect`: Faster R-CNN inference and training steps on the CPU.

`instagen bench detect --torch PYTHON` feeds this file (embedded in the binary) to PYTHON on stdin once per case,
right before timing its own side, with `--weights FILE`: the very parameters instagen times (torchvision's key
names), so both sides run the same model on the same images and targets. Standalone (torchvision's
initialisation, the same scaling of the class scores):

    /work/venv-torch/bin/python tools/bench_detect_torch.py --filter r18 --threads 2
    /work/venv-torch/bin/python tools/bench_detect_torch.py --list

The model is torchvision's `FasterRCNN` on `resnet_fpn_backbone(depth, FrozenBatchNorm2d, trainable_layers=3)`
(what `fasterrcnn_resnet50_fpn` builds for pretrained weights; without weights it would switch to BatchNorm2d
and train every layer), 91 classes, the `min_size` / `max_size` of the case. Images and boxes are the same
pure functions of their index as in `src/pipeline/bench_detect.rs`. Cases: `.infer` = `model.eval()` forward
under no_grad (transform, backbone, RPN, RoI heads, postprocess); `.train` = `model.train()` forward with
targets (the four losses), their sum's backward, SGD (lr 1e-4, momentum 0.9, weight decay 1e-4) step.

Each case: one warm-up call, then calls until at least one and at least --min-seconds in all; the median.
Prints JSON lines: {"torch": VERSION, "threads": N} first, then {"case": NAME, "seconds": S, "runs": N,
"detections": [per image]} per case (detections: of the last call, inference cases only).
Case names and settings must match `src/pipeline/bench_detect.rs` (a unit test there checks the names).
"""
import argparse
import json
import os
import sys
import time

# name -> (depth, batch, image height, image width, min_size, train)
CASES = {}


def case(name, depth, batch, h, w, min_size, train):
    CASES[name] = (depth, batch, h, w, min_size, train)


case("r18-fpn-320.infer", 18, 2, 320, 480, 320, False)
case("r18-fpn-320.train", 18, 2, 320, 480, 320, True)
case("r50-fpn-320.infer", 50, 2, 320, 480, 320, False)
case("r50-fpn-320.train", 50, 2, 320, 480, 320, True)
case("r50-fpn-800.infer", 50, 1, 800, 1333, 800, False)
case("r50-fpn-800.train", 50, 2, 800, 1333, 800, True)

# The class-score weights are multiplied by this after torchvision's initialisation, so that the softmax
# spreads and the post-processing sees a normal number of candidates (instagen's CLS_SCALE).
CLS_SCALE = 4.0
# Boxes per image.
GT_BOXES = 8


def timed(call, min_seconds):
    out = call()  # warm-up
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    times.sort()
    m = len(times) // 2
    median = times[m] if len(times) % 2 else 0.5 * (times[m - 1] + times[m])
    return median, len(times), out


def image(index, h, w):
    """Image `index` [3, h, w] in [0, 1): element e (HWC order) = frac(hash(index, e)), as instagen's."""
    import numpy as np
    import torch
    e = np.arange(h * w * 3, dtype=np.uint64)
    v = (e * np.uint64(2654435761) + np.uint64(index) * np.uint64(40503) + np.uint64(12345)) % np.uint64(1 << 32)
    v = (v.astype(np.float64) / float(1 << 32)).astype(np.float32).reshape(h, w, 3)
    return torch.from_numpy(v).permute(2, 0, 1).contiguous()


def targets(index, h, w):
    """Image `index`'s boxes (x1, y1, x2, y2 in its pixels) and labels, as instagen's."""
    import torch
    boxes, labels = [], []
    for j in range(GT_BOXES):
        bw = 32 + (53 * j + 17 * index) % 160
        bh = 32 + (71 * j + 29 * index) % 160
        x1 = (97 * j + 31 * index) % (w - bw)
        y1 = (61 * j + 43 * index) % (h - bh)
        boxes.append([x1, y1, x1 + bw, y1 + bh])
        labels.append(1 + (7 * j + 3 * index) % 90)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def model(depth, min_size, weights):
    import torch
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    m = FasterRCNN(backbone, num_classes=91, min_size=min_size, max_size=1333)
    if weights:
        from safetensors.torch import load_file
        state = load_file(weights)
        missing, unexpected = m.load_state_dict(state, strict=False)
        if missing or unexpected:
            sys.exit(f"bench_detect_torch.py: {weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    else:
        with torch.no_grad():
            m.roi_heads.box_predictor.cls_score.weight.mul_(CLS_SCALE)
    return m


def run_case(name, a):
    import torch
    depth, batch, h, w, min_size, train = CASES[name]
    m = model(depth, min_size, a.weights)
    images = [image(i, h, w) for i in range(batch)]
    if not train:
        m.eval()

        def call():
            with torch.no_grad():
                return [len(d["boxes"]) for d in m(images)]
        return call
    m.train()
    tg = [targets(i, h, w) for i in range(batch)]
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = m(images, tg)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return None
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated exact case names")
    ap.add_argument("--filter", default="", help="comma-separated alternatives; a case runs if its name contains one")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--weights", help="safetensors file with the detector's parameters (torchvision's names)")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(CASES))
        return
    if a.cases is not None:
        names = [n for n in a.cases.split(",") if n]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            sys.exit(f"bench_detect_torch.py: unknown case(s) {', '.join(unknown)} (cases: {', '.join(CASES)})")
    else:
        alts = [s.strip() for s in a.filter.split(",") if s.strip()]
        names = [n for n in CASES if not alts or any(s in n for s in alts)]
        if not names:
            sys.exit(f"bench_detect_torch.py: --filter {a.filter!r} matches no case (cases: {', '.join(CASES)})")
    if a.weights and len(names) != 1:
        sys.exit("bench_detect_torch.py: --weights goes with exactly one case")
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for name in names:
        secs, runs, out = timed(run_case(name, a), a.min_seconds)
        line = {"case": name, "seconds": secs, "runs": runs}
        if out is not None:
            line["detections"] = out
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
