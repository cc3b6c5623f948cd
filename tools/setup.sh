#!/usr/bin/env bash
# Set up a fresh machine and run the main job: install NVRTC/headers/ptxas (PyPI wheels, no GPU needed),
# build instagen in release mode, print the device report, run the engine self-check (CPU training and
# planning, then a transformer block on the GPU, or on the emulated CUDA kernels without one), then generate a
# small dataset with the embedded models.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_cuda.sh
cargo build --release --locked
./target/release/instagen info
# On a GPU machine the self-check runs the transformer block on the GPU; elsewhere on the emulated kernels.
backend=emu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then backend=cuda; fi
./target/release/instagen selfcheck --backend "${INSTAGEN_BACKEND:-$backend}"
# The main job: a small detection dataset from the embedded world models (models/world/, checked against their
# SHA-256 manifest): 4 categories x 4 images with boxes, contact sheet, browser page and COCO JSON in out/demo.
# A rerun of the same command finds the folder complete (or continues it).
./target/release/instagen generate --categories circle,star,moon,heart --images-per-category 4 --steps 25 \
    --batch 4 --seed 0 --out out/demo
echo
echo "look at: out/demo/contact/sheet_0000.png (images with their boxes), out/demo/index.html (the browser),"
echo "         out/demo/instances.json (COCO), out/demo/card.md (the dataset card)"
