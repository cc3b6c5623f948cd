#!/usr/bin/env python3
"""Time scipy.optimize.linear_sum_assignment on one core at the shapes of benches/hungarian.rs (uniform random costs,
fixed seed; not the same generator as the Rust bench, the same distribution). Prints the median per call.

Not run by CI. In a venv outside the repo:

    python3 -m venv /tmp/lsapvenv && /tmp/lsapvenv/bin/pip install numpy scipy
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 taskset -c 0 /tmp/lsapvenv/bin/python tools/bench_lsap_scipy.py

(scipy's solver is single-threaded C++ anyway; the environment pins the rest.)
"""
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402


def bench(rows, cols, seed=42, min_time=2.0):
    cost = np.random.default_rng(seed).random((rows, cols))
    linear_sum_assignment(cost)  # warm up
    # Calls per sample so that one sample takes ~20 ms.
    t0 = time.perf_counter()
    linear_sum_assignment(cost)
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(0.02 / one))
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples) < 10:
        t0 = time.perf_counter()
        for _ in range(reps):
            linear_sum_assignment(cost)
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples), min(samples)


def main():
    print(f"scipy {scipy.__version__}, numpy {np.__version__}")
    for rows, cols in [(900, 20), (900, 100), (300, 300)]:
        med, best = bench(rows, cols)
        print(f"lsap/{rows}x{cols}: median {med * 1e6:10.1f} us   min {best * 1e6:10.1f} us")


if __name__ == "__main__":
    main()
