#!/usr/bin/env bash
# Issue 15 item 5 for the small SD: samples/s of our VAE and UNet training steps against the same models in
# PyTorch (diffusers AutoencoderKL / UNet2DConditionModel built from the SD folder's configs) on the CPU, in one
# run, with the same thread count. Prints the load average before and after (shared machines make ratios noisy).
#
#   tools/bench_world_sd.sh SD_FOLDER [THREADS=2] [VAE_BATCH=8] [UNET_BATCH=8]
#
# INSTAGEN_BIN (default target/release/instagen) and INSTAGEN_TORCH_PYTHON (default /work/venv-torch/bin/python).
set -euo pipefail
SD=${1:?usage: tools/bench_world_sd.sh SD_FOLDER [THREADS] [VAE_BATCH] [UNET_BATCH]}
T=${2:-2}
VB=${3:-8}
UB=${4:-8}
BIN=${INSTAGEN_BIN:-target/release/instagen}
PY=${INSTAGEN_TORCH_PYTHON:-/work/venv-torch/bin/python}
export RAYON_NUM_THREADS=$T OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
cd "$(dirname "$0")/.."
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" bench train-vae --config "$SD/vae" --batch "$VB" --backend cpu --threads "$T" --min-seconds 5
"$PY" tools/bench_train_vae_torch.py --config "$SD/vae" --batch "$VB" --threads "$T" --steps 3
"$BIN" bench train-unet --config "$SD/unet" --batch "$UB" --backend cpu --threads "$T" --min-seconds 5
"$PY" tools/bench_train_unet_torch.py --config "$SD/unet" --batch "$UB" --threads "$T" --steps 3
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
