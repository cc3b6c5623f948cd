"""Times transformers CLIPTextModel and diffusers AutoencoderKL.decode on the CPU at the configs that
`instagen bench clip|vae` uses, so the ratio is known. Not used in CI.

    /tmp/ddimvenv/bin/python tools/bench_sd_diffusers.py clip tests/fixtures/sd/text_encoder --batch 2
    /tmp/ddimvenv/bin/python tools/bench_sd_diffusers.py vae tests/fixtures/sd/vae --batch 1 [--latent 16]
"""
import argparse
import time

import torch


def timeit(fn, min_seconds):
    with torch.no_grad():
        fn()  # warm-up
        calls, start = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - start < min_seconds:
            fn()
            calls += 1
    return (time.perf_counter() - start) / calls, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["clip", "vae"])
    ap.add_argument("folder")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.what == "clip":
        from transformers import CLIPTextModel
        m = CLIPTextModel.from_pretrained(a.folder, torch_dtype=torch.float32).eval()
        v = m.config.vocab_size
        ids = (torch.arange(77)[None, :] * 31 + torch.arange(a.batch)[:, None] * 7) % v
        secs, calls = timeit(lambda: m(input_ids=ids).last_hidden_state, a.min_seconds)
        shape = f"batch {a.batch}, 77 tokens, width {m.config.hidden_size}"
    else:
        from diffusers import AutoencoderKL
        import os
        fp16_only = not os.path.exists(os.path.join(a.folder, "diffusion_pytorch_model.safetensors"))
        m = AutoencoderKL.from_pretrained(a.folder, torch_dtype=torch.float32, variant="fp16" if fp16_only else None).eval()
        factor = 2 ** (len(m.config.block_out_channels) - 1)
        side = a.latent or m.config.sample_size // factor
        z = torch.randn(a.batch, m.config.latent_channels, side, side, generator=torch.Generator().manual_seed(3))
        secs, calls = timeit(lambda: m.decode(z).sample, a.min_seconds)
        shape = f"batch {a.batch}, latent {side}x{side}"
    print(f"torch {a.what} {a.folder}: {shape}, f32, {torch.get_num_threads()} threads: {secs * 1e3:.3f} ms per call ({calls} calls)")


if __name__ == "__main__":
    main()
