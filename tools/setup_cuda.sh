#!/usr/bin/env bash
# Installs NVRTC, the CUDA headers and ptxas from NVIDIA's PyPI wheels into .cuda/ (ignored by git).
# No GPU and no system CUDA are needed. Versions are pinned; re-running is a no-op once installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda"
stamp="$dest/.installed-13.0"
pkgs=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvcc==13.0.88
)
if [ -f "$stamp" ]; then
  echo "setup_cuda: CUDA 13.0 NVRTC/headers/ptxas already in $dest"
  exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
echo "setup_cuda: installing ${pkgs[*]} into $dest"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/py" "${pkgs[@]}"
touch "$stamp"
# A CPU-only build does not watch the (then missing) toolkit; make cargo rerun build.rs now.
touch "$root/build.rs"
echo "setup_cuda: done"
