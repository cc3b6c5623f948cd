#!/usr/bin/env python3
"""Time PyTorch's conv2d (forward, input gradient, weight gradient) and matmul on the CPU at the shapes of
`instagen bench kernels --backend cpu --filter conv` / `--filter matmul`, to compare in the same session (not
run by CI; torch is not a dependency of the project).

    /work/venv-torch/bin/python tools/bench_conv_matmul_torch.py --threads 2
    target/release/instagen bench kernels --backend cpu --filter 'f32 [2, 64, 64, 320]'

Activations are NHWC (channels_last) like instagen's, f32; each line prints milliseconds per call.
"""
import argparse
import time

import torch


def timeit(f, min_seconds):
    f()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        f()
        calls += 1
    return (time.perf_counter() - start) / calls * 1e3


def conv_cases():
    # (NHWC input, out channels, kernel, stride, padding)
    return [
        ((2, 64, 64, 320), 320, 3, 1, 1),
        ((2, 32, 32, 320), 320, 3, 1, 1),
        ((2, 32, 32, 640), 640, 3, 1, 1),
        ((2, 16, 16, 1280), 1280, 3, 1, 1),
        ((2, 32, 32, 320), 640, 1, 1, 0),
        ((2, 64, 64, 320), 320, 3, 2, 1),
        ((1, 256, 256, 128), 128, 3, 1, 1),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--filter", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32")
    for (n, h, w, c), o, k, s, p in conv_cases():
        x = torch.randn(n, c, h, w).to(memory_format=torch.channels_last)
        wt = torch.randn(o, c, k, k).to(memory_format=torch.channels_last) * 0.05
        b = torch.randn(o)
        y = torch.nn.functional.conv2d(x, wt, b, stride=s, padding=p)
        dy = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
        flops = 2 * n * y.shape[2] * y.shape[3] * o * c * k * k
        tag = f"[{n}, {h}, {w}, {c}] -> {o} k{k} s{s} p{p}"
        if a.filter not in tag:
            continue
        with torch.no_grad():
            fwd = timeit(lambda: torch.nn.functional.conv2d(x, wt, b, stride=s, padding=p), a.min_seconds)
        # The two gradients separately, as the engine's Conv2dBwdData / Conv2dBwdWeight ops.
        bd = timeit(lambda: torch.ops.aten.convolution_backward(
            dy, x, wt, None, (s, s), (p, p), (1, 1), False, (0, 0), 1, (True, False, False)), a.min_seconds)
        bw = timeit(lambda: torch.ops.aten.convolution_backward(
            dy, x, wt, None, (s, s), (p, p), (1, 1), False, (0, 0), 1, (False, True, False)), a.min_seconds)
        for what, ms in [("conv2d", fwd), ("conv2d_bwd_data", bd), ("conv2d_bwd_weight", bw)]:
            print(f"{what} f32 {tag}: {ms:9.3f} ms  {flops / ms / 1e6:7.1f} GFLOP/s")
    for batch, m, nn, kk in [(1, 2048, 2048, 2048), (1, 8192, 320, 320), (1, 8192, 1280, 320), (16, 4096, 4096, 40)]:
        tag = f"matmul f32 {batch} x {m}x{kk} @ {kk}x{nn}"
        if a.filter not in tag:
            continue
        A = torch.randn(batch, m, kk).squeeze(0)
        B = torch.randn(batch, kk, nn).squeeze(0)
        with torch.no_grad():
            ms = timeit(lambda: A @ B, a.min_seconds)
        print(f"{tag}: {ms:9.3f} ms  {2 * batch * m * nn * kk / ms / 1e6:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
