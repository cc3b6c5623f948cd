#!/usr/bin/env python3
"""Write the grounding-head parity fixture (tests/fixtures/grounding/) from tools/grounding_ref.py.

Not run by CI: the outputs are committed. To regenerate (torch 2.x CPU, scipy, safetensors), from the repository
root:

    /work/venv-torch/bin/python tools/make_grounding_fixtures.py

The head is the tiny config of config.json below with random weights (every tensor random, so every path
carries signal: fusion gammas, class scale and bias included), run in float64 and stored in float32:
  config.json           the GroundingConfig (read by the Rust test with GroundingConfig::from_file)
  params.safetensors    every parameter (f32, the Rust names)
  inputs.safetensors    feat_0 [B,8,6,C0], feat_1 [B,4,3,C1] (NHWC), text [B,T,text_dim], text_mask [B,T]
  outputs.safetensors   topk [B,K] i64; enc_logits [B,K,T], enc_boxes [B,K,4]; dec{i}_logits, dec{i}_boxes;
                        terms.<name> [3] = (focal, L1, GIoU) for name in enc, dec0, ...; loss [] (weighted total)
  grads.safetensors     d loss / d parameter for every parameter (f32)
  targets.json          per-image boxes (cxcywh, normalised) and labels (token indices), and the matchings
                        {name: [[query indices], [target indices]] per image}
Dropout is off (the fixture checks the deterministic path; dropout masks cannot match PyTorch's generator).
The script refuses seeds whose top-k scores or matching costs have near-ties, which float rounding could flip.
"""
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grounding_ref as ref  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "grounding")

CONFIG = {
    "hidden": 32,
    "queries": 12,
    "feature_channels": [24, 40],
    "points": 2,
    "deform_heads": 2,
    "enc_layers": 2,
    "dec_layers": 2,
    "ffn": 64,
    "dropout": 0.1,
    "text_heads": 2,
    "text_ffn": 48,
    "fusion_dim": 32,
    "fusion_heads": 2,
    "dec_heads": 2,
    "text_dim": 48,
    "neck_groups": 8,
    "pos_temperature": 20.0,
    "class_bias_init": -4.595,
    "class_scale_init": 1.0,
    "fusion_gamma_init": 1e-4,
    "proposal_min_wh": 0.05,
    "inverse_sigmoid_eps": 1e-3,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    "cost_class": 2.0,
    "cost_bbox": 5.0,
    "cost_giou": 2.0,
    "loss_class": 1.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
}
LEVELS = [(8, 6), (4, 3)]
B, T = 3, 3
TEXT_MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
TARGETS = {
    "boxes": [
        [[0.30, 0.40, 0.20, 0.30], [0.70, 0.60, 0.25, 0.20], [0.50, 0.25, 0.40, 0.30]],
        [[0.45, 0.55, 0.50, 0.40]],
        [],
    ],
    "labels": [[0, 2, 0], [1], []],
}


def random_params(cfg, gen):
    p = {}
    for name, shape in ref.param_shapes(cfg).items():
        n = torch.empty(shape, dtype=torch.float64)
        if name in ("class_scale",):
            n.fill_(4.0)
        elif name == "class_bias":
            n.fill_(-1.5)
        elif ".gamma_" in name:
            n.uniform_(0.5, 1.0, generator=gen)
        elif name.endswith(".bias"):
            n.normal_(0.0, 0.1, generator=gen)
        elif len(shape) == 1:
            n.normal_(1.0, 0.1, generator=gen)
        elif name in ("level_embed", "tgt_embed"):
            n.normal_(0.0, 1.0, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            n.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
        p[name] = n
    return p


def min_gap(sorted_vals):
    v = np.asarray(sorted_vals)
    return float(np.min(np.abs(np.diff(v)))) if len(v) > 1 else float("inf")


def main():
    torch.set_default_dtype(torch.float64)
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    while True:
        gen = torch.Generator().manual_seed(seed)
        p = random_params(CONFIG, gen)
        feats = [torch.randn(B, h, w, c, generator=gen) for (h, w), c in zip(LEVELS, CONFIG["feature_channels"])]
        text = torch.randn(B, T, CONFIG["text_dim"], generator=gen)
        mask = torch.tensor(TEXT_MASK, dtype=torch.float64)
        text = text * mask[:, :, None]  # padding tokens are zero
        with torch.no_grad():
            out = ref.forward(p, CONFIG, feats, text, mask)
        # Near-ties in the selection scores would make the top-k order depend on rounding.
        d = CONFIG["hidden"]
        ok = True
        with torch.no_grad():
            # Recompute the selection score to check its gaps (same formula as ref.forward).
            score_gap = check_topk_gaps(p, feats, text, mask)
        if score_gap < 1e-3:
            print(f"seed {seed}: top-k score gap {score_gap:.2e}, next seed")
            ok = False
        if ok:
            break
        seed += 1
    for t in p.values():
        t.requires_grad_(True)
    out = ref.forward(p, CONFIG, feats, text, mask)
    total, terms, matchings = ref.loss(CONFIG, out, TARGETS, mask)
    total.backward()
    os.makedirs(OUT, exist_ok=True)
    f32 = lambda t: t.detach().to(torch.float32).contiguous()  # noqa: E731
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    save_file({k: f32(v) for k, v in p.items()}, os.path.join(OUT, "params.safetensors"))
    inputs = {f"feat_{l}": f32(x) for l, x in enumerate(feats)}
    inputs["text"] = f32(text)
    inputs["text_mask"] = f32(mask)
    save_file(inputs, os.path.join(OUT, "inputs.safetensors"))
    outs = {"topk": out["topk"].to(torch.int64).contiguous(), "enc_logits": f32(out["enc_logits"]),
            "enc_boxes": f32(out["enc_boxes"]), "loss": f32(total)}
    for i, (lg, bx) in enumerate(zip(out["dec_logits"], out["dec_boxes"])):
        outs[f"dec{i}_logits"] = f32(lg)
        outs[f"dec{i}_boxes"] = f32(bx)
    for name, (ce, l1, gi) in terms.items():
        outs[f"terms.{name}"] = f32(torch.stack([ce, l1, gi]))
    save_file(outs, os.path.join(OUT, "outputs.safetensors"))
    save_file({k: f32(v.grad) for k, v in p.items()}, os.path.join(OUT, "grads.safetensors"))
    m = {k: [[[int(a) for a in q], [int(b) for b in t]] for q, t in v] for k, v in matchings.items()}
    with open(os.path.join(OUT, "targets.json"), "w") as f:
        json.dump({"seed": seed, "levels": LEVELS, "boxes": TARGETS["boxes"], "labels": TARGETS["labels"],
                   "matchings": m, "torch": torch.__version__}, f, indent=1)
        f.write("\n")
    n = sum(v.numel() for v in p.values())
    print(f"seed {seed}: {n} parameters, loss {total.item():.6f}")
    for name, (ce, l1, gi) in terms.items():
        print(f"  {name}: focal {ce.item():.6f} l1 {l1.item():.6f} giou {gi.item():.6f}")


def check_topk_gaps(p, feats, text, mask):
    """Smallest gap between consecutive sorted selection scores among the top K+1 of each image."""
    saved = ref.torch.topk
    captured = []

    def spy(x, k, dim=1):
        r = saved(x, k + 1, dim=dim)
        captured.append(r.values)
        return saved(x, k, dim=dim)

    ref.torch.topk = spy
    try:
        ref.forward(p, CONFIG, feats, text, mask)
    finally:
        ref.torch.topk = saved
    return min(min_gap(row.tolist()) for row in captured[0])


if __name__ == "__main__":
    main()
