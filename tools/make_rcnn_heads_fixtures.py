#!/usr/bin/env python3
"""Write the Faster R-CNN heads parity fixture (RPN + RoI heads of torchvision 0.29.2) for tests/rcnn_heads.rs.

Not run by CI: the outputs are committed. To regenerate (torch 2.x CPU, torchvision 0.29.2), from the repository
root:

    /work/venv-torch/bin/python tools/make_rcnn_heads_fixtures.py

The heads run on random FPN features (no backbone): torchvision's RegionProposalNetwork (AnchorGenerator with
sizes 32..512, one per level, ratios 0.5/1/2; RPNHead; the fasterrcnn_resnet50_fpn settings) and RoIHeads
(MultiScaleRoIAlign on '0'..'3', 7x7, sampling 2; TwoMLPHead; FastRCNNPredictor; the fasterrcnn_resnet50_fpn
settings), narrowed so that the fixture stays small: 16 FPN channels, representation size 64, 6 classes
(background + 5). Two images of 96x128 and 80x112 pixels in a batch padded to 96x128 (the top level is 2x2, so
its anchor stride is 96 // 2 = 48 by 128 // 2 = 64). Features and weights are drawn from a seeded generator and
rounded to f16 (so the f16 storage is exact); weights are scaled so that objectness logits and class logits are
spread over a few units (no two scores equal in f32: torchvision orders equal scores in an unspecified way) and
box deltas over a few tenths.

Output: tests/fixtures/rcnn_heads/heads.safetensors (every 4-D tensor NHWC; conv weights keep torchvision's
[O, C, kh, kw]) and heads.json (settings, shapes, names):
  feat.{0,1,2,3,pool}         f16 [2, H, W, 16]   the FPN features
  param.<torchvision name>    f16                 the head weights (rpn.head.*, roi_heads.box_head.*, box_predictor.*)
  eval.proposals.<i>, eval.proposal_scores.<i>    RPN proposals in eval mode (f32, [n, 4], [n])
  eval.det_boxes.<i>, eval.det_scores.<i>, eval.det_labels.<i>   final detections in eval mode
  eval_hi.det_*.<i>           the same with score_thresh 0.5 (under 1000 candidates: batched_nms's coordinate
                              trick instead of its per-class path)
  gt_boxes.<i> f32 [m, 4], gt_labels.<i> i64 [m]  training targets
  train.proposals.<i>         RPN proposals in training mode (before the ground truth is appended)
  train.rpn_pos.<i>, train.rpn_neg.<i>  i64       anchors torchvision's sampler chose (indices into the anchors)
  train.roi_pos.<i>, train.roi_neg.<i>  i64       RoIs it chose (indices into proposals ++ ground truth)
  train.losses f32 [4]        loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg
  grad.<name> i16, gradscale.<name> f32 []  the gradient of the sum of the four losses w.r.t. the features
                              (grad.feat.<k>, NHWC) and a few parameters: grad * gradscale with gradscale =
                              max|g| / 32767 (exact to 1.53e-5 of max|g|)
  mask.class_mask f32 [2, 6], mask.loss_classifier f32 []  the classification loss with class 3 and 5 masked out
                              of image 1's softmax (masked_fill(-inf) before F.cross_entropy): the per-source rule
  rpnw.losses f32 [2]         loss_objectness, loss_rpn_box_reg of image 0 alone (rpn_weight = [1, 0])
"""
import json
import os

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "rcnn_heads")
SEED = 13
C = 16
REPR = 64
NUM_CLASSES = 6
PADDED = (96, 128)
IMAGE_SIZES = [(96, 128), (80, 112)]
GRIDS = [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]
KEYS = ["0", "1", "2", "3", "pool"]
GRAD_PARAMS = [
    "rpn.head.conv.0.0.weight",
    "rpn.head.cls_logits.weight",
    "rpn.head.bbox_pred.bias",
    "roi_heads.box_head.fc6.bias",
    "roi_heads.box_head.fc7.weight",
    "roi_heads.box_predictor.cls_score.weight",
    "roi_heads.box_predictor.bbox_pred.weight",
]
GT = [
    ([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0], [30.0, 40.0, 44.0, 52.0]], [1, 2, 4]),
    ([[5.0, 5.0, 70.0, 40.0], [40.0, 30.0, 100.0, 78.0]], [2, 1]),
]
MASK_OUT = (1, [3, 5])  # image 1 without classes 3 and 5
HI_THRESH = 0.5  # a second eval post-processing with this score threshold


def f16(t):
    return t.half().float()


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous()


