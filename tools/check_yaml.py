#!/usr/bin/env python3
"""Structure checks with PyYAML for the YAML files instagen ships or writes (run by tests/dataset_merge.rs
when python3 with yaml is present):

  check_yaml.py k8s-indexed-job FILE   an Indexed Job that runs `instagen generate --shards n` (n = completions)
  check_yaml.py k8s-job FILE           a plain Job that runs instagen
  check_yaml.py yolo DIR               an Ultralytics dataset written by `instagen export --format yolo`

Prints `ok ...` and exits 0, or prints what is wrong and exits 1.
"""
import os
import sys

import yaml


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            fail(f"missing field {path}")
        d = d[k]
    return d


def job(doc, path):
    if get(doc, "apiVersion") != "batch/v1" or get(doc, "kind") != "Job":
        fail(f"{path}: not a batch/v1 Job")
    get(doc, "metadata.name")
    pod = get(doc, "spec.template.spec")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        fail(f"{path}: spec.template.spec.restartPolicy must be Never or OnFailure for a Job")
    containers = get(doc, "spec.template.spec.containers")
    if not isinstance(containers, list) or not containers:
        fail(f"{path}: no containers")
    c = containers[0]
    for k in ("name", "image"):
        if not isinstance(c.get(k), str):
            fail(f"{path}: container field {k} missing")
    words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
    line = " ".join(words)
    if "instagen" not in line:
        fail(f"{path}: the container does not run instagen: {line!r}")
    return c, line


def k8s_indexed_job(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    if len(docs) != 1:
        fail(f"{path}: want one document, got {len(docs)}")
    doc = docs[0]
    c, line = job(doc, path)
    spec = doc["spec"]
    if spec.get("completionMode") != "Indexed":
        fail(f"{path}: spec.completionMode is {spec.get('completionMode')!r}, want Indexed")
    n, p = spec.get("completions"), spec.get("parallelism")
    if not isinstance(n, int) or n < 1 or n != p:
        fail(f"{path}: completions {n!r} and parallelism {p!r} must be one whole number >= 1")
    words = line.split()
    if "generate" not in words or "--shards" not in words:
        fail(f"{path}: the container does not run `instagen generate --shards n`: {line!r}")
    shards = words[words.index("--shards") + 1]
    if shards != str(n):
        fail(f"{path}: --shards {shards} but completions {n}")
    if "JOB_COMPLETION_INDEX" not in line:
        fail(f"{path}: the output folder does not use JOB_COMPLETION_INDEX: {line!r}")
    gpus = (c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
    if gpus != 1:
        fail(f"{path}: resources.limits nvidia.com/gpu is {gpus!r}, want 1 (one process per GPU)")
    print(f"ok {path}: Indexed Job, {n} shards")


def k8s_job(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
    if len(docs) != 1:
        fail(f"{path}: want one document, got {len(docs)}")
    _, line = job(docs[0], path)
    print(f"ok {path}: Job running {line!r}")


def yolo(root):
    data = yaml.safe_load(open(os.path.join(root, "data.yaml")))
    for k in ("path", "train", "val", "names"):
        if k not in data:
            fail(f"data.yaml: key {k} missing")
    names = data["names"]
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))) or list(names) != sorted(names):
        fail(f"data.yaml: names must map ids 0..n-1 in order to names: {names!r}")
    if not all(isinstance(v, str) for v in names.values()):
        fail(f"data.yaml: names must be strings: {names!r}")
    if os.path.realpath(data["path"]) != os.path.realpath(root):
        fail(f"data.yaml: path {data['path']!r} is not the dataset folder {root!r}")
    counts = {}
    for split in ("train", "val"):
        img_dir = os.path.join(root, data[split])
        images = sorted(os.listdir(img_dir))
        lab_dir = img_dir.replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep)
        for im in images:
            label = os.path.join(lab_dir, os.path.splitext(im)[0] + ".txt")
            if not os.path.isfile(label):
                fail(f"{label} missing for {im}")
            for i, line in enumerate(open(label).read().splitlines()):
                f = line.split()
                if len(f) != 5 or not f[0].isdigit() or int(f[0]) not in names:
                    fail(f"{label}:{i + 1}: {line!r} is not `class cx cy w h`")
                v = [float(x) for x in f[1:]]
                if not all(0.0 <= x <= 1.0 for x in v) or v[2] <= 0 or v[3] <= 0:
                    fail(f"{label}:{i + 1}: {line!r} is not normalised to [0, 1]")
        counts[split] = len(images)
    print(f"ok {root}: {len(names)} classes, {counts['train']} train, {counts['val']} val images")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail(__doc__)
    {"k8s-indexed-job": k8s_indexed_job, "k8s-job": k8s_job, "yolo": yolo}.get(sys.argv[1], lambda _: fail(__doc__))(sys.argv[2])
