#!/usr/bin/env python3
"""PyTorch's side of `instagen bench cpu`: the same models and ops, f32, random weights, on the CPU.

`instagen bench cpu --torch PYTHON` feeds this file (embedded in the binary) to PYTHON on stdin once per case,
right before timing its own side, so both sides of a row see the same load. Standalone:

    /work/venv-torch/bin/python tools/bench_cpu_torch.py --filter fixture,clip --threads 2
    /work/venv-torch/bin/python tools/bench_cpu_torch.py --list

Each case: one warm-up call, then calls until at least one and at least --min-seconds in all; the median.
Prints JSON lines: {"torch": VERSION, "threads": N} first, then {"case": NAME, "seconds": S, "runs": N} per case.
Needs torch; the model cases also need diffusers (UNet, VAE) and transformers (CLIP).
Case names and shapes must match `src/pipeline/bench_cpu.rs` (a unit test there checks the names).
"""
import argparse
import json
import os
import sys
import time

CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def timed(call, min_seconds):
    call()  # warm-up
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times.sort()
    m = len(times) // 2
    median = times[m] if len(times) % 2 else 0.5 * (times[m - 1] + times[m])
    return median, len(times)


def no_grad(fn):
    import torch

    def call():
        with torch.no_grad():
            fn()
    return call


def fixture_unet_config(a):
    if a.fixture_unet_config:
        return json.loads(a.fixture_unet_config)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "tests", "fixtures", "sd", "unet", "config.json")) as f:
        return json.load(f)


def unet_forward(unet, batch, side):
    import torch
    cfg = unet.config
    x = torch.randn(batch, cfg.in_channels, side, side)
    t = torch.full((batch,), 501.0)
    ctx = torch.randn(batch, 77, cfg.cross_attention_dim)
    return no_grad(lambda: unet(x, t, encoder_hidden_states=ctx).sample)


@case("unet-sd1.fwd")
def unet_sd1_fwd(a):
    from diffusers import UNet2DConditionModel
    # diffusers' class defaults are SD v1.x's architecture except cross_attention_dim (1280) and sample_size.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).float().eval()
    return unet_forward(unet, 2, 64)


@case("unet-fixture.fwd")
def unet_fixture_fwd(a):
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_config(fixture_unet_config(a)).float().eval()
    return unet_forward(unet, 2, unet.config.sample_size)


@case("unet-fixture.train")
def unet_fixture_train(a):
    # The stage-1 step of `instagen finetune` (and tools/bench_train_unet_torch.py): DDPM add_noise, UNet forward,
    # MSE against the noise, backward, AdamW.
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    unet = UNet2DConditionModel.from_config(fixture_unet_config(a)).float().train()
    cfg, batch = unet.config, 2
    side = cfg.sample_size
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x0 = torch.randn(batch, cfg.in_channels, side, side)
    ctx = torch.randn(batch, 77, cfg.cross_attention_dim)

    def step():
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(sched.add_noise(x0, eps, t), t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


@case("clip-sd1.fwd")
def clip_sd1_fwd(a):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)
    m = CLIPTextModel(cfg).float().eval()
    batch = 2
    ids = (torch.arange(77)[None, :] * 31 + torch.arange(batch)[:, None] * 7) % cfg.vocab_size  # as instagen's
    return no_grad(lambda: m(input_ids=ids).last_hidden_state)


@case("vae-sd1.decode")
def vae_sd1_decode(a):
    import torch
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512).float().eval()
    z = torch.randn(1, 4, 64, 64)
    return no_grad(lambda: vae.decode(z).sample)


def with_grads(op, inputs):
    """The gradients of sum(op(*inputs) * r) with respect to every input (as instagen's side)."""
    import torch
    for x in inputs:
        x.requires_grad_(True)
    with torch.no_grad():
        r = torch.randn_like(op(*inputs))

    def call():
        loss = (op(*inputs) * r).sum()
        torch.autograd.grad(loss, inputs)
    return call


def attention_inputs():
    import torch
    return [torch.randn(2, 8, 4096, 40) for _ in range(3)]  # [B, H, T, D]


