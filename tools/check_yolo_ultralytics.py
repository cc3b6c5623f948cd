#!/usr/bin/env python3
"""Reads an `instagen export --format yolo` folder with Ultralytics' own dataset code (a manual check; the tests
do not need Ultralytics): `check_det_dataset` on data.yaml, then `YOLODataset` per split, which verifies every
image and label file (a corrupt one is reported and dropped). Prints the class names and, per split, the images,
boxes, background images (empty label files) and corrupt files; exits 1 when any file is corrupt or a count is off.

    python tools/check_yolo_ultralytics.py DIR/data.yaml     # a Python with `pip install ultralytics`
"""
import os
import sys

from ultralytics.data import YOLODataset
from ultralytics.data.utils import check_det_dataset

data = check_det_dataset(sys.argv[1])
print("names", data["names"], "nc", data["nc"])
bad = False
for split in ("train", "val"):
    ds = YOLODataset(img_path=data[split], data=data, task="detect", augment=False, cache=False)
    labels = ds.get_labels()
    boxes = sum(len(lb["cls"]) for lb in labels)
    empty = sum(len(lb["cls"]) == 0 for lb in labels)
    # Ultralytics drops a corrupt image or label (a class out of range, say) from the split: count the files.
    files = len([f for f in os.listdir(data[split]) if not f.startswith(".")])
    corrupt = files != len(labels)
    bad |= corrupt
    print(f"{split}: {len(labels)} images, {boxes} boxes, {empty} backgrounds" + (f" ({files - len(labels)} of {files} dropped as corrupt)" if corrupt else ""))
sys.exit(1 if bad else 0)
