"""The peer for benches/detection.rs: torchvision.ops.batched_nms on the CPU (one thread and the default
thread count) on the same boxes as the Rust bench (SplitMix64, seed 7: 1024 x 1024 image, sides 16..256,
80 classes, IoU 0.5). Run in the same session as `cargo bench --bench detection`:

    /tmp/ddimvenv/bin/python tools/bench_nms_torchvision.py
"""
import time

import numpy as np
import torch
import torchvision

M64 = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.s = seed

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def unit(self):
        return np.float32(self.next() >> 40) / np.float32(1 << 24)


def nms_boxes(n):
    r = SplitMix(7)
    b = np.empty((n, 4), np.float32)
    s = np.empty(n, np.float32)
    c = np.empty(n, np.int64)
    for i in range(n):
        x, y = r.unit() * np.float32(1024.0), r.unit() * np.float32(1024.0)
        w, h = np.float32(16.0) + r.unit() * np.float32(240.0), np.float32(16.0) + r.unit() * np.float32(240.0)
        b[i] = [x, y, x + w, y + h]
        s[i] = r.unit()
        c[i] = r.next() % 80
    return torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)


def timeit(f, min_s=2.0, min_runs=5):
    f()
    runs, t0 = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - t0 < min_s:
        f()
        runs += 1
    return (time.perf_counter() - t0) / runs


def main():
    default_threads = torch.get_num_threads()
    for n in [1000, 10_000, 100_000]:
        b, s, c = nms_boxes(n)
        keep = torchvision.ops.batched_nms(b, s, c, 0.5)
        line = f"batched_nms n={n}: kept {len(keep)}"
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            t = timeit(lambda: torchvision.ops.batched_nms(b, s, c, 0.5))
            line += f"  {threads} thread(s): {t * 1e3:.3f} ms"
        torch.set_num_threads(default_threads)
        print(line, flush=True)


if __name__ == "__main__":
    main()
