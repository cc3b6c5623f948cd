#!/usr/bin/env python3
"""Write the DDIM scheduler fixtures under tests/fixtures/ddim/ from diffusers' own DDIMScheduler.

Not run by CI: the fixtures are committed. To regenerate (a venv outside the repo; torch is large):

    python3 -m venv /tmp/ddimvenv
    /tmp/ddimvenv/bin/pip install torch diffusers numpy safetensors
    /tmp/ddimvenv/bin/python tools/make_ddim_fixtures.py

Output:
  tests/fixtures/ddim/ddim.json          versions, configs, timesteps per (case, steps), the step schedule per case
  tests/fixtures/ddim/ddim.safetensors   f32 tensors: alphas_cumprod per case, the latent, the fake model outputs,
                                         the variance noise, and diffusers' prev_sample / pred_original_sample per step

The latent and the "model outputs" are numpy draws with fixed seeds (no UNet runs): both sides are fed the same
inputs, so the comparison is about the scheduler arithmetic only.
"""
import json
import os

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "ddim")

# SD v1.4's scheduler/scheduler_config.json (a PNDMScheduler config; DDIM reads the shared keys), verbatim.
SD14 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.7.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# DDIM keys our Rust config reads; SD14 lacks prediction_type/timestep_spacing, whose diffusers defaults
# ("epsilon", "leading") are also our defaults.
CASES = {
    # The InstaGen setting: SD v1.4, 50 steps, eta 0.
    "sd14": dict(config=SD14, steps=[50, 20], run_steps=50, eta=0.0,
                 # first three timesteps chained, then the last two chained (t=1 uses final_alpha_cumprod)
                 chains=[[0, 1, 2], [48, 49]]),
    # Other supported branches: linear betas, v-prediction, trailing spacing, clip_sample, set_alpha_to_one.
    "vpred_trailing": dict(config=dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                       beta_schedule="linear", clip_sample=True, clip_sample_range=1.0,
                                       set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                                       timestep_spacing="trailing"),
                           steps=[50, 20], run_steps=20, eta=0.0, chains=[[0, 1, 2], [18, 19]]),
    "linspace": dict(config=dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                 clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                 timestep_spacing="linspace"),
                     steps=[50, 20], run_steps=20, eta=0.0, chains=[[0, 1]]),
    # eta > 0 with caller-given variance noise (diffusers' `variance_noise=` argument).
    "sd14_eta1": dict(config=SD14, steps=[50], run_steps=50, eta=1.0, chains=[[0, 1, 2], [48, 49]]),
}


def f32(x):
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240604)
    latent = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    tensors = {"latent": f32(latent)}
    meta = {
        "generator": "tools/make_ddim_fixtures.py",
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "kind": "parity: values computed by diffusers.DDIMScheduler (float32 torch on CPU)",
        "latent_shape": [1, 4, 8, 8],
        "cases": {},
    }
    for name, case in CASES.items():
        cfg = {k: v for k, v in case["config"].items()}
        sched = DDIMScheduler.from_config(cfg)
        entry = {"config": cfg, "timesteps": {}, "run_steps": case["run_steps"], "eta": case["eta"], "chains": []}
        for n in case["steps"]:
            sched.set_timesteps(n)
            entry["timesteps"][str(n)] = [int(t) for t in sched.timesteps]
        tensors[f"{name}.alphas_cumprod"] = f32(sched.alphas_cumprod.numpy())
        tensors[f"{name}.final_alpha_cumprod"] = f32(sched.final_alpha_cumprod.numpy().reshape(1))
        sched.set_timesteps(case["run_steps"])
        ts = [int(t) for t in sched.timesteps]
        for ci, chain in enumerate(case["chains"]):
            sample = torch.from_numpy(latent.copy())
            steps = []
            for si, idx in enumerate(chain):
                t = ts[idx]
                key = f"{name}.c{ci}.s{si}"
                eps = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
                tensors[f"{key}.model_output"] = f32(eps)
                kwargs = {}
                if case["eta"] > 0:
                    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
                    tensors[f"{key}.variance_noise"] = f32(noise)
                    kwargs["variance_noise"] = torch.from_numpy(noise)
                out = sched.step(torch.from_numpy(eps), t, sample, eta=case["eta"], **kwargs)
                tensors[f"{key}.prev_sample"] = f32(out.prev_sample.numpy())
                tensors[f"{key}.pred_original_sample"] = f32(out.pred_original_sample.numpy())
                steps.append({"key": key, "timestep": t})
                sample = out.prev_sample
            entry["chains"].append(steps)
        if name == "sd14":
            noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
            tensors["sd14.add_noise.noise"] = f32(noise)
            for t in (1, 500, 999):
                out = sched.add_noise(torch.from_numpy(latent.copy()), torch.from_numpy(noise), torch.tensor([t]))
                tensors[f"sd14.add_noise.t{t}"] = f32(out.numpy())
            entry["add_noise_timesteps"] = [1, 500, 999]
        meta["cases"][name] = entry
    save_file(tensors, os.path.join(OUT, "ddim.safetensors"))
    with open(os.path.join(OUT, "ddim.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", OUT, "diffusers", diffusers.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
