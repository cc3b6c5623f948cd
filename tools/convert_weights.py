#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth / .pt) to safetensors for instagen, keeping torchvision's key names.

    python tools/convert_weights.py IN.pth OUT.safetensors [--key model] [--prefix backbone.body.] [--dtype f32]

The checkpoint is read with torch.load(weights_only=True), which refuses pickled code: only tensors and plain
containers are accepted (the engine itself never unpickles). Accepted layouts:
  - a state dict (name -> tensor), e.g. torchvision's fasterrcnn_resnet50_fpn_coco-258fb6c6.pth or
    resnet50-0676ba61.pth;
  - a dict holding the state dict under "model" or "state_dict" (training checkpoints), or under --key.
Entries that are not tensors are listed and the conversion fails, unless --skip-non-tensors. Tensors are made
contiguous (safetensors stores dense row-major data); shared storage is copied. With --dtype f16 / bf16 the
floating tensors are cast (integer buffers such as num_batches_tracked keep their dtype). --prefix adds a prefix
to every key (e.g. to load a bare ResNet under backbone.body. with the detector layout; the engine also loads
the bare ImageNet layout directly). The output is written to a temporary file and renamed.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def state_dict_of(obj, key):
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            sys.exit(f"error: the checkpoint has no entry '{key}' (top-level keys: {list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__})")
        return obj[key]
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for k in ("model", "state_dict"):
            if isinstance(obj.get(k), dict):
                return obj[k]
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--key", help="the entry holding the state dict (default: the file itself, or 'model' / 'state_dict')")
    ap.add_argument("--prefix", default="", help="prefix added to every key")
    ap.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors")
    ap.add_argument("--skip-non-tensors", action="store_true", help="drop (and list) entries that are not tensors")
    a = ap.parse_args()

    try:
        obj = torch.load(a.input, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the file name
        sys.exit(f"error: {a.input}: torch.load(weights_only=True) failed: {e}")
    sd = state_dict_of(obj, a.key)
    if not isinstance(sd, dict):
        sys.exit(f"error: {a.input}: expected a state dict (name -> tensor), found {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad and not a.skip_non_tensors:
        sys.exit(f"error: {a.input}: {len(bad)} entries are not tensors: {bad[:20]} (use --skip-non-tensors to drop them)")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            print(f"skipped non-tensor entry '{k}' ({type(v).__name__})")
            continue
        t = v.detach().cpu()
        if a.dtype and t.is_floating_point():
            t = t.to(DTYPES[a.dtype])
        out[a.prefix + k] = t.contiguous().clone()
    if not out:
        sys.exit(f"error: {a.input}: no tensors")
    tmp = f"{a.output}.tmp-{os.getpid()}"
    try:
        save_file(out, tmp)
        os.replace(tmp, a.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    n = sum(t.numel() for t in out.values())
    print(f"{a.output}: {len(out)} tensors, {n} elements")


if __name__ == "__main__":
    main()
