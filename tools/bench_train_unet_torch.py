#!/usr/bin/env python3
"""Time one stage-1 UNet training step in PyTorch on the CPU, the same step as `instagen bench train-unet`:
DDPM add_noise, diffusers UNet2DConditionModel forward, F.mse_loss against the noise, backward, AdamW (lr 1e-4).

    /work/venv-torch/bin/python tools/bench_train_unet_torch.py --config tests/fixtures/sd/unet --batch 4
    /work/venv-torch/bin/python tools/bench_train_unet_torch.py --config sd-v1 --batch 1 --latent 64 --steps 1

--config: a diffusers unet folder (config.json [+ weights]) or `sd-v1` (SD v1.x's UNet, random weights).
--threads: torch's intra-op threads (default: all cores, as instagen's CPU backend uses).
Prints seconds per step (mean of the timed steps after one warm-up step).
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel


def sd_v1():
    # diffusers' class defaults are SD v1.x's architecture except cross_attention_dim (1280) and sample_size.
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd-v1")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.config == "sd-v1":
        unet = sd_v1()
    else:
        unet = UNet2DConditionModel.from_pretrained(a.config, torch_dtype=torch.float32)
    unet = unet.float().train()
    cfg = unet.config
    side = a.latent or cfg.sample_size
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x0 = torch.randn(a.batch, cfg.in_channels, side, side)
    context = torch.randn(a.batch, 77, cfg.cross_attention_dim)

    def step():
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (a.batch,))
        noisy = sched.add_noise(x0, eps, t)
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred.float(), eps.float(), reduction="mean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = (time.perf_counter() - start) / a.steps
    n = sum(p.numel() for p in unet.parameters())
    print(f"torch train-unet {a.config}: batch {a.batch}, latent {side}x{side}, context 77x{cfg.cross_attention_dim}, "
          f"f32, {a.threads} threads, torch {torch.__version__}, {n} parameters")
    print(f"{secs:.3f} s per training step (forward + backward + AdamW; {a.steps} timed after 1 warm-up)")


if __name__ == "__main__":
    main()
