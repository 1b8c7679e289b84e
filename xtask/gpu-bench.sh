#!/usr/bin/env bash
# Ours vs the PyTorch reference on one GPU, in one go (issue 9). Needs no Rust toolchain on the GPU
# machine: build the binaries here first (docs/cuda.md), then carry them with the repository:
#
#   eval "$(cargo xtask cuda-toolkit)"
#   CARGO_TARGET_DIR=target-cuda cargo build --release -p xtask --features cuda
#   CARGO_TARGET_DIR=target-cuda cargo test --release -p dmae-core --features cuda --test cuda --no-run
#   # on the GPU machine, in the repository root:
#   xtask/gpu-bench.sh target-cuda/release/xtask [path/to/diffmae_torch.py] [dmae-core cuda test binary]
#
# Prints the kernel check (every CUDA op against the CPU one) if the test binary is given, the
# CUDA-vs-CPU loss check of the first training steps, then
# training img/s, step time and peak memory for DiffMAE-B (bf16, batch 256) and the MNIST preset,
# each with the reference's numbers and the ratio ours/PyTorch from the same call, then sampling.
set -u
XTASK=${1:?usage: xtask/gpu-bench.sh XTASK_BINARY [diffmae_torch.py] [cuda test binary]}
REF=${2:-../shared/reference/diffmae_torch.py}
CUDA_TEST=${3:-}
PY=${DMAE_TORCH_PYTHON:-python3}

# The CUDA 13 runtime libraries come with the GPU machine's PyTorch wheels (nvidia.cu13).
if libdir=$("$PY" -c "import os,nvidia.cu13 as m;print(os.path.join(list(m.__path__)[0],'lib'))" 2>/dev/null); then
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export DMAE_DATASETS="${DMAE_DATASETS:-$PWD/datasets}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
date -u +"%Y-%m-%d %H:%M UTC"

status=0
run() {
  echo
  echo "\$ $*"
  "$@" || { echo "(exit $?)"; status=1; }
}

if [ -n "$CUDA_TEST" ]; then
  run "$CUDA_TEST" --nocapture --test-threads 1
fi
# CUDA and CPU losses of the first 5 f32 training steps from the same weights and batch (1e-4 relative).
run "$XTASK" check-device --device cuda --model mnist --steps 5
torch=(--torch --torch-script "$REF" --torch-python "$PY")
[ -f "$REF" ] || torch=()
run "$XTASK" bench train --model base --device cuda --dtype bf16 --batch 256 --steps 20 "${torch[@]}"
run "$XTASK" bench train --model mnist --device cuda --dtype bf16 --batch 1024 --steps 20 "${torch[@]}"
run "$XTASK" bench train --model base --device cuda --dtype f32 --batch 64 --steps 5 --warmup 2
run "$XTASK" bench sample --device cuda
exit $status
