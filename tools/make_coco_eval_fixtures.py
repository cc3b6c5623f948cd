#!/usr/bin/env python3
"""Detection sets + pycocotools' figures for tests/coco_eval.rs (never run in CI).

Run with a Python that has pycocotools and numpy:
    python tools/make_coco_eval_fixtures.py [DATA_DIR]     (default: ../shared/data, else /work/shared/data)

Ground truth: the real COCO instances JSON in the shared data folder (coco128 train2017, tiny_coco val2017);
it is read there at test time and never copied here. Each detection set is made deterministically (seeded) from
the GT by perturbing it: jittered boxes, dropped detections, false positives (also of categories with no GT),
detections over crowd regions, duplicates, score ties, more than 100 detections on one image/category, boxes
crossing the image border. pycocotools' COCOeval (bbox) runs on each; its 12 stats and per-category AP, AP50
and AR@100 (all areas, maxDets 100) go to tests/fixtures/coco_eval/expected.json.
"""
import contextlib
import io
import json
import os
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "coco_eval")

GTS = {
    "coco128": "coco128/annotations/instances_train2017.json",
    "tinyval": "tiny_coco/annotations/instances_val2017.json",
}

OVCOCO_BASE = [1, 2, 3, 4, 7, 8, 9, 15, 16, 19, 20, 23, 24, 25, 27, 31, 33, 34, 35, 38, 42, 44, 48, 50, 51, 52, 53,
               54, 55, 56, 57, 59, 60, 62, 65, 70, 72, 73, 74, 75, 78, 79, 80, 82, 84, 85, 86, 90]
OVCOCO_NOVEL = [5, 6, 17, 18, 21, 22, 28, 32, 36, 41, 47, 49, 61, 63, 76, 81, 87]


def data_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for d in (os.path.join(ROOT, "..", "shared", "data"), "/work/shared/data"):
        if os.path.isdir(d):
            return d
    sys.exit("no data folder")


def r2(v):
    return float(round(float(v), 2))


def jitter(rng, b, s):
    x, y, w, h = b
    dx, dy = rng.normal(0, s * w), rng.normal(0, s * h)
    dw, dh = np.exp(rng.normal(0, s)), np.exp(rng.normal(0, s))
    return [r2(x + dx), r2(y + dy), r2(max(w * dw, 0.5)), r2(max(h * dh, 0.5))]


def random_box(rng, im):
    W, H = im["width"], im["height"]
    w = float(np.exp(rng.uniform(np.log(4), np.log(W * 0.8))))
    h = float(np.exp(rng.uniform(np.log(4), np.log(H * 0.8))))
    return [r2(rng.uniform(0, W - w)), r2(rng.uniform(0, H - h)), r2(w), r2(h)]


def det(im_id, cat, bbox, score):
    return {"image_id": int(im_id), "category_id": int(cat), "bbox": bbox, "score": float(score)}