def sdpa(q, k, v):
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v)


@case("attention.fwd")
def attention_fwd(a):
    q, k, v = attention_inputs()
    return no_grad(lambda: sdpa(q, k, v))


@case("attention.fwd+bwd")
def attention_fwd_bwd(a):
    return with_grads(sdpa, attention_inputs())


def conv_inputs():
    import torch
    x = torch.randn(2, 320, 64, 64)  # [B, C, H, W]
    w = torch.randn(320, 320, 3, 3) / (320 * 9) ** 0.5
    b = torch.randn(320)
    return [x, w, b]


def conv(x, w, b):
    import torch.nn.functional as F
    return F.conv2d(x, w, b, padding=1)


@case("conv3x3.fwd")
def conv3x3_fwd(a):
    x, w, b = conv_inputs()
    return no_grad(lambda: conv(x, w, b))


@case("conv3x3.fwd+bwd")
def conv3x3_fwd_bwd(a):
    return with_grads(conv, conv_inputs())


def msda_inputs():
    """The grounding head's deformable attention (instagen's `msda` cases): B2, 900 queries, 8 heads x 32,
    levels 64^2, 32^2, 16^2, 8^2, 4 points; locations uniform in [-0.1, 1.1]."""
    import torch
    b, q, h, d, p = 2, 900, 8, 32, 4
    shapes = [(64, 64), (32, 32), (16, 16), (8, 8)]
    s = sum(hh * ww for hh, ww in shapes)
    value = torch.randn(b, s, h, d)
    loc = torch.rand(b, q, h, len(shapes), p, 2) * 1.2 - 0.1
    attn = torch.randn(b, q, h, len(shapes), p)
    return shapes, [value, loc, attn]


def msda(shapes):
    """multi_scale_deformable_attn_pytorch (Deformable DETR / GroundingDINO) through F.grid_sample:
    value [B, S, H, D], loc [B, Q, H, L, P, 2] in [0, 1], attn [B, Q, H, L, P] -> [B, Q, H * D]."""
    import torch
    import torch.nn.functional as F

    def op(value, loc, attn):
        b, _, h, d = value.shape
        _, q, _, l, p, _ = loc.shape
        per_level = value.split([hh * ww for hh, ww in shapes], dim=1)
        grids = 2 * loc - 1
        sampled = []
        for lvl, (hh, ww) in enumerate(shapes):
            v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * h, d, hh, ww)
            g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
        a = attn.transpose(1, 2).reshape(b * h, 1, q, l * p)
        out = (torch.stack(sampled, dim=-2).flatten(-2) * a).sum(-1).view(b, h * d, q)
        return out.transpose(1, 2).contiguous()
    return op


@case("msda.fwd")
def msda_fwd(a):
    shapes, (value, loc, attn) = msda_inputs()
    op = msda(shapes)
    return no_grad(lambda: op(value, loc, attn))


@case("msda.fwd+bwd")
def msda_fwd_bwd(a):
    shapes, inputs = msda_inputs()
    return with_grads(msda(shapes), inputs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", help="comma-separated exact case names")
    ap.add_argument("--filter", default="", help="comma-separated alternatives; a case runs if its name contains one")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--min-seconds", type=float, default=0.5)
    ap.add_argument("--fixture-unet-config", help="the fixture UNet's config.json text (default: read from tests/)")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(CASES))
        return
    if a.cases is not None:
        names = [n for n in a.cases.split(",") if n]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            sys.exit(f"bench_cpu_torch.py: unknown case(s) {', '.join(unknown)} (cases: {', '.join(CASES)})")
    else:
        alts = [s.strip() for s in a.filter.split(",") if s.strip()]
        names = [n for n in CASES if not alts or any(s in n for s in alts)]
        if not names:
            sys.exit(f"bench_cpu_torch.py: --filter {a.filter!r} matches no case (cases: {', '.join(CASES)})")
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for name in names:
        secs, runs = timed(CASES[name](a), a.min_seconds)
        print(json.dumps({"case": name, "seconds": secs, "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
