#!/usr/bin/env bash
# Set up a fresh machine and run the main job: install NVRTC/headers/ptxas (PyPI wheels, no GPU needed),
# build instagen in release mode, print the device report and run the engine self-check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_cuda.sh
cargo build --release --locked
./target/release/instagen info
./target/release/instagen selfcheck
