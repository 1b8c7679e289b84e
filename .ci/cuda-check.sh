#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine without a GPU or a system CUDA, so the GPU path cannot
# rot unnoticed: installs a CUDA 13.0 toolkit from PyPI with `cargo xtask cuda-toolkit` (cached in
# ~/.cache/diffmae/cuda-13.0), then `cargo check`s dmae-core with `--features cuda` (library and
# tests; nvcc compiles every kernel to PTX in its build script). The target directory is cached too:
# DMAE_CUDA_TARGET, default ~/.cache/diffmae/target-cuda. A cold run builds candle's own CUDA kernels
# (8 minutes on an idle 2-core machine, much longer when it is shared); a warm one takes seconds.
# `-p xtask --features cuda` is left out on purpose: its feature set differs, so cargo would build
# candle's CUDA kernels a second time. See docs/cuda.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# The xtask itself builds without CUDA, in the regular target directory.
env_lines=$(cargo xtask cuda-toolkit)
eval "$env_lines"

export CARGO_TARGET_DIR=${DMAE_CUDA_TARGET:-$HOME/.cache/diffmae/target-cuda}
echo "cuda-check: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR" >&2
cargo check --release -p dmae-core --features cuda --all-targets
# The whole stack (models, binary, xtask with check-device and the benchmarks) on request: about
# 15 more minutes cold on 2 cores, so CI leaves it out.
if [ "${DMAE_CUDA_CHECK_ALL:-0}" = 1 ]; then
  cargo check --release -p xtask -p dmae --features xtask/cuda,dmae/cuda --all-targets
fi
echo "cuda-check: ok" >&2
