#!/usr/bin/env python3
"""Write tests/fixtures/sd/{text_encoder,vae}/ and tests/fixtures/sd/{clip,vae}_*.safetensors: small random-weight
models with the architecture of Stable Diffusion v1.x's CLIP text encoder and VAE, saved in the diffusers layout,
plus reference activations, plus a CompVis single-file checkpoint of the same weights.

Never run in CI.  /tmp/ddimvenv/bin/python tools/make_sd_fixtures.py   (torch 2.15 CPU, diffusers 0.42.1,
transformers 5.24)

Choices:
- Weights are random with fixed seeds, every tensor perturbed (norm scales 1 + 0.1 N(0,1), biases 0.1 N(0,1)), so a
  swapped or misnamed key changes the outputs. They are rounded to f16 and stored as f16 (small files); the
  references are computed in float64 from those same f16-rounded values, so they are the exact outputs of the stored
  model and an f32 engine's error is its own.
- The text encoder's keys carry the `text_model.` prefix as the SD v1.x folders on the Hub do (transformers 5 would
  save them without it; the loader accepts both).
- CLIP: 2 layers, hidden 64, 4 heads, intermediate 256, 77 positions, quick_gelu, eps 1e-5. The real vocabulary
  (49408 x 64) would be 6 MB in f16, so the vocabulary is 1000 and the ids are the real CLIP tokenizer ids of two
  prompts (from tests/fixtures/tokenizer/clip_prompts.json, i.e. Hugging Face's tokenizer) taken mod 1000; both
  the real ids and the reduced ids are stored.
- VAE: block_out_channels (16, 32), layers_per_block 2, norm_num_groups 8, latent 4 channels, one 32x32 RGB image
  (latent 16x16). The text encoder folder is saved plainly (model.safetensors); the VAE is saved as the fp16
  variant (diffusion_pytorch_model.fp16.safetensors) so the loader's variant fallback is exercised.
- Activations are stored in the engine's layout: NHWC for feature maps, [B, T, C] for tokens, f32.
- The CompVis file uses the real single-file key names (cond_stage_model.transformer.text_model.*,
  first_stage_model.* with the VAE attention weights as 1x1 conv kernels [C, C, 1, 1], and the position_ids
  buffer), written by inverting diffusers' own conversion; the script checks that diffusers' converters
  (convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint) map it back to exactly the diffusers state dicts.
"""

import json
import os
import re

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "sd")
VOCAB = 1000


