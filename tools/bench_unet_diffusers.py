#!/usr/bin/env python3
"""Time diffusers' UNet2DConditionModel forward on the CPU, to compare with `instagen bench unet` at the same
config in the same session (not run by CI).

    /tmp/ddimvenv/bin/python tools/bench_unet_diffusers.py --config tests/fixtures/sd/unet --batch 2
    target/release/instagen bench unet --config tests/fixtures/sd/unet --batch 2 --backend cpu

Weights come from the folder when present (cast to float32), the inputs are random; context 77 tokens; no grad.
"""
import argparse
import time

import torch
from diffusers import UNet2DConditionModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tests/fixtures/sd/unet")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latent", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    unet = UNet2DConditionModel.from_pretrained(a.config, torch_dtype=torch.float32).eval()
    side = a.latent or unet.config.sample_size
    x = torch.randn(a.batch, unet.config.in_channels, side, side)
    t = torch.full((a.batch,), 501.0)
    ctx = torch.randn(a.batch, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=ctx)
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < a.min_seconds:
            unet(x, t, encoder_hidden_states=ctx)
            calls += 1
        dt = (time.perf_counter() - start) / calls
    print(f"diffusers unet {a.config}: batch {a.batch}, latent {side}x{side}, f32, {torch.get_num_threads()} threads: "
          f"{dt * 1e3:.3f} ms per call ({calls} calls)")


if __name__ == "__main__":
    main()
