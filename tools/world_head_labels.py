#!/usr/bin/env python3
"""Grounding labels from a miniature-world split for `instagen ground train` (standard library only).

    tools/world_head_labels.py WORLD/corpus/instances.json OUT.json [--images N]

The world's COCO files already carry what a label file needs (each image's `categories`, its caption as the
prompt, exact boxes); this adds `info.image_root` (the split's folder, absolute) and keeps the first N images.
Use a split whose every object is annotated (`corpus` or `val`): on `train` the novel objects have no boxes, and
the head would learn to leave them out.
"""
import argparse
import json
import os

ap = argparse.ArgumentParser()
ap.add_argument("instances")
ap.add_argument("out")
ap.add_argument("--images", type=int, default=0, help="keep the first N images (0: all)")
a = ap.parse_args()
with open(a.instances) as f:
    d = json.load(f)
images = d["images"][: a.images] if a.images > 0 else d["images"]
keep = {im["id"] for im in images}
for im in images:
    if not im.get("categories"):
        raise SystemExit(f"{a.instances}: image {im['id']} has no 'categories' (not a world split?)")
d["images"] = images
d["annotations"] = [x for x in d["annotations"] if x["image_id"] in keep]
d.setdefault("info", {})["image_root"] = os.path.dirname(os.path.abspath(a.instances))
tmp = a.out + ".tmp"
with open(tmp, "w") as f:
    json.dump(d, f)
os.replace(tmp, a.out)
print(f"{a.out}: {len(images)} images, {len(d['annotations'])} boxes, {len(d['categories'])} categories")
