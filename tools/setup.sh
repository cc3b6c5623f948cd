#!/usr/bin/env bash
# Set up a fresh machine and run the main job: install NVRTC/headers/ptxas (PyPI wheels, no GPU needed),
# build instagen in release mode, print the device report and run the engine self-check (CPU training and
# planning, then a transformer block on the GPU, or on the emulated CUDA kernels without one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_cuda.sh
cargo build --release --locked
./target/release/instagen info
# On a GPU machine the self-check runs the transformer block on the GPU; elsewhere on the emulated kernels.
backend=emu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then backend=cuda; fi
./target/release/instagen selfcheck --backend "${INSTAGEN_BACKEND:-$backend}"