class Recorder:
    """Wraps a BalancedPositiveNegativeSampler: records its masks, or replays given ones."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.replay = None

    def __call__(self, matched_idxs):
        if self.replay is not None:
            return self.replay
        pos, neg = self.inner(matched_idxs)
        self.calls.append(([p.clone() for p in pos], [n.clone() for n in neg]))
        return pos, neg


def build():
    g = torch.Generator().manual_seed(SEED)
    anchor_gen = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    rpn = RegionProposalNetwork(
        anchor_gen,
        RPNHead(C, 3),
        0.7,
        0.3,
        256,
        0.5,
        dict(training=2000, testing=1000),
        dict(training=2000, testing=1000),
        0.7,
    )
    roi = RoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        TwoMLPHead(C * 49, REPR),
        FastRCNNPredictor(REPR, NUM_CLASSES),
        0.5,
        0.5,
        512,
        0.25,
        None,
        0.05,
        0.5,
        100,
    )
    stds = {
        "rpn.head.conv.0.0.weight": 0.12,
        "rpn.head.cls_logits.weight": 0.7,
        "rpn.head.bbox_pred.weight": 0.1,
        "roi_heads.box_head.fc6.weight": 1.5 / 28.0,
        "roi_heads.box_head.fc7.weight": 2.0 / 8.0,
        "roi_heads.box_predictor.cls_score.weight": 0.2,
        "roi_heads.box_predictor.bbox_pred.weight": 0.3,
    }
    params = {}
    for prefix, mod in (("rpn", rpn), ("roi_heads", roi)):
        for name, p in mod.named_parameters():
            full = f"{prefix}.{name}"
            std = stds.get(full, 0.1)
            with torch.no_grad():
                p.copy_(f16(torch.randn(p.shape, generator=g) * std))
            params[full] = p
    feats = {k: f16(torch.randn((2, C, h, w), generator=g)) for k, (h, w) in zip(KEYS, GRIDS)}
    return rpn, roi, params, feats


def quant(name, g, out):
    scale = float(g.abs().max()) / 32767.0
    if scale == 0.0:
        scale = 1.0
    out["grad." + name] = torch.round(g / scale).clamp(-32767, 32767).to(torch.int16).contiguous()
    out["gradscale." + name] = torch.tensor(scale, dtype=torch.float32)


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(SEED)  # the samplers' randperm draws
    rpn, roi, params, feats = build()
    images = ImageList(torch.zeros((2, 3) + PADDED), IMAGE_SIZES)
    out = {}
    for k in KEYS:
        out[f"feat.{k}"] = nhwc(feats[k]).half()
    for name, p in params.items():
        out[f"param.{name}"] = p.detach().half().contiguous()

    # Eval mode: proposals (with their scores, captured from filter_proposals) and detections.
    rpn.eval()
    roi.eval()
    captured = {}
    inner_filter = rpn.filter_proposals

    def filter_and_keep(*a, **kw):
        boxes, scores = inner_filter(*a, **kw)
        captured["scores"] = scores
        return boxes, scores

    rpn.filter_proposals = filter_and_keep
    with torch.no_grad():
        props, _ = rpn(images, dict(feats))
        dets, _ = roi(dict(feats), props, IMAGE_SIZES)
    # A high score threshold leaves fewer than 1000 candidates per image: batched_nms takes its coordinate-trick
    # path (the default threshold leaves more: the per-class path).
    roi.score_thresh = HI_THRESH
    cand = {}
    inner_nms = torchvision.ops.boxes.batched_nms

    def nms_and_count(boxes, scores, idxs, thr):
        cand.setdefault("n", []).append(int(boxes.shape[0]))
        return inner_nms(boxes, scores, idxs, thr)

    torchvision.models.detection.roi_heads.box_ops.batched_nms = nms_and_count
    with torch.no_grad():
        dets_hi, _ = roi(dict(feats), props, IMAGE_SIZES)
    torchvision.models.detection.roi_heads.box_ops.batched_nms = inner_nms
    assert all(n <= 1000 for n in cand["n"]), cand
    roi.score_thresh = 0.05
    rpn.filter_proposals = inner_filter
    for i in range(2):
        out[f"eval_hi.det_boxes.{i}"] = dets_hi[i]["boxes"].contiguous()
        out[f"eval_hi.det_scores.{i}"] = dets_hi[i]["scores"].contiguous()
        out[f"eval_hi.det_labels.{i}"] = dets_hi[i]["labels"].contiguous()
        out[f"eval.proposals.{i}"] = props[i].contiguous()
        out[f"eval.proposal_scores.{i}"] = captured["scores"][i].contiguous()
        out[f"eval.det_boxes.{i}"] = dets[i]["boxes"].contiguous()
        out[f"eval.det_scores.{i}"] = dets[i]["scores"].contiguous()
        out[f"eval.det_labels.{i}"] = dets[i]["labels"].contiguous()

    # Training mode: the four losses and their gradients, with the samplers recorded.
    rpn.train()
    roi.train()
    rpn.fg_bg_sampler = Recorder(rpn.fg_bg_sampler)
    roi.fg_bg_sampler = Recorder(roi.fg_bg_sampler)
    targets = [{"boxes": torch.tensor(b), "labels": torch.tensor(l, dtype=torch.int64)} for b, l in GT]
    for i, t in enumerate(targets):
        out[f"gt_boxes.{i}"] = t["boxes"]
        out[f"gt_labels.{i}"] = t["labels"]
    feats_g = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
    rpn_args = {}
    inner_loss = rpn.compute_loss

    def loss_and_keep(objectness, deltas, labels, reg_targets):
        rpn_args["a"] = (objectness.detach(), deltas.detach(), labels, reg_targets)
        return inner_loss(objectness, deltas, labels, reg_targets)

    rpn.compute_loss = loss_and_keep
    roi_cap = {}
    inner_select = roi.select_training_samples

    def select_and_keep(proposals, targets):
        res = inner_select(proposals, targets)
        roi_cap["labels"] = res[2]
        return res

    roi.select_training_samples = select_and_keep
    inner_pred = roi.box_predictor.forward

    def pred_and_keep(x):
        logits, reg = inner_pred(x)
        roi_cap["logits"] = logits
        return logits, reg

    roi.box_predictor.forward = pred_and_keep
    props_t, rpn_losses = rpn(images, feats_g, targets)
    for i in range(2):
        out[f"train.proposals.{i}"] = props_t[i].detach().contiguous()
    _, roi_losses = roi(feats_g, props_t, IMAGE_SIZES, targets)
    losses = [rpn_losses["loss_objectness"], rpn_losses["loss_rpn_box_reg"], roi_losses["loss_classifier"], roi_losses["loss_box_reg"]]
    out["train.losses"] = torch.stack([l.detach() for l in losses]).float()
    total = sum(losses)
    total.backward()
    for k in KEYS:
        quant(f"feat.{k}", nhwc(feats_g[k].grad), out)
    for name in GRAD_PARAMS:
        quant(name, params[name].grad.detach().clone(), out)
    (rpn_pos, rpn_neg), = rpn.fg_bg_sampler.calls
    (roi_pos, roi_neg), = roi.fg_bg_sampler.calls
    for i in range(2):
        out[f"train.rpn_pos.{i}"] = torch.where(rpn_pos[i])[0]
        out[f"train.rpn_neg.{i}"] = torch.where(rpn_neg[i])[0]
        out[f"train.roi_pos.{i}"] = torch.where(roi_pos[i])[0]
        out[f"train.roi_neg.{i}"] = torch.where(roi_neg[i])[0]

    # Per-source rules. Masked classification loss: classes masked out of image 1's softmax.
    logits = roi_cap["logits"].detach()
    labels = roi_cap["labels"]
    mask = torch.ones((2, NUM_CLASSES))
    mask[MASK_OUT[0], MASK_OUT[1]] = 0.0
    row_mask = torch.cat([mask[i].expand(len(l), NUM_CLASSES) for i, l in enumerate(labels)])
    out["mask.class_mask"] = mask
    out["mask.loss_classifier"] = F.cross_entropy(logits.masked_fill(row_mask == 0, float("-inf")), torch.cat(labels))
    # rpn_weight [1, 0]: torchvision's RPN losses of image 0 alone (its recorded sample replayed).
    objectness, deltas, labels_rpn, reg_targets = rpn_args["a"]
    n = labels_rpn[0].numel()
    rpn.fg_bg_sampler.replay = ([rpn_pos[0]], [rpn_neg[0]])
    l0 = inner_loss(objectness[:n], deltas[:n], [labels_rpn[0]], [reg_targets[0]])
    out["rpnw.losses"] = torch.stack([l.detach() for l in l0]).float()

    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(ROOT, "heads.safetensors"))
    meta = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "seed": SEED,
        "channels": C,
        "representation_size": REPR,
        "num_classes": NUM_CLASSES,
        "hi_score_thresh": HI_THRESH,
        "padded": PADDED,
        "image_sizes": IMAGE_SIZES,
        "grids": GRIDS,
        "grad_params": GRAD_PARAMS,
        "losses": [float(l) for l in out["train.losses"]],
        "counts": {
            "eval_proposals": [int(out[f"eval.proposals.{i}"].shape[0]) for i in range(2)],
            "eval_detections": [int(out[f"eval.det_boxes.{i}"].shape[0]) for i in range(2)],
            "eval_hi_candidates": cand["n"],
            "eval_hi_detections": [int(out[f"eval_hi.det_boxes.{i}"].shape[0]) for i in range(2)],
            "train_proposals": [int(out[f"train.proposals.{i}"].shape[0]) for i in range(2)],
            "rpn_sampled": [[int(out[f"train.rpn_pos.{i}"].numel()), int(out[f"train.rpn_neg.{i}"].numel())] for i in range(2)],
            "roi_sampled": [[int(out[f"train.roi_pos.{i}"].numel()), int(out[f"train.roi_neg.{i}"].numel())] for i in range(2)],
        },
    }
    with open(os.path.join(ROOT, "heads.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
