#!/usr/bin/env bash
# The project's test command: install NVRTC/headers/ptxas from PyPI wheels (no GPU needed), build with every
# kernel compiled by NVRTC and checked by ptxas, then run every test (benches are compiled, not run: `cargo bench` runs them).
# A kernel that fails to compile fails here, and so does a test whose ../shared/data is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
bash tools/setup_cuda.sh
export INSTAGEN_REQUIRE_KERNELS=1
export INSTAGEN_REQUIRE_DATA=1
cargo test --locked --all-targets --no-run
cargo test --locked
echo "ptxas report: target/ptxas_report.txt"
echo "test command wall time: $(( $(date +%s) - start )) s"