def perturb(model, seed):
    """Random values for every parameter, reproducible; then rounded to f16 (kept as f32/f64 in the model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif "embedding" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=g) / fan_in ** 0.5
            p.copy_(v.half().float())


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def f32(d):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}


def clip_fixture():
    cfg = CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=64,
        bos_token_id=49406 % VOCAB, eos_token_id=49407 % VOCAB, pad_token_id=1,
    )
    torch.manual_seed(0)
    model = CLIPTextModel(cfg).eval()
    perturb(model, 1)
    te_dir = os.path.join(OUT, "text_encoder")
    model.half().save_pretrained(te_dir, safe_serialization=True)
    # transformers 5 saves CLIPTextModel keys without the `text_model.` prefix (it strips it on load); the SD v1.x
    # folders on the Hub have it, so rewrite the file with the prefix, as real checkpoints are, and check it loads.
    sd16 = {"text_model." + k: v.clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd16, os.path.join(te_dir, "model.safetensors"), metadata={"format": "pt"})
    back = CLIPTextModel.from_pretrained(te_dir, dtype=torch.float16).state_dict()
    assert all(torch.equal(back[k[len("text_model."):]], v) for k, v in sd16.items())

    cases = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "clip_prompts.json")))["cases"]
    prompts = ["a photograph of a dog and a hot dog", "a 1920s car, 4k, 8K UHD, f/1.8"]
    full = [next(c["ids"] for c in cases if c["prompt"] == p) for p in prompts]
    ids_full = torch.tensor(full, dtype=torch.int64)
    ids = ids_full % VOCAB

    model = model.double()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    acts = {
        "input_ids": ids,
        "input_ids_full": ids_full,
        "embeddings": out.hidden_states[0],
        "last_hidden_state": out.last_hidden_state,
    }
    for i in range(cfg.num_hidden_layers):
        acts[f"layer_{i}"] = out.hidden_states[i + 1]
    acts = {k: (v if v.dtype == torch.int64 else v.float()).contiguous() for k, v in acts.items()}
    save_file(acts, os.path.join(OUT, "clip_activations.safetensors"), metadata={"prompts": json.dumps(prompts)})
    return sd16


def vae_fixture():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=2, act_fn="silu",
        latent_channels=4, norm_num_groups=8, sample_size=32,
    ).eval()
    perturb(vae, 2)
    vae.half().save_pretrained(os.path.join(OUT, "vae"), safe_serialization=True, variant="fp16")
    sd16 = {k: v.clone() for k, v in vae.state_dict().items()}
    vae = vae.double()

    g = torch.Generator().manual_seed(3)
    image = (torch.rand((1, 3, 32, 32), generator=g, dtype=torch.float64) * 2 - 1)
    acts = {}

    def hook(name):
        def f(_m, _i, o):
            acts[name] = nhwc(o if isinstance(o, torch.Tensor) else o[0])
        return f

    enc, dec = vae.encoder, vae.decoder
    hooks = [enc.conv_in.register_forward_hook(hook("enc_conv_in")), enc.mid_block.register_forward_hook(hook("enc_mid")),
             enc.conv_out.register_forward_hook(hook("enc_out")), vae.quant_conv.register_forward_hook(hook("moments")),
             vae.post_quant_conv.register_forward_hook(hook("post_quant")), dec.conv_in.register_forward_hook(hook("dec_conv_in")),
             dec.mid_block.register_forward_hook(hook("dec_mid")), dec.conv_out.register_forward_hook(hook("decoded"))]
    for i, b in enumerate(enc.down_blocks):
        hooks.append(b.register_forward_hook(hook(f"enc_down_{i}")))
    for i, b in enumerate(dec.up_blocks):
        hooks.append(b.register_forward_hook(hook(f"dec_up_{i}")))

    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        noise = torch.randn(dist.mean.shape, generator=g, dtype=torch.float64)
        z = dist.mean + dist.std * noise
        vae.decode(z)
    for h in hooks:
        h.remove()
    acts.update({"image": nhwc(image), "mean": nhwc(dist.mean), "logvar": nhwc(dist.logvar), "noise": nhwc(noise),
                 "latent": nhwc(z)})
    save_file(f32(acts), os.path.join(OUT, "vae_activations.safetensors"))
    return sd16, vae.config


def vae_to_compvis(key, n_up):
    """A diffusers AutoencoderKL key -> the CompVis (ldm) first_stage_model key (inverse of diffusers' converter)."""
    k = key
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", k)
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", k)
    if m:
        i = n_up - 1 - int(m.group(1))
        k = f"decoder.up.{i}.block.{m.group(3)}.{m.group(4)}" if m.group(2) == "resnets" else f"decoder.up.{i}.upsample.{m.group(4)}"
    k = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda mm: f".mid.block_{int(mm.group(1)) + 1}.", k)
    k = k.replace(".mid_block.attentions.0.", ".mid.attn_1.")
    k = k.replace(".attn_1.group_norm.", ".attn_1.norm.").replace(".attn_1.to_q.", ".attn_1.q.")
    k = k.replace(".attn_1.to_k.", ".attn_1.k.").replace(".attn_1.to_v.", ".attn_1.v.")
    k = k.replace(".attn_1.to_out.0.", ".attn_1.proj_out.")
    k = k.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
    return "first_stage_model." + k


def compvis_file(clip_sd, vae_sd, vae_cfg):
    ckpt = {}
    for k, v in clip_sd.items():
        ckpt["cond_stage_model.transformer." + k] = v
    # Real SD v1.x checkpoints carry this buffer; the loader must ignore it.
    ckpt["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    n_up = len(vae_cfg.up_block_types)
    for k, v in vae_sd.items():
        ck = vae_to_compvis(k, n_up)
        if ".attn_1." in ck and ck.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # CompVis attention q/k/v/proj_out are 1x1 convs
        ckpt[ck] = v
    # Check with diffusers' own converters that these are the real CompVis names.
    back = convert_ldm_vae_checkpoint(ckpt, dict(vae_cfg))
    assert set(back) == set(vae_sd), sorted(set(back) ^ set(vae_sd))
    assert all(torch.equal(back[k], vae_sd[k]) for k in vae_sd)
    back = convert_ldm_clip_checkpoint(ckpt)
    back = {k: v for k, v in back.items() if k in clip_sd or not k.endswith("position_ids")}
    assert set(back) == set(clip_sd), sorted(set(back) ^ set(clip_sd))
    assert all(torch.equal(back[k], clip_sd[k]) for k in clip_sd)
    ckpt = {k: v.contiguous() for k, v in ckpt.items()}
    save_file(ckpt, os.path.join(OUT, "clip_vae_compvis.safetensors"), metadata={"format": "pt"})


def main():
    os.makedirs(OUT, exist_ok=True)
    clip_sd = clip_fixture()
    vae_sd, vae_cfg = vae_fixture()
    compvis_file(clip_sd, vae_sd, vae_cfg)
    total = 0
    for d, _, files in os.walk(OUT):
        for f in files:
            p = os.path.join(d, f)
            if "text_encoder" in p or "vae" in p or os.path.basename(p).startswith("clip_"):
                total += os.path.getsize(p)
                print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
