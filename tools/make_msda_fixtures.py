#!/usr/bin/env python3
"""Fixture for tests/msda.rs: multi-scale deformable attention through PyTorch's F.grid_sample (bilinear,
padding zeros, align_corners=False), as Deformable DETR's / GroundingDINO's `multi_scale_deformable_attn_pytorch`
(written here from that function's definition), with the output and the gradients of sum(out * r) w.r.t.
value, sampling locations and attention weights.

Run by hand (never in CI) with the project's torch venv:
    /work/venv-torch/bin/python tools/make_msda_fixtures.py
The inputs are float32 values; the reference is computed in float64 from them, so an f32 result's error is
its own. Writes tests/fixtures/msda/msda.json (values as shortest round-trip decimal strings).
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "msda")


def msda_grid_sample(value, shapes, loc, attn):
    """value [B, S, H, D], loc [B, Q, H, L, P, 2] in [0, 1], attn [B, Q, H, L, P] -> [B, Q, H * D]."""
    b, _, h, d = value.shape
    _, q, _, l, p, _ = loc.shape
    sizes = [hh * ww for hh, ww in shapes]
    per_level = value.split(sizes, dim=1)
    grids = 2 * loc - 1
    sampled = []
    for lvl, (hh, ww) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * h, d, hh, ww)  # [B*H, D, h, w]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*H, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # [B*H, D, Q, P]
    a = attn.transpose(1, 2).reshape(b * h, 1, q, l * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * a).sum(-1).view(b, h * d, q)
    return out.transpose(1, 2).contiguous()


def flat(t):
    a = np.asarray(t.detach().cpu().numpy(), dtype=np.float32).reshape(-1)
    return [float(str(v)) for v in a]


def main():
    gen = np.random.default_rng(20261203)
    b, q, h, d, p = 2, 5, 2, 4, 3
    shapes = [[4, 6], [3, 2], [1, 1]]  # non-square levels and a 1-pixel level
    s = sum(hh * ww for hh, ww in shapes)
    l = len(shapes)
    value = gen.standard_normal((b, s, h, d)).astype(np.float32)
    loc = gen.uniform(-0.15, 1.15, (b, q, h, l, p, 2)).astype(np.float32)  # some samples in the zero padding
    logits = gen.standard_normal((b, q, h, l * p))
    attn = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(b, q, h, l, p).astype(np.float32)
    r = gen.standard_normal((b, q, h * d)).astype(np.float32)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k != "r") for k, v in
         dict(value=value, loc=loc, attn=attn, r=r).items()}
    out = msda_grid_sample(t["value"], shapes, t["loc"], t["attn"])
    (out * t["r"]).sum().backward()
    fixture = {
        "torch": torch.__version__,
        "levels": shapes,
        "dims": dict(b=b, q=q, h=h, d=d, p=p),
        "value": flat(t["value"]), "loc": flat(t["loc"]), "attn": flat(t["attn"]), "r": flat(t["r"]),
        "out": flat(out), "dvalue": flat(t["value"].grad), "dloc": flat(t["loc"].grad), "dattn": flat(t["attn"].grad),
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "msda.json")
    with open(path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
