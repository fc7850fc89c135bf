#!/usr/bin/env bash
# Runs the kernels' logic on the CPU, without a GPU: each CUDA thread becomes a std::thread,
# __syncthreads and warp shuffles become barriers (emu.h), and main.cpp compares the kernels'
# outputs with naive double-precision references (attention forward and backward with padding and
# dropout, LayerNorm, the sampler's ties/forbidden ids/Gumbel noise, cross-entropy, column sums,
# sum of squares).
# It checks indexing, reductions and barriers, not timing or GPU-specific faults. Needs g++ (C++20)
# and the CUDA headers of .venv-cuda (scripts/install-nvcc.sh). About a minute.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Dynamic shared memory (`extern __shared__`) becomes a plain global array in emu.h.
for f in "$ROOT"/kernels/*; do sed 's/extern __shared__/extern/' "$f" >"$WORK/$(basename "$f")"; done
INC=$(ls -d "$ROOT"/.venv-cuda/lib/python3*/site-packages/nvidia/cu13/include | head -1)
g++ -O1 -std=c++20 -ffp-contract=off -pthread -w -I "$HERE" -I "$WORK" -I "$INC" "$HERE/main.cpp" -o "$WORK/emu"
"$WORK/emu"
