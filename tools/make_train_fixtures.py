#!/usr/bin/env python3
"""Write the stage-1 training-step parity fixture from diffusers' UNet2DConditionModel and DDPMScheduler and
torch.optim.AdamW.

Not run by CI: the outputs are committed. To regenerate (torch 2.x CPU, diffusers 0.42.1), from the repository root:

    python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch diffusers transformers safetensors
    /work/venv-torch/bin/python tools/make_train_fixtures.py

The model is the fixture UNet tests/fixtures/sd/unet (f16 weights, loaded in float32). One training step as
diffusers' train_text_to_image.py does it, with the VAE and CLIP parts replaced by fixed tensors:
    noisy = DDPMScheduler.add_noise(x0, eps, t)      (config: tests/fixtures/sd/scheduler if present, else SD v1's
                                                      scaled_linear 0.00085..0.012, 1000 steps)
    loss  = F.mse_loss(unet(noisy, t, context).sample, eps, reduction="mean")
    loss.backward(); torch.optim.AdamW(unet.parameters(), lr=1e-4).step()

Output (every 4-D tensor NHWC):
  tests/fixtures/sd/train_step.safetensors
      in.latents [B,16,16,4] f32, in.noise [B,16,16,4] f32, in.timesteps [B] i64, in.context [B,77,32] f32,
      loss [] f32,
      grad.<param> i16 (the shape of the parameter; conv weights keep diffusers' [O, C, kh, kw]) and
      gradscale.<param> [] f32: the gradient is grad * gradscale, with gradscale = max|g| / 32767, so the stored
      value is within 0.5 * gradscale = max|g| / 65534 (1.53e-5 of the tensor's scale) of torch's f32 gradient.
      adamw.<param> f32: the parameter after one AdamW step, for the names in ADAMW_PARAMS.
  tests/fixtures/sd/train_step.json   versions, batch, timesteps, AdamW settings, the stored names.
Int16 keeps the fixture under 1 MB (f32 gradients of all 420k parameters would be 1.7 MB).
"""
import json
import os

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd")
BATCH = 2
LR = 1e-4
ADAMW_PARAMS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "up_blocks.1.resnets.2.conv1.weight",
    "conv_out.bias",
]


def nhwc(x):
    x = x.detach().float()
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    return x.contiguous()


def scheduler():
    d = os.path.join(ROOT, "scheduler")
    if os.path.isdir(d):
        return DDPMScheduler.from_pretrained(d)
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(ROOT, "unet"), torch_dtype=torch.float32)
    unet.train()
    sched = scheduler()
    cfg = unet.config
    side = cfg.sample_size

    gen = torch.Generator().manual_seed(2024)
    x0 = torch.randn(BATCH, cfg.in_channels, side, side, generator=gen)
    eps = torch.randn(BATCH, cfg.in_channels, side, side, generator=gen)
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (BATCH,), generator=gen, dtype=torch.long)
    context = torch.randn(BATCH, 77, cfg.cross_attention_dim, generator=gen)

    noisy = sched.add_noise(x0, eps, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=context).sample
    loss = F.mse_loss(pred.float(), eps.float(), reduction="mean")
    loss.backward()

    tensors = {
        "in.latents": nhwc(x0),
        "in.noise": nhwc(eps),
        "in.timesteps": timesteps.contiguous(),
        "in.context": context.contiguous(),
        "loss": loss.detach().float().reshape(()),
    }
    worst_q = 0.0
    for name, p in unet.named_parameters():
        g = p.grad.detach().float()
        scale = float(g.abs().max()) / 32767.0
        if scale == 0.0:
            scale = 1.0
        q = torch.round(g / scale).clamp(-32767, 32767).to(torch.int16)
        worst_q = max(worst_q, float((q.float() * scale - g).abs().max()) / (32767.0 * scale))
        tensors["grad." + name] = q.contiguous()
        tensors["gradscale." + name] = torch.tensor(scale, dtype=torch.float32)

    params = dict(unet.named_parameters())
    opt = torch.optim.AdamW(unet.parameters(), lr=LR)
    opt.step()
    for name in ADAMW_PARAMS:
        tensors["adamw." + name] = params[name].detach().float().contiguous()

    save_file(tensors, os.path.join(ROOT, "train_step.safetensors"))
    g = opt.param_groups[0]
    meta = {
        "generator": "tools/make_train_fixtures.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "kind": "one training step of the fixture UNet in float32 on CPU (weights as stored, f16-rounded)",
        "batch": BATCH,
        "timesteps": [int(t) for t in timesteps],
        "loss": loss.item(),
        "scheduler": {k: sched.config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")},
        "adamw": {"lr": g["lr"], "betas": list(g["betas"]), "eps": g["eps"], "weight_decay": g["weight_decay"]},
        "adamw_params": ADAMW_PARAMS,
        "gradient_quantisation_max_error_of_scale": worst_q,
        "parameters": sum(p.numel() for p in unet.parameters()),
    }
    with open(os.path.join(ROOT, "train_step.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("loss", loss.item(), "timesteps", meta["timesteps"], "params", meta["parameters"], "worst quantisation", worst_q)


if __name__ == "__main__":
    main()