def make_sets(gt, seed):
    rng = np.random.RandomState(seed)
    imgs = gt["images"]
    imgd = {i["id"]: i for i in imgs}
    anns = gt["annotations"]
    cats = [c["id"] for c in gt["categories"]]
    cats_with_gt = sorted({a["category_id"] for a in anns})
    cats_no_gt = [c for c in cats if c not in set(cats_with_gt)]
    crowd = [a for a in anns if a["iscrowd"]]
    plain = [a for a in anns if not a["iscrowd"]]
    sets = {}

    # 1. A fair detector: most GT found with jitter, some dropped, false positives, fine scores (3 decimals).
    d = []
    for a in plain:
        if rng.rand() < 0.15:
            continue
        d.append(det(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.08), round(rng.uniform(0.3, 1.0), 3)))
    for im in imgs:
        for _ in range(rng.randint(0, 4)):
            d.append(det(im["id"], rng.choice(cats_with_gt), random_box(rng, im), round(rng.uniform(0.0, 0.7), 3)))
    sets["jitter"] = d

    # 2. Heavy jitter, many false positives including categories with no GT and wrong-class copies of GT,
    #    scores on a coarse grid (many ties), boxes crossing the image border.
    d = []
    for a in plain:
        if rng.rand() < 0.3:
            continue
        d.append(det(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.2), round(rng.uniform(0, 1), 1)))
        if rng.rand() < 0.2:
            d.append(det(a["image_id"], rng.choice(cats), jitter(rng, a["bbox"], 0.05), round(rng.uniform(0, 1), 1)))
    for im in imgs:
        for _ in range(rng.randint(0, 6)):
            c = rng.choice(cats_no_gt) if cats_no_gt and rng.rand() < 0.3 else rng.choice(cats)
            d.append(det(im["id"], c, random_box(rng, im), round(rng.uniform(0, 1), 1)))
        if rng.rand() < 0.3:
            W, H = im["width"], im["height"]
            d.append(det(im["id"], rng.choice(cats_with_gt), [r2(W - 30.5), r2(-10.25), 60.0, 80.0], 0.5))
    sets["noisy_ties"] = d

    # 3. Crowd regions: several detections inside / over every crowd box (some large, some small), plus a
    #    fair detector on the rest; duplicates of true positives with equal or lower scores.
    d = []
    for a in crowd:
        x, y, w, h = a["bbox"]
        for _ in range(6):
            fw, fh = rng.uniform(0.1, 1.1), rng.uniform(0.1, 1.1)
            bw, bh = max(w * fw, 2.0), max(h * fh, 2.0)
            bx, by = x + rng.uniform(-0.1, 1.0) * (w - bw), y + rng.uniform(-0.1, 1.0) * (h - bh)
            d.append(det(a["image_id"], a["category_id"], [r2(bx), r2(by), r2(bw), r2(bh)], round(rng.uniform(0.2, 1.0), 2)))
        d.append(det(a["image_id"], a["category_id"], [r2(v) for v in a["bbox"]], 0.9))
    for a in plain:
        if rng.rand() < 0.1:
            continue
        b = jitter(rng, a["bbox"], 0.05)
        s = round(rng.uniform(0.4, 1.0), 2)
        d.append(det(a["image_id"], a["category_id"], b, s))
        if rng.rand() < 0.25:  # duplicate: same box, same score (a tie) or a shifted copy with a lower score
            d.append(det(a["image_id"], a["category_id"], list(b), s))
        if rng.rand() < 0.25:
            d.append(det(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.1), round(s * rng.uniform(0.5, 1.0), 2)))
    sets["crowd_dups"] = d

    # 4. maxDets: 150 detections of one category on the busiest image (some true), 30 on a few others;
    #    a single detection per image elsewhere (AR@1 / AR@10 differ); categories with GT but no detections.
    d = []
    busiest = max(imgs, key=lambda im: sum(1 for a in plain if a["image_id"] == im["id"]))
    bid = busiest["id"]
    bcat = max(cats_with_gt, key=lambda c: sum(1 for a in plain if a["image_id"] == bid and a["category_id"] == c))
    for a in plain:
        if a["image_id"] == bid and a["category_id"] == bcat:
            d.append(det(bid, bcat, jitter(rng, a["bbox"], 0.03), round(rng.uniform(0.0, 1.0), 2)))
    while sum(1 for x in d if x["image_id"] == bid) < 150:
        d.append(det(bid, bcat, random_box(rng, busiest), round(rng.uniform(0.0, 1.0), 2)))
    skip_cats = set(cats_with_gt[::5])
    for im in imgs:
        if im["id"] == bid:
            continue
        ia = [a for a in plain if a["image_id"] == im["id"] and a["category_id"] not in skip_cats]
        if not ia:
            continue
        if rng.rand() < 0.15:
            c = ia[0]["category_id"]
            for _ in range(30):
                d.append(det(im["id"], c, random_box(rng, im), round(rng.uniform(0.0, 1.0), 2)))
        for a in ia:
            d.append(det(im["id"], a["category_id"], jitter(rng, a["bbox"], 0.1), round(rng.uniform(0.0, 1.0), 2)))
    sets["maxdets"] = d

    # 5. All scores equal: order decided only by file order (stable sorts), detections shuffled.
    d = []
    for a in plain:
        if rng.rand() < 0.2:
            continue
        d.append(det(a["image_id"], a["category_id"], jitter(rng, a["bbox"], 0.15), 0.5))
    for im in imgs:
        for _ in range(rng.randint(0, 3)):
            d.append(det(im["id"], rng.choice(cats_with_gt), random_box(rng, im), 0.5))
    perm = rng.permutation(len(d))
    sets["all_ties"] = [d[i] for i in perm]
    return sets


def evaluate(gt_path, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(gt_path)
        cd = cg.loadRes([dict(x) for x in dets])
        e = COCOeval(cg, cd, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    p = e.eval["precision"]  # T R K A M
    rc = e.eval["recall"]  # T K A M
    per = []
    for k, cid in enumerate(e.params.catIds):
        def m(s):
            s = s[s > -1]
            return float(np.mean(s)) if s.size else -1.0
        per.append({"id": int(cid), "ap": m(p[:, :, k, 0, -1]), "ap50": m(p[0, :, k, 0, -1]), "ar100": m(rc[:, k, 0, -1])})
    ap50 = {c["id"]: c["ap50"] for c in per}

    def split_mean(ids):
        v = [ap50[i] for i in ids if i in ap50 and ap50[i] > -1]
        return float(np.mean(v)) if v else -1.0
    ov = {"base_ap50": split_mean(OVCOCO_BASE), "novel_ap50": split_mean(OVCOCO_NOVEL),
          "all_ap50": split_mean(OVCOCO_BASE + OVCOCO_NOVEL)}
    return [float(x) for x in e.stats], per, ov


def main():
    data = data_dir()
    os.makedirs(OUT, exist_ok=True)
    expected = {"generator": "tools/make_coco_eval_fixtures.py", "tolerance": 1e-6, "sets": []}
    for gi, (gname, rel) in enumerate(sorted(GTS.items())):
        gt_path = os.path.join(data, rel)
        gt = json.load(open(gt_path))
        for sname, dets in make_sets(gt, 1000 + gi).items():
            fname = f"{gname}_{sname}.json"
            with open(os.path.join(OUT, fname), "w") as f:
                json.dump(dets, f, separators=(",", ":"))
            stats, per, ov = evaluate(gt_path, dets)
            expected["sets"].append({"gt": rel, "dt": fname, "num_detections": len(dets), "stats": stats,
                                     "per_category": per, "ovcoco": ov})
            print(f"{fname}: {len(dets)} dets, AP {stats[0]:.4f} AP50 {stats[1]:.4f} AR100 {stats[8]:.4f}")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
