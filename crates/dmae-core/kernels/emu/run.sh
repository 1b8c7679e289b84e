#!/usr/bin/env bash
# Builds and runs the host emulation of dmae-core's CUDA kernels (no GPU needed). See docs/cuda.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${TMPDIR:-/tmp}/dmae-kernel-emu
${CXX:-g++} -std=c++20 -O2 -ffp-contract=off -include "$here/emu.h" -I "$here/include" -I "$here/.." \
  "$here/test.cpp" -o "$out" -pthread
"$out"
