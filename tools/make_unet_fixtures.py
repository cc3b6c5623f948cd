#!/usr/bin/env python3
"""Write the UNet parity fixtures from diffusers' own UNet2DConditionModel and DDIMScheduler.

Not run by CI: the outputs are committed. To regenerate (torch 2.x CPU, diffusers 0.42.1):

    /tmp/ddimvenv/bin/python tools/make_unet_fixtures.py

The model is a small random-weight UNet2DConditionModel with SD v1.x's architecture (CrossAttnDownBlock2D /
CrossAttnUpBlock2D with a spatial transformer, UNetMidBlock2DCrossAttn, GEGLU feed-forward, sinusoidal timestep
embedding with flip_sin_to_cos, 1x1-conv proj_in/proj_out) at a size that keeps the fixtures small:
block_out_channels (16, 32), layers_per_block 2 (so up blocks have 3 resnets and the skip order is exercised as in
SD), cross-attention at both levels, 8 groups, 2 heads, cross_attention_dim 32, 16x16 latents, 77 context tokens.

Weights are randomised (norm scales/biases too, so the affine parts are exercised), rounded to float16 and saved in
float16; the reference is computed in float32 from those same rounded weights.

Output:
  tests/fixtures/sd/unet/config.json, diffusion_pytorch_model.safetensors   the model in the diffusers layout (f16)
  tests/fixtures/sd/unet_parity.safetensors   f32 tensors, every 4-D tensor NHWC:
      in.sample [2,16,16,4], in.timestep [2], in.context [2,77,32], out.sample [2,16,16,4]
      act.<module> : outputs of time_embedding, conv_in, every resnet / attention / downsampler / upsampler,
                     mid_block and conv_out for that forward (forward hooks)
      ddim.init [1,16,16,4], ddim.uncond [1,77,32], ddim.cond [1,77,32], ddim.step{i} latents after step i,
      ddim.eps{i} the guided noise prediction of step i
  tests/fixtures/sd/unet_parity.json   versions, module names in forward order, DDIM timesteps and guidance
"""
import json
import os

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd")
GUIDANCE = 5.0
STEPS = 3


def nhwc(x):
    x = x.detach().float()
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    return x.contiguous()


def main():
    torch.manual_seed(1234)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=2,
    ).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:  # keep PyTorch's init scale but make every weight differ from a fresh init
                p.mul_(1.5)
        # Round to f16 and keep computing in f32 from the rounded values.
        unet.half().float()

    os.makedirs(os.path.join(ROOT, "unet"), exist_ok=True)
    unet.save_pretrained(os.path.join(ROOT, "unet"), safe_serialization=True, variant=None)
    # save_pretrained wrote f32 weights; rewrite them in f16 (exact: they are f16-rounded).
    sd = {k: v.detach().half().contiguous() for k, v in unet.state_dict().items()}
    save_file(sd, os.path.join(ROOT, "unet", "diffusion_pytorch_model.safetensors"))

    gen = torch.Generator().manual_seed(99)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    timestep = torch.tensor([981.0, 1.0])
    context = torch.randn(2, 77, 32, generator=gen)

    acts, order = {}, []

    def hook(name):
        def f(_mod, _inp, out):
            if isinstance(out, tuple):
                out = out[0]
            if hasattr(out, "sample"):
                out = out.sample
            acts["act." + name] = nhwc(out)
            order.append(name)
        return f

    handles = []
    for name, mod in unet.named_modules():
        leaf = name.split(".")
        want = (
            name in ("time_embedding", "conv_in", "mid_block", "conv_out")
            or (len(leaf) >= 2 and leaf[-2] in ("resnets", "attentions") and "transformer_blocks" not in name)
            or (len(leaf) >= 2 and leaf[-2] in ("downsamplers", "upsamplers"))
            or name.startswith("mid_block.") and len(leaf) == 3
        )
        if want and name:
            handles.append(mod.register_forward_hook(hook(name)))
    with torch.no_grad():
        out = unet(sample, timestep, encoder_hidden_states=context).sample
    for h in handles:
        h.remove()

    tensors = {
        "in.sample": nhwc(sample),
        "in.timestep": timestep.float().contiguous(),
        "in.context": context.contiguous(),
        "out.sample": nhwc(out),
    }
    tensors.update(acts)

    # Guided DDIM, the StableDiffusionPipeline loop (guidance_rescale 0) with the UNet called directly.
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(STEPS)
    init = torch.randn(1, 4, 16, 16, generator=gen)
    uncond = torch.randn(1, 77, 32, generator=gen)
    cond = torch.randn(1, 77, 32, generator=gen)
    tensors["ddim.init"] = nhwc(init)
    tensors["ddim.uncond"] = uncond.contiguous()
    tensors["ddim.cond"] = cond.contiguous()
    latents = init * sched.init_noise_sigma
    ctx = torch.cat([uncond, cond])
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            model_in = sched.scale_model_input(torch.cat([latents] * 2), t)
            eps = unet(model_in, t, encoder_hidden_states=ctx).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            latents = sched.step(eps, t, latents).prev_sample
            tensors[f"ddim.eps{i}"] = nhwc(eps)
            tensors[f"ddim.step{i}"] = nhwc(latents)

    save_file(tensors, os.path.join(ROOT, "unet_parity.safetensors"))
    meta = {
        "generator": "tools/make_unet_fixtures.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "kind": "parity: float32 diffusers UNet2DConditionModel on CPU, weights rounded to float16",
        "modules_in_forward_order": order,
        "ddim": {"timesteps": [int(t) for t in sched.timesteps], "guidance": GUIDANCE, "steps": STEPS},
        "parameters": sum(p.numel() for p in unet.parameters()),
    }
    with open(os.path.join(ROOT, "unet_parity.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", ROOT, "params", meta["parameters"], "diffusers", diffusers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
