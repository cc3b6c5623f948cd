#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build, run every kernel parity case on the device (CUDA vs the CPU
# reference) and the kernel benches, and print one report. Fits in 10 minutes on an H100.
#   bash tools/gpu_check.sh [report-file]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
report="${1:-gpu_report.txt}"
bash tools/setup_cuda.sh >/dev/null
cargo build --release --locked 2>&1 | tail -n 3
bin=./target/release/instagen
{
  echo "== instagen GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $bin info
  echo "== selfcheck on cuda"
  INSTAGEN_SYNC=1 timeout 120 $bin selfcheck --backend cuda; echo "selfcheck exit code: $?"
  echo "== parity on cuda (INSTAGEN_SYNC=1)"
  INSTAGEN_SYNC=1 timeout 240 $bin parity --backend cuda 2>/dev/null; echo "parity exit code: $?"
  echo "== kernel benches on cuda"
  timeout 240 $bin bench kernels --backend cuda --min-seconds 0.3 2>/dev/null; echo "bench exit code: $?"
  echo "== SD v1.x models, random weights, f16 (ms per call; a 50-step guided image = 50 UNet calls at 2x batch)"
  for b in 2 16 64; do timeout 120 $bin bench unet --config sd-v1 --batch $b --dtype f16 --backend cuda; done
  timeout 60 $bin bench clip --config sd-v1 --batch 2 --dtype f16 --backend cuda
  timeout 120 $bin bench vae --config sd-v1 --batch 1 --dtype f16 --backend cuda
} 2>&1 | tee "$report"
echo "report written to $report"
