#!/usr/bin/env python3
"""Write tests/fixtures/attn/reference.json: values from diffusers / PyTorch for the attn ops.

- `get_timestep_embedding` (diffusers.models.embeddings) for SD's settings (dim 320, flip_sin_to_cos, shift 0),
  an odd dim with shift 1 and no flip, and a small max_period;
- `F.scaled_dot_product_attention` (with and without is_causal) on small [B, H, T, D] inputs, stored in our
  [B, T, H, D] layout;
- diffusers' GEGLU math (hidden * F.gelu(gate)) and CLIP's quick GELU (x * sigmoid(1.702 x)).

Not run by CI: the fixture is committed. To regenerate (the shared venv of the DDIM fixtures):

    /tmp/ddimvenv/bin/python tools/make_attn_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "attn", "reference.json")


def flat(t):
    return [float(v) for v in t.detach().double().flatten().tolist()]


def main():
    g = torch.Generator().manual_seed(0)
    cases = {"timestep": [], "attention": [], "geglu": None, "quick_gelu": None}
    t = torch.tensor([0.0, 1.0, 17.0, 250.5, 999.0], dtype=torch.float32)
    for dim, flip, shift, max_period in [(320, True, 0.0, 10000.0), (7, False, 1.0, 10000.0), (16, True, 0.0, 100.0)]:
        emb = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, max_period=max_period)
        cases["timestep"].append(
            {"dim": dim, "flip": flip, "shift": shift, "max_period": max_period, "t": flat(t), "emb": flat(emb)}
        )
    for b, h, tq, tk, d, causal in [(2, 3, 5, 7, 8, False), (1, 2, 6, 6, 5, True)]:
        q = torch.randn(b, h, tq, d, generator=g)
        k = torch.randn(b, h, tk, d, generator=g)
        v = torch.randn(b, h, tk, d, generator=g)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # scale 1/sqrt(d)
        to_bthd = lambda x: x.permute(0, 2, 1, 3).contiguous()  # noqa: E731
        cases["attention"].append(
            {
                "b": b, "h": h, "tq": tq, "tk": tk, "d": d, "causal": causal,
                "q": flat(to_bthd(q)), "k": flat(to_bthd(k)), "v": flat(to_bthd(v)), "o": flat(to_bthd(o)),
            }
        )
    x = torch.randn(3, 10, generator=g) * 2.0
    hidden, gate = x.chunk(2, dim=-1)
    cases["geglu"] = {"shape": [3, 10], "x": flat(x), "y": flat(hidden * F.gelu(gate))}
    x = torch.linspace(-8.0, 8.0, 33)
    cases["quick_gelu"] = {"x": flat(x), "y": flat(x * torch.sigmoid(1.702 * x))}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(cases, f)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
