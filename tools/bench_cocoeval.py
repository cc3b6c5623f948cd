#!/usr/bin/env python3
"""pycocotools' COCOeval (bbox) evaluate() + accumulate() timed on the same GT / detections as
benches/coco_eval.rs (COCO128 annotations, tests/fixtures/coco_eval/coco128_{jitter,crowd_dups}.json), so the
ratio to the Rust evaluator is known on this machine. Never run in CI.

    python tools/bench_cocoeval.py [DATA_DIR] [--repeat N]
"""
import argparse
import contextlib
import io
import os
import time

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?", default=None)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    data = a.data or next(d for d in (os.path.join(ROOT, "..", "shared", "data"), "/work/shared/data") if os.path.isdir(d))
    gt_path = os.path.join(data, "coco128/annotations/instances_train2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
    for s in ("jitter", "crowd_dups"):
        dt_path = os.path.join(ROOT, "tests/fixtures/coco_eval", f"coco128_{s}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(dt_path)
        times = []
        for _ in range(a.repeat):
            with contextlib.redirect_stdout(io.StringIO()):
                e = COCOeval(gt, dt, "bbox")
                t0 = time.perf_counter()
                e.evaluate()
                e.accumulate()
                times.append(time.perf_counter() - t0)
        times.sort()
        print(f"pycocotools coco128_{s}: evaluate+accumulate median {times[len(times)//2]*1e3:.1f} ms "
              f"(min {times[0]*1e3:.1f} ms, {a.repeat} runs, {len(dt.anns)} detections)")


if __name__ == "__main__":
    main()
