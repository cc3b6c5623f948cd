#!/usr/bin/env python3
"""Time one VAE training step in PyTorch on the CPU, the same step as `instagen bench train-vae` / `instagen vae
train`: diffusers AutoencoderKL encoder, posterior sample, decoder, L1 reconstruction (mean over pixel values) +
kl_weight * KL (summed over an image's latent, averaged over the batch, divided by the pixel values of an image),
backward, AdamW (lr 1e-4).

    /work/venv-torch/bin/python tools/bench_train_vae_torch.py --config SD_FOLDER/vae --batch 8

--config: a diffusers vae folder (config.json [+ weights]).
--threads: torch's intra-op threads (default: all cores, as instagen's CPU backend uses).
Prints seconds per step (median of the timed steps after one warm-up step) and images/s.
"""
import argparse
import os
import statistics
import time

import torch
from diffusers import AutoencoderKL


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(a.config)).float().train()
    cfg = vae.config
    side = cfg.sample_size
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(a.batch, cfg.in_channels, side, side) * 2 - 1
    pixels = cfg.in_channels * side * side

    def step():
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean()  # summed over the latent per image, averaged over the batch
        loss = l1 + a.kl_weight * kl / pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    secs = statistics.median(times)
    n = sum(p.numel() for p in vae.parameters())
    print(f"torch train-vae {a.config}: batch {a.batch}, image {side}x{side}, f32, {a.threads} threads, "
          f"torch {torch.__version__}, {n} parameters")
    print(f"{secs:.3f} s per training step (forward + backward + AdamW; median of {a.steps} timed after 1 warm-up), "
          f"{a.batch / secs:.2f} images/s")


if __name__ == "__main__":
    main()
